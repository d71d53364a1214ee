"""``fanfare-grpc`` (also ``python -m fanfare_grpc``): one CLI for operators.

Every option is also an environment variable: an option given on the command line
simply overrides its ``FANFARE_*`` variable before settings are read once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

from fanfare_grpc import errors
from fanfare_grpc.app import (
    LOGGER_NAME,
    Application,
    CacheMayEvict,
    CacheNotPersistent,
    CacheUnreachable,
    SchemaOutOfDate,
    UnsharedCache,
    may_create_dev_master_key,
    utc_now,
)
from fanfare_grpc.crypto.canary import verify_master_keys
from fanfare_grpc.crypto.master_keys import (
    DEV_KEY_FILE,
    MasterKeyError,
    MasterKeyRing,
    add_dev_master_key,
    load_master_key_ring,
)
from fanfare_grpc.crypto.rotation import (
    MasterKeyUsage,
    master_key_usage,
    rewrap_data_keys,
    rewrap_master_key_canary,
    rewrap_signing_keys,
)
from fanfare_grpc.domain.organizations import create_organization
from fanfare_grpc.logs import configure_logging
from fanfare_grpc.private_files import DataDirError, prepare_data_dir
from fanfare_grpc.server import ListenError, run_worker_process, serve
from fanfare_grpc.setting_files import check_setting_files
from fanfare_grpc.settings import Settings, SettingsError, configuration_warnings
from fanfare_grpc.storage import migrate
from fanfare_grpc.storage.data_keys import DataKeyRewrapper
from fanfare_grpc.storage.database import Database, DatabaseUnreachable, database_location
from fanfare_grpc.storage.master_key_canary import SqlCanaryStore
from fanfare_grpc.storage.signing_keys import SigningKeyRewrapper

# (option, environment variable, help)
_COMMON_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("--data-dir", "FANFARE_DATA_DIR", "directory of the embedded defaults (default ./.fanfare)"),
    ("--database-url", "FANFARE_DATABASE_URL", "SQLAlchemy URL (default: SQLite in the data dir)"),
    ("--database-owner-url", "FANFARE_DATABASE_OWNER_URL", "owner URL for migrate/rotate"),
    ("--redis-url", "FANFARE_REDIS_URL", "Redis URL (default: in-process cache)"),
    ("--log-level", "FANFARE_LOG_LEVEL", "debug, info, warning or error (default info)"),
)
_SERVER_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("--listen", "FANFARE_LISTEN", "host:port to listen on (default 127.0.0.1:50051)"),
    ("--tls-cert", "FANFARE_TLS_CERT", "server certificate, PEM"),
    ("--tls-key", "FANFARE_TLS_KEY", "server private key, PEM"),
    ("--tls-client-ca", "FANFARE_TLS_CLIENT_CA", "CA bundle; requires client certificates"),
    ("--shutdown-grace", "FANFARE_SHUTDOWN_GRACE_SECONDS", "seconds in-flight calls may finish"),
)


def _add_options(parser: argparse.ArgumentParser, options: Sequence[tuple[str, str, str]]) -> None:
    for option, variable, help_text in options:
        parser.add_argument(
            option, dest=variable, metavar="VALUE", help=f"{help_text} [{variable}]"
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="fanfare-grpc", description="Fanfare gRPC server and operator commands."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the server (and the background worker)")
    _add_options(serve_parser, _COMMON_OPTIONS + _SERVER_OPTIONS)
    serve_parser.add_argument(
        "--no-worker", action="store_true", help="do not run background jobs in this process"
    )

    worker_parser = commands.add_parser("worker", help="run background jobs only")
    _add_options(worker_parser, _COMMON_OPTIONS)

    migrate_parser = commands.add_parser("migrate", help="bring the database schema up to date")
    _add_options(migrate_parser, _COMMON_OPTIONS)

    orgs_parser = commands.add_parser("orgs", help="manage organizations")
    orgs_commands = orgs_parser.add_subparsers(dest="orgs_command", required=True)
    create_parser = orgs_commands.add_parser("create", help="create an organization")
    create_parser.add_argument("--name", required=True, help="display name (1-200 characters)")
    create_parser.add_argument("--json", action="store_true", help="print one JSON object")
    _add_options(create_parser, _COMMON_OPTIONS)

    master_key_parser = commands.add_parser("master-key", help="manage master key versions")
    master_key_commands = master_key_parser.add_subparsers(dest="master_key_command", required=True)
    rotate_parser = master_key_commands.add_parser(
        "rotate", help="add a master key version and re-wrap every data key under it"
    )
    _add_options(rotate_parser, _COMMON_OPTIONS)
    status_parser = master_key_commands.add_parser(
        "status", help="count the keys each master key version wraps; say which can be retired"
    )
    status_parser.add_argument("--json", action="store_true", help="print one JSON object")
    _add_options(status_parser, _COMMON_OPTIONS)

    config_parser = commands.add_parser("config", help="inspect the configuration")
    config_commands = config_parser.add_subparsers(dest="config_command", required=True)
    show_parser = config_commands.add_parser(
        "show", help="print the effective settings, secrets and URL passwords redacted"
    )
    show_parser.add_argument("--json", action="store_true", help="print one JSON object")
    _add_options(show_parser, _COMMON_OPTIONS + _SERVER_OPTIONS)
    return parser


def merged_environment(arguments: argparse.Namespace, environ: dict[str, str]) -> dict[str, str]:
    """Environment variables overridden by the options given on the command line."""
    merged = dict(environ)
    for key, value in vars(arguments).items():
        if key.startswith("FANFARE_") and value is not None:
            merged[key] = value
    return merged


def _show_config(settings: Settings, as_json: bool) -> None:
    rows = settings.described()
    if as_json:
        print(json.dumps(dict(rows)))
        return
    # An unset optional setting prints as an empty value, as it would be written.
    print("\n".join(f"{variable}={value or ''}" for variable, value in rows))


def _master_key_ring(settings: Settings) -> MasterKeyRing:
    """The configured ring; a dev key is generated only for an embedded database."""
    return load_master_key_ring(
        settings.master_key,
        settings.master_keys_old,
        settings.data_dir,
        may_create_dev_key=may_create_dev_master_key(settings),
    )


async def _seal_master_key_canary(settings: Settings) -> None:
    """Write the master key canary now if this command has the master key, else leave
    it to the first server; an existing one must open (a wrong key fails here first).

    Raises:
        MasterKeyMismatch: The configured keys do not open the stored canary.
    """
    has_keys = (
        settings.master_key is not None
        or may_create_dev_master_key(settings)
        or (settings.data_dir / DEV_KEY_FILE).exists()
    )
    if not has_keys:
        return
    if settings.uses_data_dir:
        prepare_data_dir(settings.data_dir, logging.getLogger(LOGGER_NAME))
    ring = _master_key_ring(settings)
    owner = Database.from_url(
        settings.effective_owner_database_url,
        as_owner=True,
        setting=settings.owner_database_setting,
    )
    try:
        await verify_master_keys(ring, SqlCanaryStore(owner, utc_now))
    finally:
        await owner.dispose()


async def _migrate(settings: Settings) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    if settings.database_owner_url is None and settings.database_url is None:
        prepare_data_dir(settings.data_dir, logger)
    await migrate.upgrade_to_head(
        settings.effective_owner_database_url, setting=settings.owner_database_setting
    )
    await _seal_master_key_canary(settings)
    logger.info(
        "database schema up to date",
        extra={
            "revision": migrate.head_revision(),
            "database": database_location(settings.effective_owner_database_url),
        },
    )


async def _create_organization(settings: Settings, name: str, as_json: bool) -> None:
    application = Application.build(settings)
    try:
        await application.check_schema()
        # Never wrap a new organization under a key that does not open the others.
        await application.check_master_keys()
        created = await create_organization(
            application.organizations, application.envelope, name, application.clock()
        )
    finally:
        await application.close()
    output = {
        "organization_id": created.organization.organization_id,
        "secret_key": created.test_admin_key.plaintext,
        "live_secret_key": created.live_admin_key.plaintext,
    }
    if as_json:
        print(json.dumps(output))
    else:
        print("\n".join(f"{field}: {value}" for field, value in output.items()))
        print("Store the secret keys now: they are shown only once.")


async def _rotate_master_key(settings: Settings) -> None:
    """Add a master key version (dev data dir) and re-wrap every data key under it.

    Raises:
        MasterKeyError: Keys remain under versions not configured here (named by
            their non-secret ids); everything else was re-wrapped.
    """
    if settings.uses_data_dir:
        prepare_data_dir(settings.data_dir, logging.getLogger(LOGGER_NAME))
    owner = Database.from_url(
        settings.effective_owner_database_url,
        as_owner=True,
        setting=settings.owner_database_setting,
    )
    try:
        # Before adding a key version: never leave a new key with nothing wrapped under it.
        await owner.require_reachable()
        if settings.master_key is None:
            new_key = add_dev_master_key(
                settings.data_dir, may_create_dev_key=may_create_dev_master_key(settings)
            )
            print(f"added master key version {new_key.key_id} to {settings.data_dir}")
        ring = _master_key_ring(settings)
        data_keys, signing_keys = DataKeyRewrapper(owner), SigningKeyRewrapper(owner)
        rewrapped = await rewrap_data_keys(ring, data_keys)
        resealed = await rewrap_signing_keys(ring, signing_keys)
        # Last: servers only start if the canary opens, so it follows the keys.
        canary = await rewrap_master_key_canary(ring, SqlCanaryStore(owner, utc_now))
        usage = master_key_usage(
            ring,
            await data_keys.count_by_master_key(),
            await signing_keys.count_by_master_key(),
            canary=None if canary is None else canary.master_key_id,
        )
    finally:
        await owner.dispose()
    print(f"re-wrapped {rewrapped} data keys under {ring.current.key_id}")
    print(f"re-sealed {resealed} token signing keys under {ring.current.key_id}")
    left = [
        u for u in usage if u.state != "current" and (u.data_keys or u.signing_keys or u.canary)
    ]
    if left:
        count = sum(u.data_keys + u.signing_keys for u in left)
        what = f"{count} keys are" if count else "the master key canary is"
        versions = ", ".join(u.key_id for u in left)
        # A missing version cannot be opened here; a configured one only holds keys
        # a server wrapped while this ran, before it saw the new version.
        remedy = (
            "configure the missing versions in FANFARE_MASTER_KEYS_OLD and run "
            "`fanfare-grpc master-key rotate` again"
            if any(u.state == "missing" for u in left)
            else "run `fanfare-grpc master-key rotate` again"
        )
        raise MasterKeyError(
            f"{what} still wrapped under {versions}: {remedy} "
            "(`fanfare-grpc master-key status` counts them)"
        )


async def _master_key_status(settings: Settings, as_json: bool) -> None:
    """Print, per master key version, how many keys it wraps and if it may be retired."""
    if settings.uses_data_dir:
        prepare_data_dir(settings.data_dir, logging.getLogger(LOGGER_NAME))
    ring = _master_key_ring(settings)
    owner = Database.from_url(
        settings.effective_owner_database_url,
        as_owner=True,
        setting=settings.owner_database_setting,
    )
    try:
        # Counts span organizations, which only the tables' owner may read.
        await owner.require_reachable()
        canary = await SqlCanaryStore(owner, utc_now).get_canary()
        usage = master_key_usage(
            ring,
            await DataKeyRewrapper(owner).count_by_master_key(),
            await SigningKeyRewrapper(owner).count_by_master_key(),
            canary=None if canary is None else canary.master_key_id,
        )
    finally:
        await owner.dispose()
    if as_json:
        print(json.dumps({"current": ring.current.key_id, "versions": _usage_json(usage)}))
        return
    rows = [("master key", "state", "data keys", "signing keys", "retire")]
    rows += [
        (u.key_id, u.state, str(u.data_keys), str(u.signing_keys), _retire_advice(u)) for u in usage
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for key_id, state, data_keys, signing_keys, advice in rows:
        print(
            f"{key_id:<{widths[0]}}  {state:<{widths[1]}}  {data_keys:>{widths[2]}}  "
            f"{signing_keys:>{widths[3]}}  {advice}"
        )


def _usage_json(usage: list[MasterKeyUsage]) -> list[dict[str, object]]:
    return [
        {
            "master_key_id": u.key_id,
            "state": u.state,
            "data_keys": u.data_keys,
            "signing_keys": u.signing_keys,
            "canary": u.canary,
            "safe_to_retire": u.safe_to_retire,
        }
        for u in usage
    ]


def _retire_advice(usage: MasterKeyUsage) -> str:
    if usage.state == "current":
        return "no: current version"
    if usage.state == "missing":
        return "unreadable: not configured here"
    if usage.safe_to_retire:
        return "safe"
    return "not yet: run `fanfare-grpc master-key rotate`"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fanfare-grpc`` console script."""
    arguments = build_parser().parse_args(argv)
    environment = merged_environment(arguments, dict(os.environ))
    try:
        settings = Settings.from_env(environment)
        # Only the processes that use them need the files (and have them mounted).
        if arguments.command in ("serve", "worker"):
            check_setting_files(settings, tls=arguments.command == "serve")
    except SettingsError as error:
        print(f"fanfare-grpc: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    logger = logging.getLogger(LOGGER_NAME)
    for warning in configuration_warnings(environment):
        logger.warning(warning)
    try:
        if arguments.command == "config":
            _show_config(settings, arguments.json)
        elif arguments.command == "serve":
            asyncio.run(serve(settings, run_worker=not arguments.no_worker))
        elif arguments.command == "worker":
            asyncio.run(run_worker_process(settings))
        elif arguments.command == "migrate":
            asyncio.run(_migrate(settings))
        elif arguments.command == "orgs":
            asyncio.run(_create_organization(settings, arguments.name, arguments.json))
        elif arguments.command == "master-key" and arguments.master_key_command == "status":
            asyncio.run(_master_key_status(settings, arguments.json))
        elif arguments.command == "master-key":
            asyncio.run(_rotate_master_key(settings))
    except (
        SchemaOutOfDate,
        DatabaseUnreachable,
        CacheMayEvict,
        CacheNotPersistent,
        CacheUnreachable,
        DataDirError,
        ListenError,
        MasterKeyError,
        UnsharedCache,
    ) as error:
        print(f"fanfare-grpc: {error}", file=sys.stderr)
        return 1
    except errors.FanfareError as error:
        violations = error.violations if isinstance(error, errors.InvalidArgument) else ()
        details = "".join(f"; {v.field} {v.description}" for v in violations)
        print(f"fanfare-grpc: {error.message}{details}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

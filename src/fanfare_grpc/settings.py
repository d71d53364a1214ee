"""One frozen settings object, read once from ``FANFARE_*`` environment variables.

The variable names and defaults are part of the operator contract (API.md); every
command line option of ``fanfare-grpc`` maps onto one of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from redis.connection import parse_url as parse_redis_url
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from fanfare_grpc.domain.queues import MAX_ADMISSION_RATE_PER_MINUTE
from fanfare_grpc.login_codes.smtp import SmtpConfig, parse_sender_address

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_LOG_LEVELS = {"debug", "info", "warning", "error", "critical"}


_DAY = 24 * 3600.0

# Inclusive, finite bounds of every numeric setting, by variable. Outside them a value
# is a typo or a unit mix-up, and harmful: nan froze the health probe forever, 1e-9
# busy-looped it, and a 1e12 s access token TTL is a token that never expires.
NUMERIC_BOUNDS: Mapping[str, tuple[float, float]] = {
    "FANFARE_SHUTDOWN_GRACE_SECONDS": (0.1, 3600.0),
    "FANFARE_HEALTH_CHECK_INTERVAL_SECONDS": (0.1, 3600.0),
    "FANFARE_HEALTH_CHECK_TIMEOUT_SECONDS": (0.1, 600.0),
    "FANFARE_ACCESS_TOKEN_TTL_SECONDS": (10.0, _DAY),
    "FANFARE_SIGNING_KEY_ROTATION_SECONDS": (3600.0, 365 * _DAY),
    # Sessions end after 90 days whatever the refresh token says.
    "FANFARE_REFRESH_TOKEN_TTL_SECONDS": (60.0, 90 * _DAY),
    "FANFARE_WATCH_STREAMS_PER_SESSION": (1, 10_000),
    "FANFARE_WATCH_STREAMS_PER_CLIENT": (1, 1_000_000),
    "FANFARE_PUBLIC_STREAMS_PER_CLIENT": (1, 1_000_000),
    "FANFARE_MAX_CONCURRENT_STREAMS": (1, 100_000),
    "FANFARE_MAX_ADMISSION_RATE_PER_ORGANIZATION": (1, 1000 * MAX_ADMISSION_RATE_PER_MINUTE),
}

# Fields whose variable is not FANFARE_ + the field name in capitals.
_VARIABLE_OF_FIELD = {"redis_key_prefix": "FANFARE_REDIS_PREFIX"}
# Read by the test suite and the benchmarks, not by the service: never "unknown".
_HARNESS_PREFIXES = ("FANFARE_TEST_", "FANFARE_FUZZ_")
# A setting that has no effect unless another one is set too: (setting, needs).
_IGNORED_WITHOUT: tuple[tuple[str, str, str], ...] = (
    (
        "FANFARE_PLATFORM_PRINCIPALS",
        "FANFARE_TLS_CLIENT_CA",
        "no client certificate is asked for, so no caller is a platform principal",
    ),
    ("FANFARE_SMTP_FROM", "FANFARE_SMTP_URL", "no login code is emailed"),
    ("FANFARE_SMTP_CA_FILE", "FANFARE_SMTP_URL", "no login code is emailed"),
    ("FANFARE_REDIS_PREFIX", "FANFARE_REDIS_URL", "the in-process cache is used"),
    ("FANFARE_REDIS_ALLOW_EVICTION", "FANFARE_REDIS_URL", "the in-process cache is used"),
)
_REDACTED = "<redacted>"
_Text = TypeVar("_Text", str, str | None)
_MAX_REDIS_PREFIX_LENGTH = 64
_MAX_ISSUER_LENGTH = 256


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


def _secret() -> dict[str, bool]:
    # Never printed, in repr or `config show`.
    return {"secret": True}


def _url() -> dict[str, bool]:
    # Printed with its password (and password query parameters) redacted.
    return {"url": True}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the composition root needs to build the service.

    Attributes:
        listen: gRPC listen address ``host:port``; port 0 picks a free port.
        data_dir: Directory for the embedded defaults (SQLite file, dev master key).
        database_url: SQLAlchemy URL; ``None`` means SQLite in ``data_dir``.
        database_owner_url: URL of the tables' owner, for ``migrate`` and
            ``master-key rotate`` only; ``None`` means ``database_url``.
        redis_url: Redis URL; ``None`` means the in-process cache.
        redis_key_prefix: Prefix of every Redis key of this deployment.
        redis_allow_eviction: Start even when Redis may evict keys (its
            ``maxmemory-policy`` is not ``noeviction``, or cannot be read). Evicted queue
            entries are skipped, but evicted revocation markers and limits fail open.
        redis_ephemeral_ok: Start even when Redis does not persist its data (neither
            ``appendonly`` nor ``save`` snapshots, or it will not say): for development
            only, since a restart then loses every queue's entries.
        master_key: Base64 master key (secret; never printed).
        master_keys_old: Retired master key versions, still accepted for reading.
        tls_cert: Server certificate (PEM file); ``None`` serves plaintext.
        tls_key: Server private key (PEM file).
        tls_client_ca: CA bundle; when set, client certificates are required.
        platform_principals: Certificate identities treated as platform principals.
        allow_private_webhooks: Allow webhook targets on loopback/private networks.
        webhook_ca_file: Extra CA bundle trusted for webhook HTTPS.
        log_level: Minimum level of the JSON logs on stderr.
        shutdown_grace_seconds: How long in-flight calls may run after SIGTERM.
        health_check_interval_seconds: How often the database is probed for health.
        health_check_timeout_seconds: A probe slower than this counts as a failure.
        token_issuer: ``iss`` of the tokens this deployment issues.
        access_token_ttl_seconds: Lifetime of consumer access tokens.
        signing_key_rotation_seconds: A token signing key signs for this long.
        refresh_token_ttl_seconds: Lifetime of refresh tokens (each refresh extends the
            session by this much, up to 90 days).
        smtp_url: Where login codes are emailed (``smtp://`` requires STARTTLS,
            ``smtps://`` implicit TLS, ``smtp+insecure://`` plaintext for local dev);
            ``None``: test mode writes codes to the server log, live mode refuses logins.
        smtp_from: Sender address of login code emails.
        smtp_ca_file: Extra CA bundle trusted for the SMTP server's certificate.
        watch_streams_per_session: Open ``WatchPosition`` streams one consumer session
            may hold on one replica; more are refused with RESOURCE_EXHAUSTED.
        watch_streams_per_client: Open ``WatchPosition`` streams one client IP address
            may hold on one replica (all its sessions); room for shoppers behind NAT.
        public_streams_per_client: Open streams of the methods that need no credential
            (``Health/Watch``, server reflection) one client IP address may hold on
            one replica.
        max_concurrent_streams: HTTP/2 streams (calls in flight) one client connection
            may have open; further calls on that connection wait for a free one.
        max_admission_rate_per_organization: Admissions per minute that one
            organization's SCHEDULED, OPEN and PAUSED queues of one mode may add up to;
            beyond it, creating, opening or speeding up a queue is refused with
            RESOURCE_EXHAUSTED. The default is one queue at the per-queue maximum.
    """

    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path(".fanfare")
    database_url: str | None = dataclasses.field(default=None, metadata=_url())
    database_owner_url: str | None = dataclasses.field(default=None, metadata=_url())
    redis_url: str | None = dataclasses.field(default=None, metadata=_url())
    redis_key_prefix: str = "ff"
    redis_allow_eviction: bool = False
    redis_ephemeral_ok: bool = False
    master_key: str | None = dataclasses.field(default=None, metadata=_secret())
    master_keys_old: tuple[str, ...] = dataclasses.field(default=(), metadata=_secret())
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    platform_principals: tuple[str, ...] = ()
    allow_private_webhooks: bool = False
    webhook_ca_file: Path | None = None
    log_level: str = "info"
    shutdown_grace_seconds: float = 10.0
    health_check_interval_seconds: float = 2.0
    health_check_timeout_seconds: float = 2.0
    token_issuer: str = "fanfare-grpc"
    access_token_ttl_seconds: float = 15 * 60.0
    signing_key_rotation_seconds: float = 7 * 24 * 3600.0
    refresh_token_ttl_seconds: float = 30 * 24 * 3600.0
    smtp_url: str | None = dataclasses.field(default=None, metadata=_url())
    smtp_from: str = "Fanfare <no-reply@localhost>"
    smtp_ca_file: Path | None = None
    watch_streams_per_session: int = 4
    watch_streams_per_client: int = 64
    public_streams_per_client: int = 16
    max_concurrent_streams: int = 100
    max_admission_rate_per_organization: int = MAX_ADMISSION_RATE_PER_MINUTE

    def described(self) -> list[tuple[str, str | None]]:
        """Each variable and its effective value as text, secrets redacted.

        ``None`` is an unset optional setting. Secrets show only whether they are set;
        URLs show everything but their password.
        """
        rows: list[tuple[str, str | None]] = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            rows.append((SETTING_VARIABLES[field.name], _describe(field, value)))
        return rows

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{field.name}={_describe(field, getattr(self, field.name))!r}"
            for field in dataclasses.fields(self)
        )
        return f"Settings({fields})"

    @property
    def effective_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'fanfare.sqlite3').resolve()}"

    @property
    def effective_owner_database_url(self) -> str:
        """Where schema changes and key re-wrapping connect (the tables' owner)."""
        return self.database_owner_url or self.effective_database_url

    @property
    def database_setting(self) -> str:
        """The variable that chose ``effective_database_url`` (named in errors)."""
        return "FANFARE_DATABASE_URL" if self.database_url else "FANFARE_DATA_DIR"

    @property
    def owner_database_setting(self) -> str:
        """The variable that chose ``effective_owner_database_url`` (named in errors)."""
        return "FANFARE_DATABASE_OWNER_URL" if self.database_owner_url else self.database_setting

    @property
    def uses_data_dir(self) -> bool:
        """Whether the embedded SQLite file or the dev master key live in ``data_dir``."""
        return self.database_url is None or self.master_key is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``FANFARE_*`` variables (``os.environ`` by default).

        Raises:
            SettingsError: A value cannot be parsed; the message names the variable.
        """
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def path(name: str) -> Path | None:
            value = text(name)
            return Path(value) if value else None

        def flag(name: str, default: bool) -> bool:
            value = env.get(name)
            if value is None:
                return default
            lowered = value.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise SettingsError(f"{name} must be true or false")

        def seconds(name: str, default: float) -> float:
            value = text(name)
            if value is None:
                return default
            low, high = NUMERIC_BOUNDS[name]
            try:
                parsed = float(value)
            except ValueError:
                parsed = math.nan
            # float() accepts nan and inf: both fail this comparison.
            if not (math.isfinite(parsed) and low <= parsed <= high):
                raise SettingsError(
                    f"{name} must be a number of seconds from {_number(low)} to {_number(high)} "
                    f"(got {value[:40]!r})"
                )
            return parsed

        def count(name: str, default: int) -> int:
            value = text(name)
            if value is None:
                return default
            low, high = NUMERIC_BOUNDS[name]
            try:
                parsed = int(value)
            except ValueError:
                parsed = 0
                valid = False
            else:
                valid = low <= parsed <= high
            if not valid:
                raise SettingsError(
                    f"{name} must be a whole number from {_number(low)} to {_number(high)} "
                    f"(got {value[:40]!r})"
                )
            return parsed

        def database_url(name: str) -> str | None:
            value = text(name)
            if value is not None:
                _check_database_url(name, value)
            return value

        def items(name: str) -> tuple[str, ...]:
            return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())

        defaults = cls()
        listen = text("FANFARE_LISTEN") or defaults.listen
        _check_listen_address(listen)
        log_level = (text("FANFARE_LOG_LEVEL") or defaults.log_level).lower()
        if log_level not in _LOG_LEVELS:
            raise SettingsError(f"FANFARE_LOG_LEVEL must be one of {sorted(_LOG_LEVELS)}")
        settings = cls(
            listen=listen,
            data_dir=path("FANFARE_DATA_DIR") or defaults.data_dir,
            database_url=database_url("FANFARE_DATABASE_URL"),
            database_owner_url=database_url("FANFARE_DATABASE_OWNER_URL"),
            redis_url=_checked(text("FANFARE_REDIS_URL"), _check_redis_url),
            redis_key_prefix=_checked(
                text("FANFARE_REDIS_PREFIX") or defaults.redis_key_prefix, _check_redis_prefix
            ),
            redis_allow_eviction=flag("FANFARE_REDIS_ALLOW_EVICTION", False),
            redis_ephemeral_ok=flag("FANFARE_REDIS_EPHEMERAL_OK", False),
            master_key=text("FANFARE_MASTER_KEY"),
            master_keys_old=items("FANFARE_MASTER_KEYS_OLD"),
            tls_cert=path("FANFARE_TLS_CERT"),
            tls_key=path("FANFARE_TLS_KEY"),
            tls_client_ca=path("FANFARE_TLS_CLIENT_CA"),
            platform_principals=items("FANFARE_PLATFORM_PRINCIPALS"),
            allow_private_webhooks=flag("FANFARE_ALLOW_PRIVATE_WEBHOOKS", False),
            webhook_ca_file=path("FANFARE_WEBHOOK_CA_FILE"),
            log_level=log_level,
            shutdown_grace_seconds=seconds(
                "FANFARE_SHUTDOWN_GRACE_SECONDS", defaults.shutdown_grace_seconds
            ),
            health_check_interval_seconds=seconds(
                "FANFARE_HEALTH_CHECK_INTERVAL_SECONDS", defaults.health_check_interval_seconds
            ),
            health_check_timeout_seconds=seconds(
                "FANFARE_HEALTH_CHECK_TIMEOUT_SECONDS", defaults.health_check_timeout_seconds
            ),
            token_issuer=_checked(
                text("FANFARE_TOKEN_ISSUER") or defaults.token_issuer, _check_issuer
            ),
            access_token_ttl_seconds=seconds(
                "FANFARE_ACCESS_TOKEN_TTL_SECONDS", defaults.access_token_ttl_seconds
            ),
            signing_key_rotation_seconds=seconds(
                "FANFARE_SIGNING_KEY_ROTATION_SECONDS", defaults.signing_key_rotation_seconds
            ),
            refresh_token_ttl_seconds=seconds(
                "FANFARE_REFRESH_TOKEN_TTL_SECONDS", defaults.refresh_token_ttl_seconds
            ),
            smtp_url=text("FANFARE_SMTP_URL"),
            smtp_from=_checked(text("FANFARE_SMTP_FROM") or defaults.smtp_from, _check_sender),
            smtp_ca_file=path("FANFARE_SMTP_CA_FILE"),
            watch_streams_per_session=count(
                "FANFARE_WATCH_STREAMS_PER_SESSION", defaults.watch_streams_per_session
            ),
            watch_streams_per_client=count(
                "FANFARE_WATCH_STREAMS_PER_CLIENT", defaults.watch_streams_per_client
            ),
            public_streams_per_client=count(
                "FANFARE_PUBLIC_STREAMS_PER_CLIENT", defaults.public_streams_per_client
            ),
            max_concurrent_streams=count(
                "FANFARE_MAX_CONCURRENT_STREAMS", defaults.max_concurrent_streams
            ),
            max_admission_rate_per_organization=count(
                "FANFARE_MAX_ADMISSION_RATE_PER_ORGANIZATION",
                defaults.max_admission_rate_per_organization,
            ),
        )
        if settings.smtp_url is not None:
            try:
                SmtpConfig.from_url(settings.smtp_url, settings.smtp_from, settings.smtp_ca_file)
            except ValueError as error:
                raise SettingsError(f"FANFARE_SMTP_URL/FANFARE_SMTP_FROM: {error}") from None
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise SettingsError("FANFARE_TLS_CERT and FANFARE_TLS_KEY must be set together")
        if settings.tls_client_ca is not None and settings.tls_cert is None:
            raise SettingsError("FANFARE_TLS_CLIENT_CA needs FANFARE_TLS_CERT and FANFARE_TLS_KEY")
        return settings


SETTING_VARIABLES: Mapping[str, str] = {
    field.name: _VARIABLE_OF_FIELD.get(field.name, f"FANFARE_{field.name.upper()}")
    for field in dataclasses.fields(Settings)
}
"""The variable of every ``Settings`` field, in declaration order (field name → variable)."""


def configuration_warnings(environ: Mapping[str, str]) -> list[str]:
    """What an operator probably got wrong, though it does not stop the service.

    Unknown ``FANFARE_*`` variables (typos such as ``FANFARE_LOGLEVEL``: their value is
    silently not used) and settings that have no effect in this combination.
    """
    known = set(SETTING_VARIABLES.values())
    warnings = []
    for name in sorted(environ):
        if not name.startswith("FANFARE_") or name in known:
            continue
        if name.startswith(_HARNESS_PREFIXES):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(f"{name} is not a fanfare-grpc setting and is ignored{hint}")

    def is_set(name: str) -> bool:
        return bool(environ.get(name, "").strip())

    for setting, needs, consequence in _IGNORED_WITHOUT:
        if is_set(setting) and not is_set(needs):
            warnings.append(f"{setting} is ignored without {needs}: {consequence}")
    return warnings


def _describe(field: dataclasses.Field[object], value: object) -> str | None:
    if value is None or value == ():
        return None
    if field.metadata.get("secret"):
        return _REDACTED
    if field.metadata.get("url"):
        return redact_url(str(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _checked(value: _Text, check: Callable[[str], None]) -> _Text:
    if value is not None:
        check(value)
    return value


def _number(value: float) -> str:
    # 2592000, not 2.592e+06: the way an operator writes it.
    return str(int(value)) if float(value).is_integer() else str(value)


def _check_database_url(name: str, value: str) -> None:
    # Messages never quote the URL: it may hold a password.
    expected = "postgresql://user@host:port/database or sqlite:///path"
    try:
        parsed = make_url(value)
        port = parsed.port
    except (ArgumentError, ValueError):
        raise SettingsError(f"{name} is not a database URL (expected {expected})") from None
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise SettingsError(f"{name} must be a postgresql or sqlite URL (expected {expected})")
    if port is not None and not 1 <= port <= 65535:
        raise SettingsError(f"{name} has a port outside 1-65535")
    if parsed.get_backend_name() == "postgresql" and not parsed.database:
        raise SettingsError(f"{name} names no database (expected {expected})")


def _check_redis_url(value: str) -> None:
    name = "FANFARE_REDIS_URL"
    expected = "redis://[:password@]host:port/db, rediss://… or unix:///path"
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
        # The parser the cache's connection pool uses (scheme, db, query options).
        parse_redis_url(value)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        raise SettingsError(f"{name} is not a Redis URL (expected {expected})") from None
    if parts.scheme in ("redis", "rediss") and not parts.hostname:
        raise SettingsError(f"{name} names no host (expected {expected})")
    # redis-py silently ignores a database number it cannot parse: database 0 it is.
    if parts.scheme in ("redis", "rediss") and not (
        parts.path in ("", "/") or parts.path[1:].isdigit()
    ):
        raise SettingsError(f"{name} has a database that is not a number (expected {expected})")
    if port is not None and not 1 <= port <= 65535:
        raise SettingsError(f"{name} has a port outside 1-65535")


def _check_redis_prefix(prefix: str) -> None:
    # Braces would make part of every key a Redis Cluster hash tag, moving all keys
    # (or the wrong ones) into one slot; whitespace and control characters are typos.
    if len(prefix) > _MAX_REDIS_PREFIX_LENGTH or any(
        char in "{}" or not char.isprintable() or char.isspace() for char in prefix
    ):
        raise SettingsError(
            f"FANFARE_REDIS_PREFIX must be at most {_MAX_REDIS_PREFIX_LENGTH} printable "
            "characters without spaces, '{' or '}'"
        )


def _check_issuer(issuer: str) -> None:
    # It is compared verbatim in every token: a stray control character would make
    # tokens of this deployment fail elsewhere with no visible difference.
    if len(issuer) > _MAX_ISSUER_LENGTH or not issuer.isprintable():
        raise SettingsError(
            f"FANFARE_TOKEN_ISSUER must be at most {_MAX_ISSUER_LENGTH} printable characters"
        )


def _check_sender(sender: str) -> None:
    try:
        parse_sender_address(sender)
    except ValueError as error:
        raise SettingsError(f"FANFARE_SMTP_FROM: {error}") from None


def redact_url(url: str) -> str:
    """``url`` with its password and any password query parameter replaced."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
        hostinfo = parts.netloc.rpartition("@")[2]
    except ValueError:
        return _REDACTED
    if "@" in parts.path + parts.query + parts.fragment:
        # An unencoded "/", "?" or "#" in the password ended the authority early: the
        # rest of the credentials sits in what follows, so none of it is printed.
        return f"{parts.scheme}://{_REDACTED}"
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:***@{hostinfo}"
    query = urllib.parse.urlencode(
        [
            (key, "***" if "pass" in key.lower() else value)
            for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _check_listen_address(listen: str) -> None:
    host, separator, port = listen.rpartition(":")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError("FANFARE_LISTEN must look like host:port (port 0 picks a free one)")

"""The ``fanfare-grpc`` command as operators run it, in real processes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import stat
from pathlib import Path

import pytest
from sqlalchemy import make_url

from fanfare_grpc.domain.names import UNSAFE_TEXT_DESCRIPTION
from tests.backends import REDIS_URL
from tests.grpc_helpers import run_grpcurl
from tests.processes import ServerProcess, process_env, run_cli


def _new_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def test_migrate_is_idempotent(tmp_path: Path) -> None:
    env = process_env(tmp_path)
    for _ in range(2):
        code, _, stderr = await run_cli("migrate", env=env)
        assert code == 0, stderr
    assert (tmp_path / "fanfare.sqlite3").is_file()


async def test_orgs_create_json_prints_exactly_one_object(tmp_path: Path) -> None:
    env = process_env(tmp_path)
    assert (await run_cli("migrate", env=env))[0] == 0
    code, stdout, stderr = await run_cli("orgs", "create", "--name", "Acme", "--json", env=env)
    assert code == 0, stderr
    created = json.loads(stdout)
    assert stdout.count("\n") == 1  # exactly one JSON object on stdout
    assert set(created) == {"organization_id", "secret_key", "live_secret_key"}
    assert created["organization_id"].startswith("org_")
    assert re.fullmatch(r"sk_test_[A-Za-z0-9]{32,}", created["secret_key"])
    assert re.fullmatch(r"sk_live_[A-Za-z0-9]{32,}", created["live_secret_key"])
    for secret in (created["secret_key"], created["live_secret_key"]):
        assert secret not in stderr  # shown once, on stdout only
    code, stdout, _ = await run_cli("orgs", "create", "--name", "Acme", env=env)
    assert code == 0
    assert stdout.startswith("organization_id: org_")
    assert created["organization_id"] not in stdout  # ids are random, never reused


async def test_orgs_create_rejects_a_bad_name(tmp_path: Path) -> None:
    env = process_env(tmp_path)
    assert (await run_cli("migrate", env=env))[0] == 0
    # A command line cannot carry NUL; the other controls and bidi overrides can.
    for name in ("", "   ", "x" * 201, "Evil \u202eCorp", "a\x1b[2Jb", "\u2066Acme"):
        code, stdout, stderr = await run_cli("orgs", "create", "--name", name, "--json", env=env)
        assert code == 1
        assert stdout == ""
        assert "invalid organization name" in stderr
        if name.strip() and len(name) <= 200:
            assert f"name {UNSAFE_TEXT_DESCRIPTION}" in stderr


async def test_commands_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    env = process_env(tmp_path)
    # The refusal names the database it looked at.
    refusal = (
        f"fanfare-grpc: schema of {(tmp_path / 'fanfare.sqlite3').resolve()} is not up to "
        "date: run `fanfare-grpc migrate`"
    )
    code, stdout, stderr = await run_cli("orgs", "create", "--name", "Acme", env=env)
    assert code == 1 and stdout == ""
    assert refusal in stderr.splitlines()
    for command in ("serve", "worker"):
        code, _, stderr = await run_cli(command, env=env)
        assert code == 1
        assert refusal in stderr.splitlines()


async def test_commands_refuse_an_unmigrated_postgres_database_by_its_address(
    tmp_path: Path, postgres_url: str, redis_prefix: str
) -> None:
    env = process_env(
        tmp_path,
        {
            "FANFARE_DATABASE_URL": postgres_url,
            "FANFARE_REDIS_URL": REDIS_URL,
            "FANFARE_REDIS_PREFIX": redis_prefix,
            # With PostgreSQL no dev master key is generated: deployments pass theirs.
            "FANFARE_MASTER_KEY": _new_master_key(),
        },
    )
    url = make_url(postgres_url)
    refusal = (
        f"fanfare-grpc: schema of {url.host}:{url.port}/{url.database} is not up to date: "
        "run `fanfare-grpc migrate`"
    )
    for command in (("serve",), ("orgs", "create", "--name", "Acme")):
        code, _, stderr = await run_cli(*command, env=env)
        assert code == 1
        assert stderr.splitlines() == [refusal]


async def test_bad_configuration_is_reported_not_raised(tmp_path: Path) -> None:
    env = process_env(tmp_path, {"FANFARE_LISTEN": "no-port-here"})
    code, _, stderr = await run_cli("serve", env=env)
    assert code == 2
    assert "FANFARE_LISTEN" in stderr and "Traceback" not in stderr
    code, _, stderr = await run_cli("serve", "--listen", "also-bad", env=process_env(tmp_path))
    assert code == 2 and "FANFARE_LISTEN" in stderr


async def test_serve_answers_grpcurl_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = process_env(tmp_path)
    assert (await run_cli("migrate", env=env))[0] == 0
    code, stdout, _ = await run_cli("orgs", "create", "--name", "Acme", "--json", env=env)
    created = json.loads(stdout)
    server = await ServerProcess.start(["fanfare_grpc", "serve"], env)
    try:
        address = await server.wait_listening()
        code, stdout, stderr = await run_grpcurl("-plaintext", address, "list")
        assert code == 0, stderr
        assert "fanfare.queue.v1.QueueService" in stdout.split()
        # The keys printed by `orgs create` are real ADMIN keys of their mode.
        for field, mode in (("secret_key", "MODE_TEST"), ("live_secret_key", "MODE_LIVE")):
            code, stdout, stderr = await run_grpcurl(
                "-plaintext",
                "-H",
                f"authorization: Bearer {created[field]}",
                "-d",
                "{}",
                address,
                "fanfare.auth.v1.AuthService/ListApiKeys",
            )
            assert code == 0, stderr
            listed = json.loads(stdout)["api_keys"]
            assert [(key["mode"], key["role"]) for key in listed] == [(mode, "ROLE_ADMIN")]
        code, _, stderr = await run_grpcurl(
            "-plaintext", "-d", "{}", address, "fanfare.auth.v1.AuthService/ListApiKeys"
        )
        assert code != 0 and "Unauthenticated" in stderr
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait_exit() == 0
    finally:
        await server.kill()
    # Every log line is one JSON object.
    assert all("raw" not in entry for entry in server.messages())


async def test_serve_on_postgres_and_redis_from_the_environment(
    tmp_path: Path, postgres_url: str, redis_prefix: str
) -> None:
    env = process_env(
        tmp_path,
        {
            "FANFARE_DATABASE_URL": postgres_url,
            "FANFARE_REDIS_URL": REDIS_URL,
            "FANFARE_REDIS_PREFIX": redis_prefix,
            # With PostgreSQL no dev master key is generated: deployments pass theirs.
            "FANFARE_MASTER_KEY": _new_master_key(),
        },
    )
    code, _, stderr = await run_cli("migrate", env=env)
    assert code == 0, stderr
    server = await ServerProcess.start(["fanfare_grpc", "serve", "--no-worker"], env)
    try:
        address = await server.wait_listening()
        code, stdout, stderr = await run_grpcurl(
            "-plaintext", address, "grpc.health.v1.Health/Check"
        )
        assert code == 0, stderr
        assert json.loads(stdout) == {"status": "SERVING"}
        server.process.send_signal(signal.SIGINT)
        assert await server.wait_exit() == 0
    finally:
        await server.kill()
    assert not (tmp_path / "fanfare.sqlite3").exists()  # the SQLite default was not used


async def test_serve_refuses_postgres_with_the_in_process_cache(
    tmp_path: Path, postgres_url: str
) -> None:
    env = process_env(
        tmp_path,
        {"FANFARE_DATABASE_URL": postgres_url, "FANFARE_MASTER_KEY": _new_master_key()},
    )
    assert (await run_cli("migrate", env=env))[0] == 0
    for command in ("serve", "worker"):
        code, _, stderr = await run_cli(command, env=env)
        assert code == 1
        assert "FANFARE_REDIS_URL" in stderr and "Traceback" not in stderr


async def test_worker_runs_until_sigterm(tmp_path: Path) -> None:
    env = process_env(tmp_path)
    assert (await run_cli("migrate", env=env))[0] == 0
    worker = await ServerProcess.start(["fanfare_grpc", "worker"], env)
    try:
        for _ in range(200):
            if any(entry.get("message") == "worker started" for entry in worker.messages()):
                break
            await asyncio.sleep(0.05)
        worker.process.send_signal(signal.SIGTERM)
        assert await worker.wait_exit() == 0
    finally:
        await worker.kill()
    messages = [entry.get("message") for entry in worker.messages()]
    assert "worker started" in messages and "worker stopped" in messages


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_fresh_data_dir_and_its_files_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    env = process_env(data_dir)
    code, _, stderr = await run_cli("migrate", env=env)
    assert code == 0, stderr
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "fanfare.sqlite3") == 0o600
    server = await ServerProcess.start(["fanfare_grpc", "serve"], env)
    try:
        await server.wait_listening()
        # While the server runs, SQLite's write-ahead log and shared memory exist.
        database_files = sorted(path.name for path in data_dir.iterdir())
        assert database_files == [
            "fanfare.sqlite3",
            "fanfare.sqlite3-shm",
            "fanfare.sqlite3-wal",
            "master_keys",
        ]
        assert {name: _mode(data_dir / name) for name in database_files} == dict.fromkeys(
            database_files, 0o600
        )
        assert _mode(data_dir) == 0o700
    finally:
        await server.kill()


async def test_serve_on_a_fresh_data_dir_creates_it_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "never-migrated"
    code, _, stderr = await run_cli("serve", env=process_env(data_dir))
    assert code == 1 and "fanfare-grpc migrate" in stderr
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "fanfare.sqlite3") == 0o600
    assert _mode(data_dir / "master_keys") == 0o600


async def test_an_existing_data_dir_open_to_others_is_tightened(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    env = process_env(data_dir)
    assert (await run_cli("migrate", env=env))[0] == 0
    # As an older version left them.
    os.chmod(data_dir, 0o755)
    os.chmod(data_dir / "fanfare.sqlite3", 0o644)
    code, _, stderr = await run_cli("migrate", env=env)
    assert code == 0, stderr
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "fanfare.sqlite3") == 0o600
    warnings = [json.loads(line)["message"] for line in stderr.splitlines() if "data dir" in line]
    assert warnings == [
        f"data dir {data_dir} was accessible to other users: mode 0755 tightened to 0700"
    ]


async def test_an_unusable_data_dir_is_one_line_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    data_dir = blocker / "data"
    for command in (("migrate",), ("serve",), ("orgs", "create", "--name", "Acme")):
        code, _, stderr = await run_cli(*command, env=process_env(data_dir))
        assert code == 1
        assert stderr.splitlines() == [
            (
                f"fanfare-grpc: cannot create the data dir {data_dir} (Not a directory): check "
                "FANFARE_DATA_DIR and that this user may create and write it"
            )
        ]


_UNREACHABLE_COMMANDS = (
    ("migrate",),
    ("serve",),
    ("worker",),
    ("orgs", "create", "--name", "Acme"),
    ("master-key", "rotate"),
)


@pytest.mark.parametrize("command", _UNREACHABLE_COMMANDS, ids=" ".join)
async def test_an_unreachable_postgres_is_one_line_naming_it_without_the_password(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    port = _closed_port()
    env = process_env(
        tmp_path,
        {
            "FANFARE_DATABASE_URL": f"postgresql+psycopg://fanfare:s3cretpw@127.0.0.1:{port}/db",
            "FANFARE_REDIS_URL": REDIS_URL,
            # With PostgreSQL no dev master key is generated: deployments pass theirs.
            "FANFARE_MASTER_KEY": _new_master_key(),
        },
    )
    code, stdout, stderr = await run_cli(*command, env=env)
    assert code == 1
    assert stdout == ""
    assert stderr.splitlines() == [
        (
            f"fanfare-grpc: cannot reach the PostgreSQL database 127.0.0.1:{port}/db "
            "(Connection refused): check that PostgreSQL is up at that address, and "
            "FANFARE_DATABASE_URL (host, port, user, password, database name)"
        )
    ]
    assert "s3cretpw" not in stderr


async def test_migrate_names_the_owner_url_it_could_not_reach(
    tmp_path: Path, postgres_url: str
) -> None:
    port = _closed_port()
    env = process_env(
        tmp_path,
        {
            "FANFARE_DATABASE_URL": postgres_url,
            "FANFARE_DATABASE_OWNER_URL": f"postgresql://owner:s3cretpw@127.0.0.1:{port}/db",
        },
    )
    code, _, stderr = await run_cli("migrate", env=env)
    assert code == 1
    [line] = stderr.splitlines()
    assert f"127.0.0.1:{port}/db" in line and "FANFARE_DATABASE_OWNER_URL" in line
    assert "s3cretpw" not in line and "owner" not in line.split("FANFARE")[0]


async def test_serve_with_redis_unreachable_is_one_line_naming_it(tmp_path: Path) -> None:
    port = _closed_port()
    env = process_env(tmp_path, {"FANFARE_REDIS_URL": f"redis://:s3cretpw@127.0.0.1:{port}/2"})
    assert (await run_cli("migrate", env=env))[0] == 0
    for command in ("serve", "worker"):
        code, _, stderr = await run_cli(command, env=env)
        assert code == 1
        assert stderr.splitlines() == [
            (
                f"fanfare-grpc: cannot reach Redis at 127.0.0.1:{port}/2: check that Redis is "
                "running there and FANFARE_REDIS_URL (host, port, password)"
            )
        ]


async def test_sigterm_right_after_listening_is_a_graceful_stop(tmp_path: Path) -> None:
    env = process_env(tmp_path)
    assert (await run_cli("migrate", env=env))[0] == 0
    for command in (["fanfare_grpc", "serve"], ["fanfare_grpc", "serve", "--no-worker"]):
        server = await ServerProcess.start(command, env)
        try:
            await server.wait_listening()
            server.process.send_signal(signal.SIGTERM)
            assert await server.wait_exit() == 0
        finally:
            await server.kill()
        assert "stopped" in [entry.get("message") for entry in server.messages()]

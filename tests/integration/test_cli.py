"""The ``fanfare-grpc`` command as operators run it, in real processes."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

from tests.backends import REDIS_URL
from tests.grpc_helpers import run_grpcurl
from tests.processes import ServerProcess, process_env, run_cli


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
            assert "name must not contain control or bidirectional" in stderr


async def test_commands_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    env = process_env(tmp_path)
    code, stdout, stderr = await run_cli("orgs", "create", "--name", "Acme", env=env)
    assert code == 1 and stdout == ""
    assert "fanfare-grpc migrate" in stderr
    code, _, stderr = await run_cli("serve", env=env)
    assert code == 1
    assert "fanfare-grpc migrate" in stderr


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
    env = process_env(tmp_path, {"FANFARE_DATABASE_URL": postgres_url})
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

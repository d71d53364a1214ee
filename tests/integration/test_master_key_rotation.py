"""``fanfare-grpc master-key rotate`` while a server runs; old data stays readable."""

from __future__ import annotations

import base64
import json
import os
import signal
from pathlib import Path

from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from fanfare.common.v1 import common_pb2
from grpc import aio

from fanfare_grpc.crypto.master_keys import DEV_KEY_FILE
from tests.backends import REDIS_URL
from tests.processes import ServerProcess, process_env, run_cli

CREATE = auth.CreateApiKeyRequest(
    kind=common_pb2.API_KEY_KIND_SECRET, role=common_pb2.ROLE_OPERATOR, name="sealed"
)


def _new_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def _create_idempotently(address: str, admin: str) -> auth.CreateApiKeyResponse:
    """CreateApiKey whose stored outcome is sealed under the organization's data key."""
    async with aio.insecure_channel(address) as channel:
        response: auth.CreateApiKeyResponse = await auth_service_pb2_grpc.AuthServiceStub(
            channel
        ).CreateApiKey(
            CREATE,
            metadata=(("authorization", f"Bearer {admin}"), ("idempotency-key", "sealed-1")),
        )
        return response


async def test_rotation_rewraps_data_keys_without_downtime(
    tmp_path: Path, postgres_url: str, redis_prefix: str
) -> None:
    old_key, new_key = _new_master_key(), _new_master_key()
    shared = {
        "FANFARE_DATABASE_URL": postgres_url,
        "FANFARE_REDIS_URL": REDIS_URL,
        "FANFARE_REDIS_PREFIX": redis_prefix,
    }
    before = process_env(tmp_path, {**shared, "FANFARE_MASTER_KEY": old_key})
    assert (await run_cli("migrate", env=before))[0] == 0
    code, stdout, stderr = await run_cli("orgs", "create", "--name", "Acme", "--json", env=before)
    assert code == 0, stderr
    admin = json.loads(stdout)["secret_key"]

    server = await ServerProcess.start(["fanfare_grpc", "serve", "--no-worker"], before)
    try:
        address = await server.wait_listening()
        first = await _create_idempotently(address, admin)
        assert first.secret

        # The operator makes the new key current, keeps the old one readable, rotates.
        during = process_env(
            tmp_path,
            {**shared, "FANFARE_MASTER_KEY": new_key, "FANFARE_MASTER_KEYS_OLD": old_key},
        )
        code, stdout, stderr = await run_cli("master-key", "rotate", env=during)
        assert code == 0, stderr
        assert "re-wrapped 1 data keys" in stdout
        code, stdout, _ = await run_cli("master-key", "rotate", env=during)
        assert "re-wrapped 0 data keys" in stdout

        # The running server never noticed: it keeps serving with its cached data keys.
        replay = await _create_idempotently(address, admin)
        assert replay.api_key == first.api_key
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait_exit() == 0
    finally:
        await server.kill()

    # After the rotation the old master key can be dropped: everything was re-wrapped.
    after = process_env(tmp_path, {**shared, "FANFARE_MASTER_KEY": new_key})
    restarted = await ServerProcess.start(["fanfare_grpc", "serve", "--no-worker"], after)
    try:
        address = await restarted.wait_listening()
        replay = await _create_idempotently(address, admin)
        assert replay.api_key == first.api_key  # decrypted through the re-wrapped data key
    finally:
        await restarted.kill()


async def test_dev_rotation_while_serving_keeps_cold_organizations_working(
    tmp_path: Path,
) -> None:
    env = process_env(tmp_path)
    assert (await run_cli("migrate", env=env))[0] == 0
    server = await ServerProcess.start(["fanfare_grpc", "serve", "--no-worker"], env)
    try:
        address = await server.wait_listening()
        # Created by another process: the server has never unwrapped its data key.
        code, stdout, stderr = await run_cli("orgs", "create", "--name", "Cold", "--json", env=env)
        assert code == 0, stderr
        admin = json.loads(stdout)["secret_key"]
        code, stdout, stderr = await run_cli("master-key", "rotate", env=env)
        assert code == 0 and "re-wrapped 1 data keys" in stdout, stderr
        first = await _create_idempotently(address, admin)  # seals under the data key
        assert first.secret
        assert (await _create_idempotently(address, admin)).api_key == first.api_key
    finally:
        await server.kill()


async def test_dev_rotation_adds_a_key_version_in_the_data_dir(tmp_path: Path) -> None:
    env = process_env(tmp_path)
    assert (await run_cli("migrate", env=env))[0] == 0
    assert (await run_cli("orgs", "create", "--name", "Acme", env=env))[0] == 0
    key_file = tmp_path / DEV_KEY_FILE
    assert len(key_file.read_text().split()) == 1
    assert key_file.stat().st_mode & 0o777 == 0o600
    code, stdout, stderr = await run_cli("master-key", "rotate", env=env)
    assert code == 0, stderr
    assert "added master key version mk_" in stdout and "re-wrapped 1 data keys" in stdout
    assert len(key_file.read_text().split()) == 2
    assert base64.b64decode(key_file.read_text().split()[0]) not in stdout.encode()


async def test_a_malformed_master_key_is_reported_without_its_value(tmp_path: Path) -> None:
    env = process_env(tmp_path, {"FANFARE_MASTER_KEY": "bm90LTMyLWJ5dGVz"})
    code, _, stderr = await run_cli("orgs", "create", "--name", "Acme", env=env)
    assert code == 1
    assert "FANFARE_MASTER_KEY" in stderr and "bm90LTMyLWJ5dGVz" not in stderr

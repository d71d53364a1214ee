"""A wrong or lost master key never serves (issue 11, item 3).

At start every process that serves or wraps opens the master key canary and refuses
with one line naming the key ids; PostgreSQL never gets a generated dev key; a data
key that does not open at run time turns health NOT_SERVING, logged once.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fanfare_grpc.crypto.envelope import Envelope
from fanfare_grpc.crypto.master_keys import (
    DEV_KEY_FILE,
    DEV_KEY_REFUSED,
    MasterKey,
    MasterKeyRing,
    load_master_key_ring,
    new_key_material,
)
from fanfare_grpc.settings import Settings
from fanfare_grpc.storage.data_keys import DataKeyRewrapper
from fanfare_grpc.storage.database import Database
from tests.backends import REDIS_URL
from tests.conftest import BackendSettings
from tests.consumers import serving_consumer_world
from tests.grpc_helpers import expect_status
from tests.log_capture import service_log_handler
from tests.processes import process_env, run_cli

# Long enough for a refusal; a server that starts instead runs until this kills it.
REFUSAL_TIMEOUT = 30
REMEDY = (
    "configure the master key that wrapped it (FANFARE_MASTER_KEY, or restore "
    "master_keys in the data dir)"
)


def _new_master_key() -> tuple[str, str]:
    """A base64 master key and its id."""
    material = os.urandom(32)
    return base64.b64encode(material).decode(), MasterKey.from_material(material).key_id


def _cli_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The CLI's environment for the same backend as ``settings``."""
    backend = {
        "FANFARE_DATABASE_URL": settings.database_url,
        "FANFARE_REDIS_URL": settings.redis_url,
        "FANFARE_REDIS_PREFIX": settings.redis_key_prefix,
    }
    return process_env(
        settings.data_dir,
        {**{key: value for key, value in backend.items() if value}, **(extra or {})},
    )


async def _data_keys_by_master(env: dict[str, str]) -> dict[str, int]:
    code, stdout, stderr = await run_cli("master-key", "status", "--json", env=env)
    assert code == 0, stderr
    return {v["master_key_id"]: v["data_keys"] for v in json.loads(stdout)["versions"]}


def _plain_lines(stderr: str) -> list[str]:
    """What the command printed itself (the JSON log lines left out: on SQLite the
    schema check logs Alembic's two info lines)."""
    return [line for line in stderr.splitlines() if not line.startswith("{")]


async def _refusals(env: dict[str, str]) -> list[tuple[int, list[str]]]:
    """Exit code and printed stderr lines of each command that serves or wraps."""
    results = []
    for command in (
        ("serve",),
        ("worker",),
        ("orgs", "create", "--name", "Stray"),
    ):
        code, _, stderr = await run_cli(*command, env=env, timeout=REFUSAL_TIMEOUT)
        results.append((code, _plain_lines(stderr)))
    return results


async def test_a_lost_data_dir_does_not_serve_an_existing_sqlite_database(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    database = tmp_path / "database" / "fanfare.sqlite3"
    database.parent.mkdir()
    env = process_env(data_dir, {"FANFARE_DATABASE_URL": f"sqlite+aiosqlite:///{database}"})
    code, _, stderr = await run_cli("migrate", env=env)
    assert code == 0, stderr
    code, _, stderr = await run_cli("orgs", "create", "--name", "Acme", env=env)
    assert code == 0, stderr
    original = load_master_key_ring(None, (), data_dir).current.key_id
    backup = (data_dir / DEV_KEY_FILE).read_text()

    shutil.rmtree(data_dir)  # the volume holding master_keys is gone

    results = await _refusals(env)
    stray = load_master_key_ring(None, (), data_dir).current.key_id
    assert stray != original
    refusal = f"fanfare-grpc: master key {stray} does not open data wrapped by {original}: {REMEDY}"
    assert results == [(1, [refusal])] * 3
    # The runbook: restore the key file from the backup (over the stray one).
    (data_dir / DEV_KEY_FILE).write_text(backup)
    code, _, stderr = await run_cli("orgs", "create", "--name", "Again", env=env)
    assert code == 0, stderr
    assert await _data_keys_by_master(env) == {original: 2}  # nothing under the stray key


async def test_a_wrong_master_key_is_refused_naming_both_ids(backend: BackendSettings) -> None:
    (right, right_id), (wrong, wrong_id) = _new_master_key(), _new_master_key()
    good = _cli_env(backend.settings, {"FANFARE_MASTER_KEY": right})
    code, _, stderr = await run_cli("migrate", env=good)
    assert code == 0, stderr
    assert (await run_cli("orgs", "create", "--name", "Acme", env=good))[0] == 0

    bad = _cli_env(backend.settings, {"FANFARE_MASTER_KEY": wrong})
    refusal = (
        f"fanfare-grpc: master key {wrong_id} does not open data wrapped by {right_id}: {REMEDY}"
    )
    assert await _refusals(bad) == [(1, [refusal])] * 3
    # `migrate` with the wrong key says so too (the schema itself was up to date).
    code, _, stderr = await run_cli("migrate", env=bad)
    assert (code, _plain_lines(stderr)) == (1, [refusal])
    # No organization was wrapped under the wrong key.
    assert await _data_keys_by_master(good) == {right_id: 1}


async def test_postgres_without_a_master_key_is_refused_and_none_is_generated(
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
    # The schema needs no master key; the canary then waits for the first server.
    code, _, stderr = await run_cli("migrate", env=env)
    assert code == 0, stderr
    refusal = f"fanfare-grpc: {DEV_KEY_REFUSED}"
    assert await _refusals(env) == [(1, [refusal])] * 3
    for command in (("master-key", "rotate"), ("master-key", "status")):
        code, _, stderr = await run_cli(*command, env=env)
        assert (code, stderr.splitlines()) == (1, [refusal])
    assert not (tmp_path / DEV_KEY_FILE).exists()

    # With its key, the first command that wraps writes the canary under it.
    key, key_id = _new_master_key()
    keyed = {**env, "FANFARE_MASTER_KEY": key}
    assert (await run_cli("orgs", "create", "--name", "Acme", env=keyed))[0] == 0
    other, other_id = _new_master_key()
    code, _, stderr = await run_cli(
        "orgs", "create", "--name", "Stray", env={**env, "FANFARE_MASTER_KEY": other}
    )
    assert code == 1
    assert _plain_lines(stderr) == [
        f"fanfare-grpc: master key {other_id} does not open data wrapped by {key_id}: {REMEDY}"
    ]


async def test_rotation_reseals_the_canary_so_the_old_key_can_be_retired(
    backend: BackendSettings,
) -> None:
    (old, old_id), (new, new_id) = _new_master_key(), _new_master_key()
    before = _cli_env(backend.settings, {"FANFARE_MASTER_KEY": old})
    assert (await run_cli("migrate", env=before))[0] == 0
    assert (await run_cli("orgs", "create", "--name", "Acme", env=before))[0] == 0

    during = _cli_env(backend.settings, {"FANFARE_MASTER_KEY": new, "FANFARE_MASTER_KEYS_OLD": old})
    code, stdout, stderr = await run_cli("master-key", "status", "--json", env=during)
    assert code == 0, stderr
    canary_under = {v["master_key_id"]: v["canary"] for v in json.loads(stdout)["versions"]}
    assert canary_under == {new_id: False, old_id: True}
    code, _, stderr = await run_cli("master-key", "rotate", env=during)
    assert code == 0, stderr
    code, stdout, stderr = await run_cli("master-key", "status", "--json", env=during)
    assert code == 0, stderr
    versions = {v["master_key_id"]: v for v in json.loads(stdout)["versions"]}
    assert versions[new_id]["canary"] and not versions[old_id]["canary"]
    assert versions[old_id]["safe_to_retire"]

    after = _cli_env(backend.settings, {"FANFARE_MASTER_KEY": new})
    code, _, stderr = await run_cli("orgs", "create", "--name", "After", env=after)
    assert code == 0, stderr
    # ... and the retired key alone no longer opens the canary.
    code, _, stderr = await run_cli(
        "orgs",
        "create",
        "--name",
        "Old",
        env=_cli_env(backend.settings, {"FANFARE_MASTER_KEY": old}),
    )
    assert code == 1 and f"does not open data wrapped by {new_id}" in stderr


async def test_dev_rotation_reseals_the_canary_in_the_data_dir(tmp_path: Path) -> None:
    env = process_env(tmp_path)
    assert (await run_cli("migrate", env=env))[0] == 0
    code, _, stderr = await run_cli("master-key", "rotate", env=env)
    assert code == 0, stderr
    # Retire the first version by hand: only the canary could still need it.
    key_file = tmp_path / DEV_KEY_FILE
    key_file.write_text(key_file.read_text().split()[-1] + "\n")
    code, _, stderr = await run_cli("orgs", "create", "--name", "Acme", env=env)
    assert code == 0, stderr


class _NoDataKeys:
    async def get_data_key(self, organization_id: str, version: int) -> None:
        return None


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_data_key_that_does_not_open_at_run_time_turns_health_not_serving(
    backend: BackendSettings,
) -> None:
    async with serving_consumer_world(backend.settings, run_worker=False) as world:
        application = world.server.application
        organization_id = world.acme.organization.organization.organization_id
        await world.guest()  # the data key opens: SERVING
        assert await world.server.monitor.probe_once()

        # A stray master key wrapped this organization's data key (another replica).
        stray = MasterKeyRing(MasterKey.from_material(new_key_material()))
        owner = Database.from_url(backend.settings.effective_owner_database_url, as_owner=True)
        try:
            rewrapper = DataKeyRewrapper(owner)
            (stored,) = [
                key
                for key in await rewrapper.wrapped_keys_not_under("none")
                if key.organization_id == organization_id
            ]
            material = application.envelope.unwrap(stored)
            tampered = Envelope(stray, _NoDataKeys()).wrap(organization_id, 1, material)
            assert await rewrapper.replace(stored, tampered)
        finally:
            await owner.dispose()
        application.envelope.forget(organization_id)  # as a server that never opened it

        with service_log_handler(_Records(), logging.INFO) as records:
            for device in ("device-1", "device-2"):
                error = await expect_status(world.guest(device=device), grpc.StatusCode.UNAVAILABLE)
                assert stray.current.key_id not in (error.details() or "")
            assert not await world.server.monitor.probe_once()
        health = health_pb2_grpc.HealthStub(world.channel)
        checked = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING
        current = application.envelope.ring.current.key_id
        expected = f"master key {current} does not open data wrapped by {stray.current.key_id}"
        alarms = [r for r in records.records if "does not open data wrapped by" in r.getMessage()]
        assert [(r.levelno, r.getMessage()) for r in alarms] == [
            (logging.ERROR, f"{expected}: NOT_SERVING")
        ]
        assert not [r for r in records.records if r.getMessage() == "unexpected error"]

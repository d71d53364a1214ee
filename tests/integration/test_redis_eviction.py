"""``serve`` and ``worker`` refuse a Redis that may evict keys (one line, exit 1),
unless ``FANFARE_REDIS_ALLOW_EVICTION`` says the operator knows why. Each test runs a
redis-server of its own: the shared one is never reconfigured."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import redis.asyncio
from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.queue.v1 import queue_service_pb2_grpc
from grpc import aio

from tests.backends import throwaway_postgres_database
from tests.conftest import embedded_settings, new_organization, start_migrated_server
from tests.grpc_helpers import bearer, expect_status
from tests.private_redis import private_redis
from tests.processes import ServerProcess, process_env, run_cli


def _location(url: str) -> str:
    return f"{urlsplit(url).netloc}/0"


async def test_serve_and_worker_refuse_a_redis_that_evicts(tmp_path: Path) -> None:
    async with private_redis(["--maxmemory-policy", "allkeys-lru"]) as url:
        env = process_env(tmp_path, {"FANFARE_REDIS_URL": url})
        assert (await run_cli("migrate", env=env))[0] == 0
        for command in ("serve", "worker"):
            code, _, stderr = await run_cli(command, env=env)
            assert code == 1
            assert stderr.splitlines() == [
                (
                    f"fanfare-grpc: Redis at {_location(url)} may evict keys (maxmemory-policy "
                    "allkeys-lru): set maxmemory-policy noeviction there, or "
                    "FANFARE_REDIS_ALLOW_EVICTION=true to start anyway"
                )
            ]


async def test_the_policy_is_read_from_info_when_config_is_disabled(tmp_path: Path) -> None:
    # Managed Redis services often rename or disable CONFIG; INFO still tells.
    arguments = ["--maxmemory-policy", "volatile-ttl", "--rename-command", "CONFIG", ""]
    async with private_redis(arguments) as url:
        env = process_env(tmp_path, {"FANFARE_REDIS_URL": url})
        assert (await run_cli("migrate", env=env))[0] == 0
        code, _, stderr = await run_cli("serve", env=env)
        assert code == 1
        [line] = stderr.splitlines()
        assert "may evict keys (maxmemory-policy volatile-ttl)" in line


async def test_a_policy_nobody_can_read_is_refused_too(tmp_path: Path) -> None:
    # Fail closed: the operator checks the policy and sets the override.
    arguments = ["--rename-command", "CONFIG", "", "--rename-command", "INFO", ""]
    async with private_redis(arguments) as url:
        env = process_env(tmp_path, {"FANFARE_REDIS_URL": url})
        assert (await run_cli("migrate", env=env))[0] == 0
        code, _, stderr = await run_cli("serve", env=env)
        assert code == 1
        assert stderr.splitlines() == [
            (
                f"fanfare-grpc: cannot read the maxmemory-policy of Redis at {_location(url)} "
                "(CONFIG GET and INFO refused): make sure it is noeviction, then set "
                "FANFARE_REDIS_ALLOW_EVICTION=true"
            )
        ]


async def test_with_the_override_it_starts_and_says_so(tmp_path: Path) -> None:
    async with private_redis(["--maxmemory-policy", "allkeys-lru"]) as url:
        env = process_env(
            tmp_path, {"FANFARE_REDIS_URL": url, "FANFARE_REDIS_ALLOW_EVICTION": "true"}
        )
        assert (await run_cli("migrate", env=env))[0] == 0
        server = await ServerProcess.start(["fanfare_grpc", "serve", "--no-worker"], env)
        try:
            await server.wait_listening()
            server.process.send_signal(signal.SIGINT)
            assert await server.wait_exit() == 0
        finally:
            await server.kill()
        warnings = [
            entry
            for entry in server.messages()
            if str(entry.get("message", "")).startswith("Redis may evict keys")
        ]
        assert len(warnings) == 1
        assert warnings[0]["maxmemory_policy"] == "allkeys-lru"


async def test_a_noeviction_redis_starts_without_the_override(tmp_path: Path) -> None:
    async with private_redis(["--maxmemory-policy", "noeviction"]) as url:
        env = process_env(tmp_path, {"FANFARE_REDIS_URL": url})
        assert (await run_cli("migrate", env=env))[0] == 0
        server = await ServerProcess.start(["fanfare_grpc", "serve", "--no-worker"], env)
        try:
            await server.wait_listening()
            server.process.send_signal(signal.SIGINT)
            assert await server.wait_exit() == 0
        finally:
            await server.kill()
        assert not any("may evict" in str(entry.get("message")) for entry in server.messages())


async def test_a_full_redis_answers_unavailable_not_internal(tmp_path: Path) -> None:
    """With ``noeviction`` (required above) a full Redis refuses writes with OOM: a call
    that needs a write there is UNAVAILABLE (retry later), not INTERNAL."""
    async with private_redis(["--maxmemory-policy", "noeviction"]) as url:
        with throwaway_postgres_database() as database_url:
            settings = dataclasses.replace(
                embedded_settings(tmp_path / "data"),
                database_url=database_url,
                redis_url=url,
                redis_key_prefix="full",
            )
            server = await start_migrated_server(settings, run_worker=False)
            try:
                organization = await new_organization(server)
                admin = bearer(organization.test_admin_key.plaintext)
                async with aio.insecure_channel(server.address) as channel:
                    stub = queue_service_pb2_grpc.QueueServiceStub(channel)
                    created = await stub.CreateQueue(
                        queues.CreateQueueRequest(name="drop", admission_rate_per_minute=60),
                        metadata=admin,
                    )
                    full = redis.asyncio.Redis.from_url(url)
                    try:
                        await full.config_set("maxmemory", "1")
                    finally:
                        await full.aclose()
                    # Its idempotency record cannot be written.
                    await expect_status(
                        stub.PauseQueue(
                            queues.PauseQueueRequest(queue_id=created.queue.queue_id),
                            metadata=(*admin, ("idempotency-key", "pause-1")),
                        ),
                        grpc.StatusCode.UNAVAILABLE,
                    )
            finally:
                await server.shutdown(grace_seconds=1.0)

"""A redis-server of the test's own (the shared one on 6379 is never reconfigured):
on a free loopback port, nothing persisted, stopped afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio


def _free_port() -> int:
    """A loopback port nothing listens on (redis-server cannot pick one itself)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def private_redis(arguments: Sequence[str] = ()) -> AsyncIterator[str]:
    """Start ``redis-server`` with ``arguments`` (e.g. ``--maxmemory-policy
    allkeys-lru``); yield its URL once it answers; stop it."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is required on PATH for this test", pytrace=False)
    for _ in range(5):  # the free port may be taken between probing and binding
        port = _free_port()
        process = await asyncio.create_subprocess_exec(
            executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            *arguments,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            if await _answers(url, process):
                yield url
                return
        finally:
            if process.returncode is None:
                process.terminate()
                await process.wait()
    pytest.fail("could not start a private redis-server", pytrace=False)


async def _answers(url: str, process: asyncio.subprocess.Process) -> bool:
    client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        for _ in range(100):
            if process.returncode is not None:
                return False
            with contextlib.suppress(redis.exceptions.ConnectionError):
                if await client.ping():
                    return True
            await asyncio.sleep(0.05)
        return False
    finally:
        await client.aclose()

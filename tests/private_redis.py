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


class RestartableRedis:
    """A private redis-server that a test can restart on the same port, empty (no
    persistence), as a crash or an operator's restart would leave it."""

    def __init__(self, executable: str, port: int, arguments: Sequence[str]) -> None:
        self._executable = executable
        self._port = port
        self._arguments = tuple(arguments)
        self._process: asyncio.subprocess.Process | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    async def start(self) -> bool:
        """Start it; True once it answers (False if the port was taken meanwhile)."""
        self._process = await asyncio.create_subprocess_exec(
            self._executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self._port),
            "--save",
            "",
            "--appendonly",
            "no",
            *self._arguments,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await _answers(self.url, self._process)

    async def stop(self) -> None:
        """Kill it (SIGKILL: nothing is saved, every connection drops)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    async def restart(self) -> None:
        """Kill it and start it again on the same port, with no data."""
        await self.stop()
        for _ in range(50):  # the old listening socket may take a moment to go
            if await self.start():
                return
            await asyncio.sleep(0.1)
        pytest.fail("could not restart the private redis-server", pytrace=False)


@contextlib.asynccontextmanager
async def restartable_private_redis(
    arguments: Sequence[str] = (),
) -> AsyncIterator[RestartableRedis]:
    """A ``RestartableRedis`` on a free loopback port; stopped afterwards."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is required on PATH for this test", pytrace=False)
    for _ in range(5):  # the free port may be taken between probing and binding
        server = RestartableRedis(executable, _free_port(), arguments)
        try:
            if await server.start():
                yield server
                return
        finally:
            await server.stop()
    pytest.fail("could not start a private redis-server", pytrace=False)

"""Graceful shutdown of a real server process on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest
from grpc import aio

from tests.fault_service import method
from tests.processes import ServerProcess, process_env, run_cli


async def _start_fault_server(data_dir: Path, grace_seconds: str) -> ServerProcess:
    """A migrated ``serve`` process (with the fault service) and its shutdown grace."""
    env = process_env(data_dir, {"FANFARE_SHUTDOWN_GRACE_SECONDS": grace_seconds})
    code, _, stderr = await run_cli("migrate", env=env)
    assert code == 0, stderr
    return await ServerProcess.start(["tests.serve_with_faults"], env)


async def test_call_in_flight_at_sigterm_completes(tmp_path: Path) -> None:
    server = await _start_fault_server(tmp_path, grace_seconds="10")
    try:
        address = await server.wait_listening()
        async with aio.insecure_channel(address) as channel:
            in_flight = asyncio.ensure_future(channel.unary_unary(method("Sleep"))(b"1.5"))
            await asyncio.sleep(0.5)
            assert not in_flight.done()
            server.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(in_flight, timeout=10) == b"slept 1.5"

        async with aio.insecure_channel(address) as late_channel:
            # Once draining, the server takes no new calls.
            with pytest.raises(aio.AioRpcError) as refused:
                await late_channel.unary_unary(method("Sleep"))(b"0", timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await server.wait_exit() == 0
    finally:
        await server.kill()
    messages = [entry.get("message") for entry in server.messages()]
    assert "draining" in messages and "stopped" in messages


async def test_calls_still_running_after_the_grace_period_are_cancelled(tmp_path: Path) -> None:
    server = await _start_fault_server(tmp_path, grace_seconds="0.5")
    try:
        address = await server.wait_listening()
        async with aio.insecure_channel(address) as channel:
            in_flight = asyncio.ensure_future(channel.unary_unary(method("Sleep"))(b"30"))
            await asyncio.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(aio.AioRpcError):
                await asyncio.wait_for(in_flight, timeout=10)
        assert await server.wait_exit(timeout=10) == 0
    finally:
        await server.kill()

"""The one log line per call names how it ended, also when the client ended it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from fanfare_grpc.server import RunningServer
from tests.conftest import embedded_settings, start_migrated_server
from tests.fault_service import FAULT_PERMISSIONS, fault_handler, method
from tests.log_capture import service_log_handler

SLEEP = method("Sleep")


class Outcomes(logging.Handler):
    """The ``code`` of every ``rpc finished`` line, by method."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.codes: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "rpc finished":
            self.codes.setdefault(getattr(record, "method"), []).append(getattr(record, "code"))  # noqa: B009

    async def of(self, name: str, timeout: float = 5.0) -> list[str]:
        async with asyncio.timeout(timeout):
            while name not in self.codes:
                await asyncio.sleep(0.01)
        return self.codes[name]


@pytest.fixture
def outcomes() -> Iterator[Outcomes]:
    with service_log_handler(Outcomes(), logging.INFO) as handler:
        yield handler


@pytest.fixture
async def fault_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    server = await start_migrated_server(
        embedded_settings(tmp_path), extra_handlers=[fault_handler()], permissions=FAULT_PERMISSIONS
    )
    try:
        yield server
    finally:
        await server.shutdown(grace_seconds=1.0)


async def test_a_unary_call_the_client_cancels_is_logged_cancelled(
    fault_server: RunningServer, outcomes: Outcomes
) -> None:
    async with aio.insecure_channel(fault_server.address) as channel:
        call = channel.unary_unary(SLEEP)(b"30")
        await asyncio.sleep(0.3)  # the server is sleeping in the handler
        call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED
    assert await outcomes.of(SLEEP) == ["CANCELLED"]


async def test_a_unary_call_past_its_deadline_is_logged_deadline_exceeded(
    fault_server: RunningServer, outcomes: Outcomes
) -> None:
    async with aio.insecure_channel(fault_server.address) as channel:
        call = channel.unary_unary(SLEEP)(b"30", timeout=0.5)
        assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await outcomes.of(SLEEP) == ["DEADLINE_EXCEEDED"]


async def test_a_completed_call_is_logged_ok(
    fault_server: RunningServer, outcomes: Outcomes
) -> None:
    async with aio.insecure_channel(fault_server.address) as channel:
        assert await channel.unary_unary(SLEEP)(b"0") == b"slept 0"
    assert await outcomes.of(SLEEP) == ["OK"]

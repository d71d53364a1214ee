"""Domain errors reach clients as status codes with google.rpc details; nothing leaks."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from fanfare_grpc.logs import JsonFormatter
from fanfare_grpc.server import RunningServer
from tests.conftest import embedded_settings, start_migrated_server
from tests.fault_service import FAULT_PERMISSIONS, LEAKY_TEXT, fault_handler, method
from tests.grpc_helpers import metadata_dict
from tests.log_capture import service_log_handler


@pytest.fixture
async def fault_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    server = await start_migrated_server(
        embedded_settings(tmp_path), extra_handlers=[fault_handler()], permissions=FAULT_PERMISSIONS
    )
    try:
        yield server
    finally:
        await server.shutdown(grace_seconds=1.0)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    with service_log_handler(handler):
        yield stream


async def _fail(address: str, name: str) -> aio.AioRpcError:
    async with aio.insecure_channel(address) as channel:
        with pytest.raises(aio.AioRpcError) as failure:
            await channel.unary_unary(method(name))(b"")
    return failure.value


async def test_not_found_maps_to_not_found(fault_server: RunningServer) -> None:
    error = await _fail(fault_server.address, "NotFound")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "queue not found"
    assert metadata_dict(error.trailing_metadata())["x-request-id"].startswith("req_")


async def test_invalid_argument_carries_bad_request_details(fault_server: RunningServer) -> None:
    error = await _fail(fault_server.address, "BadField")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("queue.name", "must be 1 to 200 characters"),
        ("queue.max_size", "must be at least 0"),
    ]


async def test_resource_exhausted_carries_retry_after(fault_server: RunningServer) -> None:
    error = await _fail(fault_server.address, "Exhausted")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert metadata_dict(error.trailing_metadata())["retry-after"] == "7"
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    retry_info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry_info)
    assert retry_info.retry_delay.seconds == 7


async def test_unexpected_exception_is_internal_without_detail(
    fault_server: RunningServer, captured_logs: io.StringIO
) -> None:
    error = await _fail(fault_server.address, "Crash")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    assert "hunter2" not in repr(error.trailing_metadata())
    assert error.debug_error_string() is None or "hunter2" not in error.debug_error_string()
    request_id = metadata_dict(error.trailing_metadata())["x-request-id"]
    # The server log keeps the traceback for operators, tied to the request id.
    logged = captured_logs.getvalue()
    assert LEAKY_TEXT in logged and request_id in logged


async def test_unexpected_exception_mid_stream_is_internal(fault_server: RunningServer) -> None:
    async with aio.insecure_channel(fault_server.address) as channel:
        call = channel.unary_stream(method("CrashMidStream"))(b"")
        received = []
        with pytest.raises(aio.AioRpcError) as failure:
            async for message in call:
                received.append(message)
    assert received == [b"first"]
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    assert failure.value.details() == "internal error"


async def test_each_call_logs_one_line_with_its_outcome(
    fault_server: RunningServer, captured_logs: io.StringIO
) -> None:
    await _fail(fault_server.address, "NotFound")
    lines = [line for line in captured_logs.getvalue().splitlines() if "rpc finished" in line]
    assert len(lines) == 1
    assert '"code": "NOT_FOUND"' in lines[0]
    assert '"method": "/fanfare.testing.v1.FaultService/NotFound"' in lines[0]

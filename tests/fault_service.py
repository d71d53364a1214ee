"""A tiny raw-bytes gRPC service for tests: raises chosen errors or sleeps.

Registered through ``start_server(extra_handlers=...)``, so its calls pass through
the real interceptor chain like any product RPC.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from fanfare_grpc import errors
from fanfare_grpc.permissions import PERMISSIONS, PUBLIC

SERVICE = "fanfare.testing.v1.FaultService"
LEAKY_TEXT = "password=hunter2 SELECT secret FROM api_keys"


async def _not_found(request: bytes, context: Any) -> bytes:
    raise errors.NotFound("queue not found")


async def _bad_field(request: bytes, context: Any) -> bytes:
    raise errors.InvalidArgument(
        "invalid request",
        (
            errors.FieldViolation("queue.name", "must be 1 to 200 characters"),
            errors.FieldViolation("queue.max_size", "must be at least 0"),
        ),
    )


async def _exhausted(request: bytes, context: Any) -> bytes:
    raise errors.ResourceExhausted("too many requests", retry_after_seconds=7)


async def _crash(request: bytes, context: Any) -> bytes:
    raise RuntimeError(LEAKY_TEXT)


async def _sleep(request: bytes, context: Any) -> bytes:
    """Sleeps for the number of seconds given as the ASCII request body."""
    await asyncio.sleep(float(request.decode() or "0"))
    return b"slept " + request


async def _crash_mid_stream(request: bytes, context: Any) -> Any:
    yield b"first"
    raise RuntimeError(LEAKY_TEXT)


def fault_handler() -> grpc.GenericRpcHandler:
    """The generic handler to pass as an extra handler."""
    unary = {
        "NotFound": _not_found,
        "BadField": _bad_field,
        "Exhausted": _exhausted,
        "Crash": _crash,
        "Sleep": _sleep,
    }
    handlers: dict[str, grpc.RpcMethodHandler] = {
        name: grpc.unary_unary_rpc_method_handler(behaviour) for name, behaviour in unary.items()
    }
    handlers["CrashMidStream"] = grpc.unary_stream_rpc_method_handler(_crash_mid_stream)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


FAULT_PERMISSIONS = {
    **PERMISSIONS,
    **{
        f"/{SERVICE}/{name}": PUBLIC
        for name in ("NotFound", "BadField", "Exhausted", "Crash", "Sleep", "CrashMidStream")
    },
}


def method(name: str) -> str:
    """Full method name of one of the fault RPCs."""
    return f"/{SERVICE}/{name}"

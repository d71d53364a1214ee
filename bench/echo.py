"""A raw-bytes echo RPC hosted by both the SUT and the bare baseline.

On the SUT it sits behind the full interceptor chain and needs a secret key (any
role), so ``authenticated_echo`` vs ``bare_echo`` is exactly the price of Fanfare's
layers (authentication included) around a call that does no work of its own.
"""

from __future__ import annotations

from typing import Any

import grpc

SERVICE = "fanfare.bench.v1.EchoService"
ECHO_METHOD = f"/{SERVICE}/Echo"


async def _echo(request: bytes, context: Any) -> bytes:
    return request


def echo_handler() -> grpc.GenericRpcHandler:
    """Generic handler serving ``ECHO_METHOD`` (bytes in, same bytes out)."""
    return grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )

"""Raw-bytes echo RPCs hosted by both the SUT and the bare baseline.

On the SUT they sit behind the full interceptor chain: ``Echo`` needs a secret key
(any role), ``ConsumerEcho`` a publishable key plus a consumer access token (see
``bench.sut_server``). So ``authenticated_call`` and ``consumer_echo`` vs
``bare_echo`` are exactly the price of Fanfare's layers (authentication included)
around a call that does no work of its own.
"""

from __future__ import annotations

from typing import Any

import grpc

SERVICE = "fanfare.bench.v1.EchoService"
ECHO_METHOD = f"/{SERVICE}/Echo"
CONSUMER_ECHO_METHOD = f"/{SERVICE}/ConsumerEcho"


async def _echo(request: bytes, context: Any) -> bytes:
    return request


def echo_handler() -> grpc.GenericRpcHandler:
    """Generic handler serving both echo methods (bytes in, same bytes out)."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "ConsumerEcho": grpc.unary_unary_rpc_method_handler(_echo),
        },
    )

"""Outermost layer of streaming RPCs: we write the responses, so we close the stream.

grpc.aio drives an async-generator handler itself and, when the call ends while a
response is being written (client cancelled or disconnected, deadline, server
stopping), drops the generator without closing it. Its ``finally`` blocks then run
much later, from a garbage-collector finalizer in another task and context: the
stream's watcher, poller and slot stay held meanwhile, and the request context
cannot be reset. Serving streams through ``context.write`` from a coroutine instead
lets this layer close the whole chain of generators in the call's own task whenever
the call ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from fanfare_grpc.interceptors.wrapping import iterate_stream


class StreamWriterInterceptor(aio.ServerInterceptor):
    """Turns every response-streaming handler into a coroutine that writes and closes."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler.response_streaming:
            return handler
        inner: Callable[..., Any] = handler.unary_stream or handler.stream_stream  # type: ignore[assignment]

        async def write_responses(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
            async with contextlib.aclosing(iterate_stream(inner, request, context)) as responses:
                async for response in responses:
                    await context.write(response)

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream is not None
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(
            write_responses,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

"""Base class for interceptors that wrap an RPC's behaviour, not just its lookup.

``grpc.aio.ServerInterceptor.intercept_service`` only sees the method name and the
request metadata. Layers that need the request, the servicer context (peer,
``auth_context()``, status) or the outcome wrap the method handler's behaviour, as
grpc-interceptor does; unary and streaming variants are handled here once.

Each streaming layer is an async generator iterating the next one. A layer closes the
generator it iterates (``contextlib.aclosing``) when it ends for any reason, so a
stream that ends early (client gone, deadline, error) unwinds every layer down to the
servicer in the call's own task, not later in a garbage-collector finalizer.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

UnaryBehaviour = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]
Deserializer = Callable[[bytes], Any]
StreamBehaviour = Callable[[Any, aio.ServicerContext[Any, Any]], AsyncGenerator[Any, None]]


async def call_unary(behaviour: Callable[..., Any], request: Any, context: Any) -> Any:
    """Run a unary-response behaviour that may be sync (generated base classes) or async."""
    result = behaviour(request, context)
    if inspect.isawaitable(result):
        result = await result
    return result


async def iterate_stream(
    behaviour: Callable[..., Any], request: Any, context: Any
) -> AsyncGenerator[Any, None]:
    """Yield from a stream-response behaviour that may be sync or async."""
    result = behaviour(request, context)
    if inspect.isawaitable(result):
        result = await result
    if result is None:
        return
    if hasattr(result, "aclose"):
        async with contextlib.aclosing(result) as responses:
            async for response in responses:
                yield response
    elif hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    else:
        for response in result:
            yield response


class BehaviourInterceptor(aio.ServerInterceptor):
    """Wraps every RPC's behaviour with ``around_unary`` / ``around_stream``.

    Layers that only check or prepare something before the call override
    ``before_call``; layers that act around the call override the two ``around_*``
    hooks. ``method`` is the full method name
    (``/fanfare.queue.v1.QueueService/EnterQueue``).
    """

    async def before_call(
        self, request: Any, context: aio.ServicerContext[Any, Any], method: str
    ) -> None:
        """Runs before the next layer of every call (raise to reject it)."""

    async def around_unary(
        self,
        behaviour: UnaryBehaviour,
        request: Any,
        context: aio.ServicerContext[Any, Any],
        method: str,
    ) -> Any:
        """Run the next layer of a unary-response call; override to act around it."""
        await self.before_call(request, context, method)
        return await behaviour(request, context)

    async def around_stream(
        self,
        behaviour: StreamBehaviour,
        request: Any,
        context: aio.ServicerContext[Any, Any],
        method: str,
    ) -> AsyncGenerator[Any, None]:
        """Run the next layer of a stream-response call; override to act around it."""
        await self.before_call(request, context, method)
        async with contextlib.aclosing(behaviour(request, context)) as responses:
            async for response in responses:
                yield response

    def unary_request_deserializer(self, deserializer: Deserializer) -> Deserializer:
        """How the body of a unary request is read; override to wrap it (grpcio runs
        it before any interceptor's behaviour, so errors there never reach one)."""
        return deserializer

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        deserializer = handler.request_deserializer
        if deserializer is not None and not handler.request_streaming:
            deserializer = self.unary_request_deserializer(deserializer)
        if handler.unary_unary is not None or handler.stream_unary is not None:
            inner: Callable[..., Any] = handler.unary_unary or handler.stream_unary  # type: ignore[assignment]

            async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                async def next_layer(req: Any, ctx: aio.ServicerContext[Any, Any]) -> Any:
                    return await call_unary(inner, req, ctx)

                return await self.around_unary(next_layer, request, context, method)

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary is not None
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(
                unary,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )

        inner_stream: Callable[..., Any] = handler.unary_stream or handler.stream_stream  # type: ignore[assignment]

        async def stream(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncGenerator[Any, None]:
            def next_layer(
                req: Any, ctx: aio.ServicerContext[Any, Any]
            ) -> AsyncGenerator[Any, None]:
                return iterate_stream(inner_stream, req, ctx)

            layers = self.around_stream(next_layer, request, context, method)
            async with contextlib.aclosing(layers) as responses:
                async for response in responses:
                    yield response

        stream_factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream is not None
            else grpc.stream_stream_rpc_method_handler
        )
        return stream_factory(
            stream,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )

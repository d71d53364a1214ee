"""A cap on open streams of the methods anyone may call without a credential.

``Health/Watch`` and server reflection stay open as long as the client likes and
cost this process memory each, yet need no key: without a cap one host could hold
thousands. Counted per process and per client (IPv4 address or IPv6 /64, by keyed
digest), like the ``WatchPosition`` caps; load balancers need one or two each.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from grpc import aio

from fanfare_grpc import errors
from fanfare_grpc.interceptors.authentication import peer_host
from fanfare_grpc.interceptors.wrapping import BehaviourInterceptor, StreamBehaviour
from fanfare_grpc.permissions import MethodPolicy

RETRY_AFTER_SECONDS = 5


class PublicStreamCapInterceptor(BehaviourInterceptor):
    """Refuses a credential-free stream past ``per_client`` open ones from its client."""

    def __init__(
        self,
        permissions: Mapping[str, MethodPolicy],
        per_client: int,
        client_digest: Callable[[str], str],
    ) -> None:
        self._permissions = permissions
        self._per_client = per_client
        self._client_digest = client_digest
        self._open: collections.Counter[str] = collections.Counter()

    @property
    def open_streams(self) -> int:
        """Credential-free streams open in this process."""
        return self._open.total()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        policy = self._permissions.get(handler_call_details.method)
        if policy is None or not policy.public:
            # Every other call passes untouched: no layer of its own on the hot path.
            return await continuation(handler_call_details)
        return await super().intercept_service(continuation, handler_call_details)

    async def around_stream(
        self,
        behaviour: StreamBehaviour,
        request: Any,
        context: aio.ServicerContext[Any, Any],
        method: str,
    ) -> AsyncGenerator[Any, None]:
        client = self._client_digest(peer_host(context.peer() or ""))
        if self._open[client] >= self._per_client:
            raise errors.ResourceExhausted(
                f"too many open streams from this client address (at most "
                f"{self._per_client} of health watches and reflection); close one first",
                retry_after_seconds=RETRY_AFTER_SECONDS,
            )
        self._open[client] += 1
        try:
            async for response in super().around_stream(behaviour, request, context, method):
                yield response
        finally:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

"""Last layer before the work: send the initial metadata the outer layers collected.

Initial metadata can be sent once per call, and several layers contribute to it
(``x-request-id`` now, ``x-ratelimit-*`` later), so each layer queues its entries in
the call state and this layer sends them before the servicer (or a replay) runs. A call
rejected earlier carries the same entries in its trailers instead.
"""

from __future__ import annotations

from typing import Any

from grpc import aio

from fanfare_grpc.interceptors.call_state import current_call_state
from fanfare_grpc.interceptors.wrapping import (
    BehaviourInterceptor,
)


class ResponseHeadersInterceptor(BehaviourInterceptor):
    """Flushes ``CallState.response_headers`` as initial metadata."""

    async def before_call(
        self, request: Any, context: aio.ServicerContext[Any, Any], method: str
    ) -> None:
        state = current_call_state()
        if not state.headers_sent:
            state.headers_sent = True
            await context.send_initial_metadata(tuple(state.response_headers))

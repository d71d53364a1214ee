"""Outermost layer: request id, timing, one log line per call, error mapping.

It sits outside authentication so that failures of every inner layer are mapped
(and, later, audited) the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from fanfare_grpc import errors
from fanfare_grpc.backends import is_backend_unavailable
from fanfare_grpc.interceptors.call_state import (
    REQUEST_ID_HEADER,
    CallState,
    bind_call_state,
    reset_call_state,
)
from fanfare_grpc.interceptors.error_mapping import (
    MappedStatus,
    status_for_domain_error,
    status_for_unexpected,
    status_for_unimplemented,
)
from fanfare_grpc.interceptors.wrapping import (
    BehaviourInterceptor,
    StreamBehaviour,
    UnaryBehaviour,
)
from fanfare_grpc.logs import BUDGETED

_QUIET_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
UNAVAILABLE_MESSAGE = "service temporarily unavailable, retry later"
# A gRPC outcome already (an inner abort) or the client went away: nothing to map.
_ALREADY_AN_OUTCOME = (aio.AbortError, asyncio.CancelledError, GeneratorExit)


class RequestContextInterceptor(BehaviourInterceptor):
    """Creates the call state, maps errors and logs the outcome of every call."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    async def around_unary(
        self,
        behaviour: UnaryBehaviour,
        request: Any,
        context: aio.ServicerContext[Any, Any],
        method: str,
    ) -> Any:
        async with self._call_scope(method, context):
            return await behaviour(request, context)

    async def around_stream(
        self,
        behaviour: StreamBehaviour,
        request: Any,
        context: aio.ServicerContext[Any, Any],
        method: str,
    ) -> AsyncIterator[Any]:
        async with self._call_scope(method, context):
            async for response in behaviour(request, context):
                yield response

    @contextlib.asynccontextmanager
    async def _call_scope(
        self, method: str, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[CallState]:
        """Binds a fresh call state; maps what escapes; logs the outcome."""
        state = CallState(method=method)
        state.add_response_header(REQUEST_ID_HEADER, state.request_id)
        token = bind_call_state(state)
        try:
            yield state
        except _ALREADY_AN_OUTCOME:
            raise
        except Exception as error:
            await self._abort_with(self._map(error, state), context, state)
            raise  # unreachable: abort raises
        finally:
            self._log_outcome(state, context)
            reset_call_state(token)

    @staticmethod
    async def _abort_with(
        mapped: MappedStatus, context: aio.ServicerContext[Any, Any], state: CallState
    ) -> None:
        await context.abort(
            mapped.code,
            mapped.message,
            trailing_metadata=((REQUEST_ID_HEADER, state.request_id), *mapped.trailing_metadata),
        )

    def _map(self, error: Exception, state: CallState) -> MappedStatus:
        if isinstance(error, errors.FanfareError):
            return status_for_domain_error(error)
        if isinstance(error, NotImplementedError):
            return status_for_unimplemented()
        if is_backend_unavailable(error):
            self._logger.warning(
                "backend unavailable",
                extra={
                    "method": state.method,
                    "request_id": state.request_id,
                    "error": type(error).__name__,
                },
            )
            return status_for_domain_error(errors.Unavailable(UNAVAILABLE_MESSAGE))
        self._logger.error(
            "unexpected error",
            exc_info=error,
            extra={"method": state.method, "request_id": state.request_id},
        )
        return status_for_unexpected()

    def _log_outcome(self, state: CallState, context: aio.ServicerContext[Any, Any]) -> None:
        code = context.code() or grpc.StatusCode.OK
        if isinstance(code, int):
            code = _code_from_int(code)
        level = logging.DEBUG if state.method.startswith(_QUIET_METHOD_PREFIXES) else logging.INFO
        self._logger.log(
            level,
            "rpc finished",
            extra={
                "method": state.method,
                "code": code.name,
                "duration_ms": round((time.perf_counter() - state.started_at) * 1000, 3),
                "request_id": state.request_id,
                # Nobody vouches for a call without a principal: its line is budgeted.
                BUDGETED: state.principal is None,
            },
        )


def _code_from_int(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN

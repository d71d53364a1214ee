"""Outermost layer: request id, timing, one log line per call, error mapping.

It sits outside authentication so that failures of every inner layer are mapped
(and, later, audited) the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
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
from fanfare_grpc.outages import DependencyOutages

_QUIET_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
UNAVAILABLE_MESSAGE = "service temporarily unavailable, retry later"
# grpc cancels the call's task when the client cancels, disconnects or its deadline
# passes (and at shutdown); a stream is closed (GeneratorExit) when a write fails
# for the same reasons.
_ENDED_BY_THE_CALL = (asyncio.CancelledError, GeneratorExit)
# The client's own timer usually ends a call a moment before the server's copy of
# the deadline (which started when the request arrived) runs out.
_DEADLINE_MARGIN_SECONDS = 0.1


class RequestContextInterceptor(BehaviourInterceptor):
    """Creates the call state, maps errors and logs the outcome of every call."""

    def __init__(self, logger: logging.Logger, outages: DependencyOutages | None = None) -> None:
        self._logger = logger
        self._outages = outages

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
    ) -> AsyncGenerator[Any, None]:
        async with (
            self._call_scope(method, context),
            contextlib.aclosing(behaviour(request, context)) as responses,
        ):
            async for response in responses:
                yield response

    @contextlib.asynccontextmanager
    async def _call_scope(
        self, method: str, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[CallState]:
        """Binds a fresh call state; maps what escapes; logs the outcome."""
        state = CallState(method=method)
        state.add_response_header(REQUEST_ID_HEADER, state.request_id)
        token = bind_call_state(state)
        ended_early: grpc.StatusCode | None = None
        try:
            yield state
        except _ENDED_BY_THE_CALL:
            # The call ended before the behaviour did: context.code() still says OK.
            ended_early = _why_ended_early(context)
            raise
        except aio.AbortError:
            raise  # an inner layer's abort is a gRPC outcome already: nothing to map
        except Exception as error:
            await self._abort_with(self._map(error, state), context, state)
            raise  # unreachable: abort raises
        finally:
            self._log_outcome(state, context, ended_early)
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
            if self._outages is not None:
                # One traceback per outage, not one per call: the call's access line
                # says UNAVAILABLE, the process's outage lines say why.
                self._outages.failed(state.method, error)
                return status_for_domain_error(errors.Unavailable(UNAVAILABLE_MESSAGE))
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

    def _log_outcome(
        self,
        state: CallState,
        context: aio.ServicerContext[Any, Any],
        ended_early: grpc.StatusCode | None,
    ) -> None:
        code = ended_early or context.code() or grpc.StatusCode.OK
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


def _why_ended_early(context: aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= _DEADLINE_MARGIN_SECONDS:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _code_from_int(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN

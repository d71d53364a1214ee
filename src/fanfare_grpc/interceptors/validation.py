"""Request validation with protovalidate: the rules live in the protos.

Every language sees the same constraints; here a request that breaks them is
answered with INVALID_ARGUMENT and a ``google.rpc.BadRequest`` naming each field.

A body that is not a message at all gets INVALID_ARGUMENT too. grpcio parses a unary
request before any interceptor runs and, when that fails, answers UNKNOWN
("Unexpected DecodeError") by itself, without our response headers (no
``x-request-id``). So the parser is wrapped: a body that does not parse becomes an
``UndecodableRequest`` marker that travels to this layer (the layers above never read
the request) and is refused here like any other invalid request. Client-streaming
requests, which only server reflection has, keep grpcio's own handling.
"""

from __future__ import annotations

from typing import Any

import protovalidate
from google.protobuf.message import DecodeError, Message
from grpc import aio

from fanfare_grpc import errors
from fanfare_grpc.interceptors.wrapping import BehaviourInterceptor, Deserializer

INVALID_REQUEST_MESSAGE = "invalid request"
UNDECODABLE_REQUEST_MESSAGE = "the request body is not a valid message of this method"


class UndecodableRequest:
    """Stands in for a request body that did not parse (nothing of it is kept)."""


_UNDECODABLE = UndecodableRequest()


class RequestValidationInterceptor(BehaviourInterceptor):
    """Rejects requests that break their message's protovalidate rules."""

    def __init__(self, validator: protovalidate.Validator) -> None:
        self._validator = validator

    def unary_request_deserializer(self, deserializer: Deserializer) -> Deserializer:
        def tolerant(body: bytes) -> Any:
            try:
                return deserializer(body)
            except DecodeError:
                return _UNDECODABLE

        return tolerant

    async def before_call(
        self, request: Any, context: aio.ServicerContext[Any, Any], method: str
    ) -> None:
        if isinstance(request, UndecodableRequest):
            raise errors.InvalidArgument(UNDECODABLE_REQUEST_MESSAGE)
        self._check(request)

    def _check(self, request: Any) -> None:
        # Client-streaming requests arrive as iterators; our API has none yet.
        if not isinstance(request, Message):
            return
        violations = self._validator.collect_violations(request)
        if violations:
            raise errors.InvalidArgument(
                INVALID_REQUEST_MESSAGE,
                tuple(
                    errors.FieldViolation(
                        field=field_path(violation.proto.field),
                        description=violation.proto.message or violation.proto.rule_id,
                    )
                    for violation in violations
                ),
            )


def field_path(path: Any) -> str:
    """``entries[2].name`` style path of a protovalidate ``FieldPath``.

    Message-level rules (e.g. ``closes_at`` after ``opens_at``) have no path: "".
    """
    parts: list[str] = []
    for element in path.elements if path is not None else ():
        subscript = element.subscript
        if subscript is None:
            parts.append(element.field_name)
        elif subscript.field == "string_key":
            parts.append(f'{element.field_name}["{subscript.value}"]')
        else:
            parts.append(f"{element.field_name}[{subscript.value}]")
    return ".".join(parts)

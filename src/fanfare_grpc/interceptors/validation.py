"""Request validation with protovalidate: the rules live in the protos.

Every language sees the same constraints; here a request that breaks them is
answered with INVALID_ARGUMENT and a ``google.rpc.BadRequest`` naming each field.
"""

from __future__ import annotations

from typing import Any

import protovalidate
from google.protobuf.message import Message
from grpc import aio

from fanfare_grpc import errors
from fanfare_grpc.interceptors.wrapping import (
    BehaviourInterceptor,
)

INVALID_REQUEST_MESSAGE = "invalid request"


class RequestValidationInterceptor(BehaviourInterceptor):
    """Rejects requests that break their message's protovalidate rules."""

    def __init__(self, validator: protovalidate.Validator) -> None:
        self._validator = validator

    async def before_call(
        self, request: Any, context: aio.ServicerContext[Any, Any], method: str
    ) -> None:
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

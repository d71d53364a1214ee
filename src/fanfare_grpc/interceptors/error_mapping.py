"""Domain errors → gRPC status codes with ``google.rpc`` details.

The one place that knows how a ``FanfareError`` looks on the wire. Unknown
exceptions become INTERNAL with a generic message: their text may hold SQL, paths
or secrets, so it only goes to the server log.
"""

from __future__ import annotations

import dataclasses

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from fanfare_grpc import errors

INTERNAL_MESSAGE = "internal error"
UNIMPLEMENTED_MESSAGE = "method not implemented"
RETRY_AFTER_HEADER = "retry-after"
# The ``google.rpc.ErrorInfo`` domain of every reason this service sends.
ERROR_DOMAIN = "fanfare.io"

_CODES: tuple[tuple[type[errors.FanfareError], grpc.StatusCode], ...] = (
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)


@dataclasses.dataclass(frozen=True)
class MappedStatus:
    """What to abort the call with."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()
    expected: bool = True


def status_for_domain_error(error: errors.FanfareError) -> MappedStatus:
    """The status, message and rich details for a domain error."""
    code = next(code for error_type, code in _CODES if isinstance(error, error_type))
    details: list[any_pb2.Any] = []
    extra: list[tuple[str, str | bytes]] = []
    if isinstance(error, errors.InvalidArgument) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=violation.field, description=violation.description
                )
                for violation in error.violations
            ]
        )
        details.append(_pack(bad_request))
    if error.reason is not None:
        details.append(_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)))
    if isinstance(error, errors.ResourceExhausted) and error.retry_after_seconds is not None:
        retry_info = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=error.retry_after_seconds)
        )
        details.append(_pack(retry_info))
        extra.append((RETRY_AFTER_HEADER, str(error.retry_after_seconds)))
    return _with_details(code, error.message, details, extra)


def status_for_unimplemented() -> MappedStatus:
    """RPCs that the generated base classes still answer for."""
    return MappedStatus(grpc.StatusCode.UNIMPLEMENTED, UNIMPLEMENTED_MESSAGE)


def status_for_unexpected() -> MappedStatus:
    """Any other exception: no detail leaves the server."""
    return MappedStatus(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, expected=False)


def _pack(
    message: error_details_pb2.BadRequest
    | error_details_pb2.RetryInfo
    | error_details_pb2.ErrorInfo,
) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _with_details(
    code: grpc.StatusCode,
    message: str,
    details: list[any_pb2.Any],
    extra: list[tuple[str, str | bytes]],
) -> MappedStatus:
    if not details:
        return MappedStatus(code, message, tuple(extra))
    status = status_pb2.Status(code=_rpc_code(code), message=message, details=details)
    rich = rpc_status.to_status(status)
    return MappedStatus(code, message, tuple(rich.trailing_metadata) + tuple(extra))


def _rpc_code(code: grpc.StatusCode) -> int:
    value: int = code.value[0]
    assert code_pb2.Code.Name(value)  # the two enums share numbering by design
    return value

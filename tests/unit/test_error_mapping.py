"""Each domain error has one status code; details are google.rpc messages."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from fanfare_grpc import errors
from fanfare_grpc.interceptors.error_mapping import (
    status_for_domain_error,
    status_for_unexpected,
    status_for_unimplemented,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.Aborted("x"), grpc.StatusCode.ABORTED),
        (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_each_domain_error_has_its_code(error: errors.FanfareError, code: grpc.StatusCode) -> None:
    mapped = status_for_domain_error(error)
    assert mapped.code == code
    assert mapped.message == "x"
    assert mapped.trailing_metadata == ()


def test_field_violations_become_bad_request() -> None:
    mapped = status_for_domain_error(
        errors.InvalidArgument("invalid", (errors.FieldViolation("name", "too long"),))
    )
    (key, value) = mapped.trailing_metadata[0]
    assert key == "grpc-status-details-bin"
    assert isinstance(value, bytes)
    status = status_pb2.Status.FromString(value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "name"
    assert bad_request.field_violations[0].description == "too long"


def test_retry_after_becomes_header_and_retry_info() -> None:
    mapped = status_for_domain_error(errors.ResourceExhausted("slow down", retry_after_seconds=3))
    metadata = dict(mapped.trailing_metadata)
    assert metadata["retry-after"] == "3"
    status = status_pb2.Status.FromString(metadata["grpc-status-details-bin"])  # type: ignore[arg-type]
    retry_info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry_info)
    assert retry_info.retry_delay.seconds == 3


def test_unexpected_and_unimplemented_are_generic() -> None:
    assert status_for_unexpected().code == grpc.StatusCode.INTERNAL
    assert status_for_unexpected().message == "internal error"
    assert not status_for_unexpected().expected
    assert status_for_unimplemented().code == grpc.StatusCode.UNIMPLEMENTED

"""Typed domain errors. Domain code raises these; one interceptor maps them to gRPC.

Nothing here imports grpc: the mapping to status codes and ``google.rpc`` details
lives in ``fanfare_grpc.interceptors.error_mapping``. Messages must be safe to show
to callers: no secrets, no SQL, no stack traces.
"""

from __future__ import annotations

import dataclasses


class FanfareError(Exception):
    """Base of every error a caller may see; ``message`` is shown to the caller.

    ``reason`` is a stable UPPER_SNAKE_CASE code for programs (``google.rpc.ErrorInfo``),
    e.g. ``TOKEN_EXPIRED`` tells an SDK to refresh rather than log in again.

    ``repeatable``: the call took no effect that a repeat would duplicate, and a
    repeat may succeed (a conflict, an announcement that failed): an idempotency key
    lets a retry run again instead of replaying this error.
    """

    repeatable = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class Unauthenticated(FanfareError):
    """Missing, unknown, revoked or expired credential."""


class PermissionDenied(FanfareError):
    """A valid credential without the right to do this."""


class NotFound(FanfareError):
    """No such resource in the caller's organization and mode."""


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    """One bad request field: its path (``queue.name``) and what is wrong with it."""

    field: str
    description: str


class InvalidArgument(FanfareError):
    """The request is malformed; ``violations`` names each bad field."""

    def __init__(self, message: str, violations: tuple[FieldViolation, ...] = ()) -> None:
        super().__init__(message)
        self.violations = violations


class FailedPrecondition(FanfareError):
    """The resource is not in a state that allows this (e.g. queue not open)."""


class AlreadyExists(FanfareError):
    """The resource to create exists already."""


class Aborted(FanfareError):
    """A concurrent operation conflicts with this one; retrying may succeed."""

    repeatable = True


class ResourceExhausted(FanfareError):
    """A limit was reached; ``retry_after_seconds`` tells when to try again."""

    def __init__(self, message: str, retry_after_seconds: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(FanfareError):
    """A backend (database, cache) cannot be reached right now."""


class RepeatableUnavailable(Unavailable):
    """Unavailable after part of the call took effect, where repeating the call is safe.

    The operation is idempotent by nature (a revocation) and a repeat completes what
    this one could not (announcing it): an idempotency key must let the retry run again
    rather than answer "outcome unknown".
    """

    repeatable = True

"""Idempotency keys on mutating secret-key RPCs (Stripe's semantics).

Same key + same request within 24 h → the stored outcome (response or domain
error); same key + different request → INVALID_ARGUMENT; same key while the first
call still runs → ABORTED. Records live in the cache backend (shared by replicas
with Redis), scoped by organization and mode, the response sealed under the
organization's data key with associated data naming the mode, the key and the
request fingerprint. Secrets in a response (a new API key, a signing secret) are
shown exactly once: a replay returns the same response with them cleared.

A keyed call's first committed database transaction also writes its key (see
``domain.idempotency_claims``): should the cache lose the record, a second execution
fails in its first transaction, rolled back, and answers ``OUTCOME_UNKNOWN``.

An outcome is never forgotten once the call may have taken effect. The call runs in
a task of its own, shielded from the caller: a client whose deadline passes (or who
cancels) mid-call does not interrupt it, and its outcome is stored when it finishes.
When the outcome cannot be known (an outage or a bug mid-call, or a running marker
left by a server that stopped), the key answers ABORTED with ``OUTCOME_UNKNOWN``
until the record expires, never a second execution.

Calls that redeem a single-use grant (``MethodPolicy.redeems``) keep no record here:
the key's digest goes to the redemption itself (``CallState.idempotency_key_digest``),
which stores it atomically with the grant, so a retry with the same key gets the same
OK and any other caller ``ALREADY_USED``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc import aio

from fanfare_grpc import errors
from fanfare_grpc.cache.protocols import KeyValueStore
from fanfare_grpc.crypto import aead
from fanfare_grpc.crypto.envelope import Envelope
from fanfare_grpc.domain.access import KeyKind
from fanfare_grpc.domain.idempotency_claims import (
    ClaimReleaser,
    IdempotencyClaim,
    KeyAlreadyCommitted,
    claiming,
)
from fanfare_grpc.interceptors.call_state import current_call_state
from fanfare_grpc.interceptors.wrapping import (
    BehaviourInterceptor,
    UnaryBehaviour,
)
from fanfare_grpc.permissions import MethodPolicy

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
RECORD_TTL_SECONDS = 24 * 3600.0
# A running marker older than this belongs to a call whose server stopped before it
# stored an outcome: retries hear OUTCOME_UNKNOWN instead of "in progress". The marker
# itself lives as long as a record (expiring earlier would let a retry run the call
# again after it may have taken effect).
RUNNING_WINDOW_SECONDS = 300.0
OUTCOME_UNKNOWN = (
    "the earlier call with this idempotency key may have taken effect, but its outcome "
    "is unknown: check the resource's state before retrying with a new idempotency key"
)
SECRET_RESPONSE_FIELDS = frozenset(
    {
        "secret",
        "signing_secret",
        "secret_key",
        "live_secret_key",
        "access_token",
        "refresh_token",
        "handoff_token",
    }
)
_RUNNING = "running"
_DONE = "done"
_UNKNOWN = "unknown"
# Ended in an error safe to repeat (``FanfareError.repeatable``: a conflict, a revocation
# whose announcement failed): a retry with the key runs the call again. The record says
# whether the call's database claim was given back (the retry claims the key anew) or
# could not be (the retry must not claim it: it would be refused as a second run).
_REPEATABLE = "repeatable"
_SEALED_TABLE = "idempotency"
_SEALED_COLUMN = "response"
_T = TypeVar("_T")
Clock = Callable[[], dt.datetime]


@dataclasses.dataclass(frozen=True)
class RecordPlace:
    """Where one idempotency record belongs: a stored response opens only there.

    The associated data names the organization (the data key's), the mode, the
    key's digest and the request's fingerprint, so a sealed response copied to
    another mode's or another request's record does not open.
    """

    organization_id: str
    mode: str
    key_digest: str
    fingerprint: str

    @property
    def row_id(self) -> str:
        """The envelope's row: everything but the organization (already bound)."""
        return f"{self.mode}:{self.key_digest}:{self.fingerprint}"


async def seal_response(envelope: Envelope, place: RecordPlace, plaintext: bytes) -> bytes:
    """Seal a stored response for exactly this record."""
    return await envelope.encrypt(
        place.organization_id, _SEALED_TABLE, _SEALED_COLUMN, place.row_id, plaintext
    )


async def open_response(envelope: Envelope, place: RecordPlace, sealed: bytes) -> bytes:
    """Open a response sealed by ``seal_response`` for the same place.

    Raises:
        aead.DecryptionError: Sealed for another organization, mode, key or request.
    """
    return await envelope.decrypt(
        place.organization_id, _SEALED_TABLE, _SEALED_COLUMN, place.row_id, sealed
    )


def _response_class(method: str) -> type[Message]:
    service, _, name = method.lstrip("/").rpartition("/")
    descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    response_class: type[Message] = message_factory.GetMessageClass(descriptor.output_type)
    return response_class


def _bad_key(description: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(
        "invalid idempotency key", (errors.FieldViolation(HEADER, description),)
    )


def _idempotency_key(context: aio.ServicerContext[Any, Any]) -> str | None:
    values = [value for key, value in context.invocation_metadata() or () if key.lower() == HEADER]
    if not values:
        return None
    if len(values) > 1:
        raise _bad_key("must be sent once")
    value = values[0]
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_LENGTH:
        raise _bad_key(f"must be 1 to {MAX_KEY_LENGTH} characters")
    if not value.isascii() or not value.isprintable():
        raise _bad_key("must be printable ASCII")
    return value


def _stored_error(error: errors.FanfareError) -> dict[str, Any]:
    return {
        "type": type(error).__name__,
        "message": error.message,
        "violations": [
            [violation.field, violation.description]
            for violation in getattr(error, "violations", ())
        ],
        "retry_after": getattr(error, "retry_after_seconds", None),
        "reason": error.reason,
    }


def _replayed_error(stored: Mapping[str, Any]) -> errors.FanfareError:
    error_type = getattr(errors, str(stored["type"]), None)
    if not (isinstance(error_type, type) and issubclass(error_type, errors.FanfareError)):
        return errors.Aborted("stored outcome unreadable; retry with a new idempotency key")
    replayed: errors.FanfareError
    if error_type is errors.InvalidArgument:
        violations = tuple(errors.FieldViolation(f, d) for f, d in stored["violations"])
        replayed = errors.InvalidArgument(stored["message"], violations)
    elif error_type is errors.ResourceExhausted:
        replayed = errors.ResourceExhausted(stored["message"], stored["retry_after"])
    else:
        replayed = error_type(stored["message"])
    replayed.reason = stored.get("reason")
    return replayed


def _without_secrets(response: Message) -> Message:
    redacted = type(response)()
    redacted.CopyFrom(response)
    _clear_secrets(redacted)
    return redacted


def _clear_secrets(message: Message) -> None:
    """Clear secret fields at any depth (an entry's handoff token is one too)."""
    for field, value in message.ListFields():
        if field.name in SECRET_RESPONSE_FIELDS:
            message.ClearField(field.name)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            children = value if field.is_repeated else (value,)
            for child in children:
                _clear_secrets(child)


def _repeats(record: Mapping[str, Any], place: RecordPlace) -> bool:
    """Whether ``record`` lets this request run again (it ended in a repeatable error)."""
    return bool(record["state"] == _REPEATABLE and record.get("fingerprint") == place.fingerprint)


class IdempotencyInterceptor(BehaviourInterceptor):
    """Replays stored outcomes for repeated idempotency keys."""

    def __init__(
        self,
        permissions: Mapping[str, MethodPolicy],
        records: KeyValueStore,
        envelope: Envelope,
        claims: ClaimReleaser,
        logger: logging.Logger,
        clock: Clock,
    ) -> None:
        self._logger = logger
        self._claims = claims
        self._permissions = permissions
        self._records = records
        self._envelope = envelope
        self._clock = clock
        # Calls that outlive their caller: referenced until they finish (the event
        # loop keeps only weak references to tasks).
        self._calls: set[asyncio.Task[Any]] = set()

    async def around_unary(
        self,
        behaviour: UnaryBehaviour,
        request: Any,
        context: aio.ServicerContext[Any, Any],
        method: str,
    ) -> Any:
        policy = self._permissions.get(method)
        state = current_call_state()
        principal = state.principal
        key = _idempotency_key(context)
        if (
            key is None
            or policy is None
            or not policy.mutating
            or principal is None
            or principal.key_kind is not KeyKind.SECRET
            or not isinstance(request, Message)
        ):
            return await behaviour(request, context)
        key_digest = hashlib.sha256(key.encode()).hexdigest()
        if policy.redeems:
            # The redemption stores the key with the grant, in one atomic step.
            state.idempotency_key_digest = key_digest
            return await self._shielded(behaviour(request, context))
        organization_id, mode = principal.tenant()
        record_key = f"{organization_id}:{mode.value}:idempotency:{key_digest}"
        fingerprint = hashlib.sha256(
            method.encode() + b"\x00" + request.SerializeToString(deterministic=True)
        ).hexdigest()
        place = RecordPlace(organization_id, mode.value, key_digest, fingerprint)

        running = self._record(place, _RUNNING, started_at=self._clock().timestamp())
        # The marker lives as long as a record: were it to expire while the call's
        # outcome is unknown, a retry would run the call a second time.
        if await self._records.set_if_absent(record_key, running, RECORD_TTL_SECONDS):
            # From here on the call may take effect: it runs to its end and records its
            # outcome even if the caller goes away (deadline, cancel) meanwhile.
            return await self._shielded(
                self._execute(behaviour, request, context, record_key, place, claim=True)
            )
        record = await self._stored(record_key)
        if record is not None and _repeats(record, place):
            return await self._shielded(
                self._execute(
                    behaviour,
                    request,
                    context,
                    record_key,
                    place,
                    claim=bool(record.get("claim_released", False)),
                )
            )
        return await self._replay(record, place, method)

    async def _shielded(self, call: Awaitable[_T]) -> _T:
        task: asyncio.Task[_T] = asyncio.ensure_future(call)
        self._calls.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._calls.discard(task)
        # Retrieve the outcome of a call whose caller left, so asyncio does not report
        # an exception "never retrieved" (its record already says what a retry hears).
        if not task.cancelled():
            task.exception()

    async def _execute(
        self,
        behaviour: UnaryBehaviour,
        request: Any,
        context: aio.ServicerContext[Any, Any],
        record_key: str,
        place: RecordPlace,
        *,
        claim: bool,
    ) -> Any:
        key_claim = IdempotencyClaim(
            place.organization_id,
            place.mode,
            place.key_digest,
            place.fingerprint,
            self._clock(),
            dt.timedelta(seconds=RECORD_TTL_SECONDS),
        )
        try:
            if claim:
                with claiming(key_claim):
                    response = await behaviour(request, context)
            else:
                response = await behaviour(request, context)
        except KeyAlreadyCommitted:
            # The cache lost this key's record, but its first execution committed (its
            # claim is in the database): this one was rolled back. Outcome unknown.
            await self._finish(record_key, self._record(place, _UNKNOWN))
            raise errors.Aborted(OUTCOME_UNKNOWN) from None
        except errors.FanfareError as error:
            if error.repeatable:
                # Nothing a repeat would duplicate: let a retry with the key run again.
                released = await self._release(key_claim)
                await self._finish(
                    record_key, self._record(place, _REPEATABLE, claim_released=released)
                )
                raise
            if isinstance(error, errors.Unavailable):
                # A backend failed mid-call: what was written before it is unknown.
                await self._finish(record_key, self._record(place, _UNKNOWN))
                raise
            # A domain error: the call's own transaction rolled back; replay the error.
            await self._finish(record_key, self._record(place, _DONE, error=_stored_error(error)))
            raise
        except BaseException:
            # An outage, a bug or a stopping server mid-call: it may have taken effect.
            await self._finish(record_key, self._record(place, _UNKNOWN))
            raise
        try:
            sealed = await seal_response(
                self._envelope, place, _without_secrets(response).SerializeToString()
            )
        except Exception:
            self._logger.warning("could not seal an idempotent response", exc_info=True)
            # It succeeded, but a retry cannot be told how: never run it again.
            await self._finish(record_key, self._record(place, _UNKNOWN))
            return response
        await self._finish(
            record_key,
            self._record(place, _DONE, response=base64.b64encode(sealed).decode()),
        )
        return response

    @staticmethod
    def _record(place: RecordPlace, state: str, **fields: Any) -> str:
        return json.dumps({"state": state, "fingerprint": place.fingerprint, **fields})

    async def _finish(self, record_key: str, record: str) -> None:
        """Replace the running marker with the outcome.

        If that write fails the marker stays (for as long as a record would): retries
        hear ABORTED, "in progress" and then ``OUTCOME_UNKNOWN``, never a second run.
        Deleting it instead would let a retry repeat a call that took effect.
        """
        try:
            await self._records.set(record_key, record, RECORD_TTL_SECONDS)
        except Exception:
            self._logger.warning("could not store an idempotent outcome", exc_info=True)

    async def _release(self, claim: IdempotencyClaim) -> bool:
        """Give the key's database claim back; whether that worked (or was not needed)."""
        try:
            await self._claims.release(claim)
        except Exception:
            self._logger.warning("could not release an idempotency claim", exc_info=True)
            return False
        return True

    async def _stored(self, record_key: str) -> dict[str, Any] | None:
        """The key's record; an unreadable one is an unknown outcome, never a rerun."""
        raw = await self._records.get(record_key)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not all(
            isinstance(record.get(field), str) for field in ("state", "fingerprint")
        ):
            self._logger.warning("an idempotency record cannot be read")
            raise errors.Aborted(OUTCOME_UNKNOWN)
        return record

    async def _replay(
        self, record: Mapping[str, Any] | None, place: RecordPlace, method: str
    ) -> Any:
        if record is None:
            raise errors.Aborted("a request with this idempotency key just finished; retry")
        if record.get("fingerprint") != place.fingerprint:
            raise _bad_key("already used with a different request")
        if record["state"] == _RUNNING:
            started_at = float(record.get("started_at", 0.0))
            if self._clock().timestamp() - started_at < RUNNING_WINDOW_SECONDS:
                raise errors.Aborted("a request with this idempotency key is still in progress")
            raise errors.Aborted(OUTCOME_UNKNOWN)
        if record["state"] == _UNKNOWN:
            raise errors.Aborted(OUTCOME_UNKNOWN)
        if "error" in record:
            raise _replayed_error(record["error"])
        try:
            plaintext = await open_response(
                self._envelope, place, base64.b64decode(record["response"])
            )
        except (aead.DecryptionError, KeyError, TypeError, ValueError):
            # Not sealed for this mode and request (moved or tampered with), or not a
            # response at all: the call's outcome cannot be told, and it must not run
            # again.
            self._logger.warning("an idempotency record does not open for its request")
            raise errors.Aborted(OUTCOME_UNKNOWN) from None
        return _response_class(method).FromString(plaintext)

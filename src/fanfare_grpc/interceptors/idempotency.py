"""Idempotency keys on mutating secret-key RPCs (Stripe's semantics).

Same key + same request within 24 h → the stored outcome (response or domain
error); same key + different request → INVALID_ARGUMENT; same key while the first
call still runs → ABORTED. Records live in the cache backend (shared by replicas
with Redis), scoped by organization and mode, the response sealed under the
organization's data key. Secrets in a response (a new API key, a signing secret)
are shown exactly once: a replay returns the same response with them cleared.
Calls that redeem a single-use grant are never replayed (``MethodPolicy.redeems``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc import aio

from fanfare_grpc import errors
from fanfare_grpc.cache.protocols import KeyValueStore
from fanfare_grpc.crypto.envelope import Envelope
from fanfare_grpc.domain.access import KeyKind
from fanfare_grpc.interceptors.call_state import current_call_state
from fanfare_grpc.interceptors.wrapping import (
    BehaviourInterceptor,
    UnaryBehaviour,
)
from fanfare_grpc.permissions import MethodPolicy

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
RECORD_TTL_SECONDS = 24 * 3600.0
# A crashed call must not block its key for a day: the running marker expires.
RUNNING_TTL_SECONDS = 300.0
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


class IdempotencyInterceptor(BehaviourInterceptor):
    """Replays stored outcomes for repeated idempotency keys."""

    def __init__(
        self,
        permissions: Mapping[str, MethodPolicy],
        records: KeyValueStore,
        envelope: Envelope,
        logger: logging.Logger,
    ) -> None:
        self._logger = logger
        self._permissions = permissions
        self._records = records
        self._envelope = envelope

    async def around_unary(
        self,
        behaviour: UnaryBehaviour,
        request: Any,
        context: aio.ServicerContext[Any, Any],
        method: str,
    ) -> Any:
        policy = self._permissions.get(method)
        principal = current_call_state().principal
        key = _idempotency_key(context)
        if (
            key is None
            or policy is None
            or not policy.mutating
            or policy.redeems
            or principal is None
            or principal.key_kind is not KeyKind.SECRET
            or not isinstance(request, Message)
        ):
            return await behaviour(request, context)
        organization_id, mode = principal.tenant()
        key_digest = hashlib.sha256(key.encode()).hexdigest()
        record_key = f"{organization_id}:{mode.value}:idempotency:{key_digest}"
        fingerprint = hashlib.sha256(
            method.encode() + b"\x00" + request.SerializeToString(deterministic=True)
        ).hexdigest()

        running = json.dumps({"state": _RUNNING, "fingerprint": fingerprint})
        if not await self._records.set_if_absent(record_key, running, RUNNING_TTL_SECONDS):
            return await self._replay(record_key, fingerprint, method, organization_id, key_digest)
        try:
            response = await behaviour(request, context)
        except errors.FanfareError as error:
            if isinstance(error, errors.Unavailable):
                await self._forget(record_key)
            else:
                await self._store_or_forget(
                    record_key, fingerprint, {"error": _stored_error(error)}
                )
            raise
        except BaseException:
            # Not a definite outcome (crash, cancellation, outage): the client retries.
            await self._forget(record_key)
            raise
        try:
            sealed = await self._envelope.encrypt(
                organization_id,
                "idempotency",
                "response",
                key_digest,
                _without_secrets(response).SerializeToString(),
            )
        except Exception:
            self._logger.warning("could not seal an idempotent response", exc_info=True)
            await self._forget(record_key)
            return response
        await self._store_or_forget(
            record_key, fingerprint, {"response": base64.b64encode(sealed).decode()}
        )
        return response

    async def _store_or_forget(
        self, record_key: str, fingerprint: str, outcome: dict[str, Any]
    ) -> None:
        """Store the outcome; if that fails, drop the running marker instead.

        The call itself is over: its result goes back to the client either way, and
        a retry must not stay ABORTED for minutes.
        """
        try:
            await self._store(record_key, fingerprint, outcome)
        except Exception:
            self._logger.warning("could not store an idempotent outcome", exc_info=True)
            await self._forget(record_key)

    async def _forget(self, record_key: str) -> None:
        with contextlib.suppress(Exception):
            await self._records.delete(record_key)

    async def _store(self, record_key: str, fingerprint: str, outcome: dict[str, Any]) -> None:
        record = {"state": _DONE, "fingerprint": fingerprint, **outcome}
        await self._records.set(record_key, json.dumps(record), RECORD_TTL_SECONDS)

    async def _replay(
        self,
        record_key: str,
        fingerprint: str,
        method: str,
        organization_id: str,
        key_digest: str,
    ) -> Any:
        raw = await self._records.get(record_key)
        if raw is None:
            raise errors.Aborted("a request with this idempotency key just finished; retry")
        record = json.loads(raw)
        if record["fingerprint"] != fingerprint:
            raise _bad_key("already used with a different request")
        if record["state"] == _RUNNING:
            raise errors.Aborted("a request with this idempotency key is still in progress")
        if "error" in record:
            raise _replayed_error(record["error"])
        plaintext = await self._envelope.decrypt(
            organization_id,
            "idempotency",
            "response",
            key_digest,
            base64.b64decode(record["response"]),
        )
        return _response_class(method).FromString(plaintext)

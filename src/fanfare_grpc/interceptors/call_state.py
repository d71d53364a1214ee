"""Per-call state shared by the interceptor layers of one RPC.

A context variable set by an inner layer is reset before an outer layer resumes,
so the outermost layer creates one mutable ``CallState`` holder per call and every
layer (and the audit capture, later) writes into that same object.
"""

from __future__ import annotations

import contextvars
import dataclasses
import secrets
import time

from fanfare_grpc.domain.access import Principal

REQUEST_ID_HEADER = "x-request-id"

_current_call: contextvars.ContextVar[CallState] = contextvars.ContextVar("fanfare_call")


def new_request_id() -> str:
    """Random, unguessable, log-safe request id."""
    return "req_" + secrets.token_hex(12)


@dataclasses.dataclass
class CallState:
    """What the layers of one call know about it.

    Attributes:
        method: Full gRPC method name.
        request_id: Sent back as ``x-request-id``; also in logs (and audit, later).
        started_at: ``time.perf_counter()`` at the start of the call.
        response_headers: Initial metadata the layers want to send; flushed by the
            response-headers layer before any work (servicer or idempotent replay).
        headers_sent: Whether ``response_headers`` went out as initial metadata.
        principal: Who is calling, once authentication has run.
        client_host: The client limits count the caller as (its IPv4 address or IPv6 /64),
            for keyed digests only (never stored).
        device_fingerprint: The raw ``x-fanfare-device`` value, for keyed digests only.
        idempotency_key_digest: On a call that redeems a grant, the digest of its
            ``idempotency-key``: the redemption records it atomically with the grant.
    """

    method: str
    request_id: str = dataclasses.field(default_factory=new_request_id)
    started_at: float = dataclasses.field(default_factory=time.perf_counter)
    response_headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    headers_sent: bool = False
    principal: Principal | None = None
    client_host: str = ""
    device_fingerprint: str | None = dataclasses.field(default=None, repr=False)
    idempotency_key_digest: str | None = None

    def add_response_header(self, key: str, value: str) -> None:
        """Queue one initial-metadata entry (ignored once headers went out)."""
        if not self.headers_sent:
            self.response_headers.append((key, value))


def bind_call_state(state: CallState) -> contextvars.Token[CallState]:
    """Make ``state`` the current call's state for the layers inside."""
    return _current_call.set(state)


def reset_call_state(token: contextvars.Token[CallState]) -> None:
    """Undo ``bind_call_state``."""
    _current_call.reset(token)


def current_call_state() -> CallState:
    """The state of the call being served.

    Raises:
        LookupError: Outside an RPC (no request-context layer ran).
    """
    return _current_call.get()

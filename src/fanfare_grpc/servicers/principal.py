"""What servicers read about the current call: its principal, address and device."""

from __future__ import annotations

from fanfare_grpc.domain.access import Principal
from fanfare_grpc.interceptors.call_state import current_call_state


def current_principal() -> Principal:
    """The authenticated caller (authorization lets no anonymous call through)."""
    principal = current_call_state().principal
    assert principal is not None, "authorization lets no anonymous call through"
    return principal


def client_host() -> str:
    """The caller's IP address (for keyed digests only)."""
    return current_call_state().client_host


def device_fingerprint() -> str | None:
    """The caller's raw ``x-fanfare-device`` (read once, by authentication)."""
    return current_call_state().device_fingerprint


def redemption_key() -> str | None:
    """The digest of the call's idempotency key, on a call that redeems a grant."""
    return current_call_state().idempotency_key_digest

"""Consumers: the shoppers of an organization, per mode. No passwords anywhere.

A consumer who logged in by email has a per-consumer key (wrapped by the
organization's data key) that seals the email address; lookups go through an HMAC
blind index of the normalized address. Erasure destroys the per-consumer key and the
index (crypto-shredding), so the address cannot be recovered even from old copies of
the ciphertext. Guests have neither.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from fanfare_grpc.domain.access import Mode


def normalize_email(email: str) -> str:
    """The form addresses are indexed and stored in: trimmed, lower-cased."""
    return email.strip().lower()


@dataclasses.dataclass(frozen=True)
class Consumer:
    """A consumer's non-secret metadata."""

    consumer_id: str
    organization_id: str
    mode: Mode
    guest: bool
    created_at: dt.datetime
    erased_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class SealedEmail:
    """What identifies a consumer, as stored.

    Attributes:
        wrapped_key: The per-consumer key, sealed under the organization's data key.
        ciphertext: The normalized address, sealed under the per-consumer key.
        blind_index: Keyed HMAC of the normalized address (lookup without decrypting).
    """

    wrapped_key: bytes = dataclasses.field(repr=False)
    ciphertext: bytes = dataclasses.field(repr=False)
    blind_index: str = dataclasses.field(repr=False)

"""The idempotency key of the call being served, claimed in its database transactions.

The idempotency record lives in the cache, which can lose it (Redis failover or
flush, a restarted embedded server) while the effect it guards is committed in the
database. So a keyed call's first committed transaction also writes its key
(``idempotency_commits``, one row per organization, mode and key): a second execution
with the same key within the record's lifetime fails in its first transaction, rolled
back, instead of committing its effect twice.

A context variable carries the claim from the idempotency layer to the database
layer, as the call state carries the principal: domain code in between stays unaware.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Protocol


@dataclasses.dataclass
class IdempotencyClaim:
    """One keyed call's claim on its key.

    Attributes:
        organization_id: The caller's organization (only its transactions claim).
        mode: ``test`` or ``live``.
        key_digest: SHA-256 of the idempotency key (the key itself is never stored).
        fingerprint: SHA-256 of the method and request.
        claimed_at: When the call started.
        lifetime: How long a claim holds: an older row is replaced (the key may be
            reused for a new request once its record expired).
        committed: Set once a transaction carrying the claim committed.
    """

    organization_id: str
    mode: str
    key_digest: str
    fingerprint: str
    claimed_at: dt.datetime
    lifetime: dt.timedelta
    committed: bool = False


class ClaimReleaser(Protocol):
    """Gives a claim back, for a call that ended in an error safe to repeat."""

    async def release(self, claim: IdempotencyClaim) -> None:
        """Delete the claim's committed row, if any."""
        ...


class KeyAlreadyCommitted(Exception):
    """Another execution with this idempotency key committed within its lifetime."""


_current: contextvars.ContextVar[IdempotencyClaim | None] = contextvars.ContextVar(
    "fanfare_idempotency_claim", default=None
)


def current_claim() -> IdempotencyClaim | None:
    """The claim of the keyed call being served, if any."""
    return _current.get()


@contextlib.contextmanager
def claiming(claim: IdempotencyClaim) -> Iterator[IdempotencyClaim]:
    """Make ``claim`` the current call's for the code inside."""
    token = _current.set(claim)
    try:
        yield claim
    finally:
        _current.reset(token)

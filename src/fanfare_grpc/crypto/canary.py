"""The master key canary: proof, before anything is wrapped, that the keys are the right ones.

A server given the wrong master key (a lost data dir regenerated one, a typo in
``FANFARE_MASTER_KEY``) would otherwise start, fail every call that decrypts, and
wrap new organizations under the stray key: one database under two masters. So the
deployment stores one small value sealed under its master key (at ``migrate``, or
at the first start), and every process that serves or wraps opens it first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Protocol

from fanfare_grpc.crypto import aead
from fanfare_grpc.crypto.master_keys import MasterKeyError, MasterKeyRing

_CONTEXT = b"fanfare\x00master-key-canary"
_VALUE = b"fanfare master key canary"


class MasterKeyMismatch(MasterKeyError):
    """The configured master keys do not open what the database holds (ids only)."""


@dataclasses.dataclass(frozen=True)
class StoredCanary:
    """The canary as stored: sealed under the master key ``master_key_id``."""

    master_key_id: str
    sealed: bytes = dataclasses.field(repr=False)


class CanaryStore(Protocol):
    """Where the deployment's one canary lives."""

    async def get_canary(self) -> StoredCanary | None:
        """The canary, or None before it was first written."""
        ...

    async def add_canary(self, canary: StoredCanary) -> bool:
        """Store ``canary`` unless one exists already; True if stored."""
        ...

    async def wrapping_master_key_ids(self) -> set[str]:
        """Master key ids other stored keys are wrapped under (those this role can see)."""
        ...


def seal_canary(ring: MasterKeyRing) -> StoredCanary:
    """A canary sealed under the current master key."""
    return StoredCanary(ring.current.key_id, aead.seal(ring.current.material, 0, _VALUE, _CONTEXT))


def _configured(ring: MasterKeyRing) -> str:
    ids = [ring.current.key_id, *(key.key_id for key in ring.retired)]
    return "master key " + ids[0] if len(ids) == 1 else "master keys " + ", ".join(ids)


def mismatch(ring: MasterKeyRing, wrapped_by: Collection[str]) -> MasterKeyMismatch:
    """The one-line refusal naming the configured ids and the ones data is under."""
    verb = "does" if not ring.retired else "do"
    return MasterKeyMismatch(
        f"{_configured(ring)} {verb} not open data wrapped by {', '.join(sorted(wrapped_by))}: "
        "configure the master key that wrapped it (FANFARE_MASTER_KEY, or restore "
        "master_keys in the data dir)"
    )


def open_canary(ring: MasterKeyRing, canary: StoredCanary) -> None:
    """Check that ``ring`` opens ``canary``.

    Raises:
        MasterKeyMismatch: It does not (unknown version, or not the same key).
    """
    master = ring.find(canary.master_key_id)
    try:
        if master is None or aead.open_sealed(master.material, canary.sealed, _CONTEXT) != _VALUE:
            raise mismatch(ring, [canary.master_key_id])
    except aead.DecryptionError:
        raise mismatch(ring, [canary.master_key_id]) from None


def rewrap_canary(ring: MasterKeyRing, canary: StoredCanary) -> StoredCanary:
    """The canary sealed under the current master key (``master-key rotate``).

    Raises:
        MasterKeyMismatch: ``ring`` cannot open it.
    """
    open_canary(ring, canary)
    return seal_canary(ring)


async def verify_master_keys(ring: MasterKeyRing, store: CanaryStore) -> StoredCanary:
    """Open the deployment's canary with ``ring``; write it first if there is none yet.

    A database without a canary but with keys wrapped only under versions ``ring``
    lacks (upgraded from a version before the canary) is refused rather than sealed
    under a stray key. Replicas that start together race to write it: whichever wins,
    the others then check theirs against it.

    Raises:
        MasterKeyMismatch: The message names the configured ids and the stored ones.
    """
    canary = await store.get_canary()
    if canary is None:
        wrapped_by = await store.wrapping_master_key_ids()
        if wrapped_by and all(ring.find(key_id) is None for key_id in wrapped_by):
            raise mismatch(ring, wrapped_by)
        await store.add_canary(seal_canary(ring))
        canary = await store.get_canary()
        if canary is None:  # pragma: no cover - the row was just written and is never deleted
            raise MasterKeyError("the master key canary could not be stored")
    open_canary(ring, canary)
    return canary

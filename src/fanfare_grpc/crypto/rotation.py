"""Master key rotation: re-wrap every data key (and signing key) under the current one.

Runs while servers keep serving: data keys themselves do not change, only their
wrapping, and servers hold unwrapped data keys in memory, so nothing they cached
goes stale. Each key is swapped with a compare-and-set, so two concurrent
rotations cannot lose an update.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal, Protocol

from fanfare_grpc.crypto.aead import DecryptionError
from fanfare_grpc.crypto.canary import (
    CanaryStore,
    MasterKeyMismatch,
    StoredCanary,
    rewrap_canary,
    verify_master_keys,
)
from fanfare_grpc.crypto.envelope import Envelope, WrappedDataKey
from fanfare_grpc.crypto.master_keys import MasterKeyRing
from fanfare_grpc.crypto.signing_keys import (
    StoredSigningKey,
    seal_signing_key,
    unseal_signing_key,
)


class RewrapStore(Protocol):
    """Data keys across every organization (operator access)."""

    async def wrapped_keys_not_under(self, master_key_id: str) -> list[WrappedDataKey]:
        """Keys wrapped by any other master key version."""
        ...

    async def replace(self, previous: WrappedDataKey, rewrapped: WrappedDataKey) -> bool:
        """Swap ``previous`` for ``rewrapped`` if unchanged; True if swapped."""
        ...


class _NoDataKeys:
    async def get_data_key(self, organization_id: str, version: int) -> WrappedDataKey | None:
        return None


async def rewrap_data_keys(ring: MasterKeyRing, store: RewrapStore) -> int:
    """Re-wrap every data key not yet under ``ring.current``; returns how many.

    A key ``ring`` cannot open (its version is not configured) is left as it is, so
    one missing version does not stop the others; ``master_key_usage`` counts it.
    """
    envelope = Envelope(ring, _NoDataKeys())
    rewrapped = 0
    for key in await store.wrapped_keys_not_under(ring.current.key_id):
        try:
            new = envelope.rewrap(key)
        except DecryptionError:
            continue
        if await store.replace(key, new):
            rewrapped += 1
    return rewrapped


class SigningKeyRewrapStore(Protocol):
    """Signing keys across the deployment (operator access)."""

    async def signing_keys_not_under(self, master_key_id: str) -> list[StoredSigningKey]:
        """Keys sealed by any other master key version."""
        ...

    async def replace_signing_key(
        self, previous: StoredSigningKey, sealed_private_key: bytes, master_key_id: str
    ) -> bool:
        """Swap in the re-sealed key if unchanged; True if swapped."""
        ...


async def rewrap_signing_keys(ring: MasterKeyRing, store: SigningKeyRewrapStore) -> int:
    """Re-seal every token signing key under ``ring.current``; returns how many.

    Like ``rewrap_data_keys``, a key ``ring`` cannot open is left as it is.
    """
    rewrapped = 0
    for stored in await store.signing_keys_not_under(ring.current.key_id):
        try:
            key = unseal_signing_key(ring, stored)
        except (DecryptionError, ValueError):
            continue
        sealed, master_key_id = seal_signing_key(ring, key)
        if await store.replace_signing_key(stored, sealed, master_key_id):
            rewrapped += 1
    return rewrapped


class CanaryRewrapStore(CanaryStore, Protocol):
    """The canary, as the tables' owner may change it."""

    async def replace_canary(self, previous: StoredCanary, canary: StoredCanary) -> bool:
        """Swap in the re-sealed canary if unchanged; True if swapped."""
        ...


async def rewrap_master_key_canary(
    ring: MasterKeyRing, store: CanaryRewrapStore
) -> StoredCanary | None:
    """Re-seal the canary under ``ring.current`` (writing it if there is none yet).

    Like the keys, a canary ``ring`` cannot open is left as it is (the usage names
    its version); returns the canary as it is now stored, None if none could be.
    """
    stored = await store.get_canary()
    if stored is None:
        try:
            return await verify_master_keys(ring, store)
        except MasterKeyMismatch:
            return None
    if stored.master_key_id == ring.current.key_id:
        return stored
    try:
        resealed = rewrap_canary(ring, stored)
    except MasterKeyMismatch:
        return stored
    if await store.replace_canary(stored, resealed):
        return resealed
    return await store.get_canary()  # a concurrent rotation re-sealed it first


MasterKeyState = Literal["current", "retired", "missing"]


@dataclasses.dataclass(frozen=True)
class MasterKeyUsage:
    """What one master key version wraps, and whether it may be dropped.

    ``missing``: stored keys name a version this configuration does not have, so
    they cannot be opened here.

    ``canary``: the master key canary is sealed under this version; servers refuse
    to start without it, so it is not safe to retire either.
    """

    key_id: str
    state: MasterKeyState
    data_keys: int
    signing_keys: int
    canary: bool = False

    @property
    def safe_to_retire(self) -> bool:
        """A retired version nothing is wrapped under any more."""
        return (
            self.state == "retired"
            and self.data_keys == 0
            and self.signing_keys == 0
            and not self.canary
        )


def master_key_usage(
    ring: MasterKeyRing,
    data_keys: Mapping[str, int],
    signing_keys: Mapping[str, int],
    canary: str | None = None,
) -> list[MasterKeyUsage]:
    """Per master key version (current, then retired, then missing ones): key counts.

    ``canary`` is the version the master key canary is sealed under, if any.
    """
    configured = [ring.current.key_id, *(key.key_id for key in ring.retired)]
    under_canary = {canary} if canary else set()
    missing = sorted((set(data_keys) | set(signing_keys) | under_canary) - set(configured))
    states: list[tuple[str, MasterKeyState]] = [
        (ring.current.key_id, "current"),
        *((key.key_id, "retired") for key in ring.retired),
        *((key_id, "missing") for key_id in missing),
    ]
    seen: set[str] = set()
    usage = []
    for key_id, state in states:
        if key_id in seen:  # the same key listed twice in the configuration
            continue
        seen.add(key_id)
        usage.append(
            MasterKeyUsage(
                key_id,
                state,
                data_keys.get(key_id, 0),
                signing_keys.get(key_id, 0),
                canary=key_id == canary,
            )
        )
    return usage

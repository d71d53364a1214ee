"""Envelope encryption: per-organization data keys wrapped by the master key.

Each organization has a random AES-256 data key, stored only wrapped (AES-GCM under
the current master key version, bound to the organization). Column values are
sealed under the data key with associated data naming organization, table, column
and row. Rotating the master key re-wraps data keys; ciphertexts never change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from fanfare_grpc import errors
from fanfare_grpc.crypto import aead
from fanfare_grpc.crypto.digests import (
    KeyedDigester,
    device_digester,
    email_index_digester,
    ip_digester,
)
from fanfare_grpc.crypto.master_key_alarm import MasterKeyAlarm
from fanfare_grpc.crypto.master_keys import MasterKeyRing, MasterKeySource, new_key_material

FIRST_DATA_KEY_VERSION = 1
# Shown to callers: no key ids (they are not the caller's business).
MASTER_KEY_UNAVAILABLE = "encrypted data cannot be opened by this server right now"


@dataclasses.dataclass(frozen=True)
class WrappedDataKey:
    """A data key as stored: sealed under the master key ``master_key_id``."""

    organization_id: str
    version: int
    wrapped: bytes = dataclasses.field(repr=False)
    master_key_id: str


class DataKeyStore(Protocol):
    """Where wrapped data keys live."""

    async def get_data_key(self, organization_id: str, version: int) -> WrappedDataKey | None:
        """One version of an organization's data key."""
        ...


class MissingDataKey(Exception):
    """No data key for the organization (never created, or erased)."""


def _join(*parts: str) -> bytes:
    return b"\x00".join(part.encode() for part in parts)


def _wrapping_context(organization_id: str, version: int) -> bytes:
    return _join("fanfare", "data-key", organization_id, str(version))


def value_context(organization_id: str, table: str, column: str, row_id: str) -> bytes:
    """Associated data binding a column value to where it is stored."""
    return _join("fanfare", "value", organization_id, table, column, row_id)


class Envelope:
    """Encrypts and decrypts organization data; caches unwrapped data keys in memory."""

    def __init__(
        self,
        master_keys: MasterKeyRing | MasterKeySource,
        store: DataKeyStore,
        alarm: MasterKeyAlarm | None = None,
    ) -> None:
        """
        Args:
            master_keys: A fixed ring, or the deployment's keys followed as
                ``master-key rotate`` changes them (servers).
            alarm: Told when a stored data key does not open (servers report
                NOT_SERVING then).
        """
        self._alarm = alarm
        self._master_keys = (
            master_keys
            if isinstance(master_keys, MasterKeySource)
            else MasterKeySource.fixed(master_keys)
        )
        self._store = store
        self._data_keys: dict[tuple[str, int], bytes] = {}
        # Derived digesters per (organization, purpose): HKDF costs ~7 µs, and the
        # device digest runs on every consumer call.
        self._digesters: dict[tuple[str, str], KeyedDigester] = {}

    @property
    def ring(self) -> MasterKeyRing:
        """The newest master keys (re-read if ``master-key rotate`` changed them)."""
        return self._master_keys.ring()

    def new_data_key(self, organization_id: str) -> WrappedDataKey:
        """A fresh data key for a new organization, wrapped under the current master key."""
        material = new_key_material()
        self._data_keys[(organization_id, FIRST_DATA_KEY_VERSION)] = material
        return self.wrap(organization_id, FIRST_DATA_KEY_VERSION, material)

    def wrap(self, organization_id: str, version: int, material: bytes) -> WrappedDataKey:
        """Seal data key material under the newest master key of the deployment."""
        current = self.ring.current
        wrapped = aead.seal(
            current.material, version, material, _wrapping_context(organization_id, version)
        )
        return WrappedDataKey(organization_id, version, wrapped, current.key_id)

    def unwrap(self, key: WrappedDataKey) -> bytes:
        """Recover data key material with whichever master key version wrapped it.

        Raises:
            aead.DecryptionError: Unknown master key version, or the wrapped key is not
                this organization's.
        """
        # `master-key rotate` may have added a version since we started (dev key file,
        # noticed by the ring); production rolls the new key out to every server first.
        master = self.ring.find(key.master_key_id)
        if master is None:
            raise aead.DecryptionError("data key wrapped by an unknown master key version")
        return aead.open_sealed(
            master.material, key.wrapped, _wrapping_context(key.organization_id, key.version)
        )

    def rewrap(self, key: WrappedDataKey) -> WrappedDataKey:
        """The same data key, wrapped under the current master key."""
        return self.wrap(key.organization_id, key.version, self.unwrap(key))

    async def _data_key(self, organization_id: str, version: int) -> bytes:
        cached = self._data_keys.get((organization_id, version))
        if cached is not None:
            return cached
        stored = await self._store.get_data_key(organization_id, version)
        if stored is None:
            raise MissingDataKey(organization_id)
        try:
            material = self.unwrap(stored)
        except aead.DecryptionError:
            if self._alarm is None:
                raise
            # Not this call's fault and not a bug: this process lacks the key. The
            # caller may succeed on a replica that has it (UNAVAILABLE, not INTERNAL).
            self._alarm.report(stored.master_key_id, self.ring)
            raise errors.Unavailable(MASTER_KEY_UNAVAILABLE) from None
        self._data_keys[(organization_id, version)] = material
        return material

    async def encrypt(
        self, organization_id: str, table: str, column: str, row_id: str, plaintext: bytes
    ) -> bytes:
        """Seal a column value under the organization's data key."""
        key = await self._data_key(organization_id, FIRST_DATA_KEY_VERSION)
        return aead.seal(
            key,
            FIRST_DATA_KEY_VERSION,
            plaintext,
            value_context(organization_id, table, column, row_id),
        )

    async def decrypt(
        self, organization_id: str, table: str, column: str, row_id: str, ciphertext: bytes
    ) -> bytes:
        """Open a column value sealed by ``encrypt`` for exactly this place.

        Raises:
            aead.DecryptionError: Tampered, or sealed for another organization/table/
                column/row.
        """
        version = aead.key_version_of(ciphertext)
        key = await self._data_key(organization_id, version)
        return aead.open_sealed(
            key, ciphertext, value_context(organization_id, table, column, row_id)
        )

    async def device_digester(self, organization_id: str) -> KeyedDigester:
        """Device-fingerprint digests of this organization (stable across master rotations)."""
        return await self._digester(organization_id, "device", device_digester)

    async def email_index_digester(self, organization_id: str) -> KeyedDigester:
        """Blind-index digests of this organization's consumer emails."""
        return await self._digester(organization_id, "email-index", email_index_digester)

    async def ip_digester(self, organization_id: str) -> KeyedDigester:
        """Client-IP digests of this organization."""
        return await self._digester(organization_id, "ip", ip_digester)

    async def _digester(
        self, organization_id: str, purpose: str, derive: Callable[[bytes], KeyedDigester]
    ) -> KeyedDigester:
        cached = self._digesters.get((organization_id, purpose))
        if cached is None:
            cached = derive(await self._data_key(organization_id, FIRST_DATA_KEY_VERSION))
            self._digesters[(organization_id, purpose)] = cached
        return cached

    def deployment_ip_digester(self) -> KeyedDigester:
        """IP digests before the organization is known (pre-auth rate limits only).

        Derived from the current master key: these digests only key short-lived
        counters, so a change at master-key rotation is harmless.
        """
        return ip_digester(self.ring.current.material)

    def forget(self, organization_id: str) -> None:
        """Drop cached data keys of an organization (after crypto-shredding)."""
        for cache_key in [key for key in self._data_keys if key[0] == organization_id]:
            del self._data_keys[cache_key]
        for digester_key in [key for key in self._digesters if key[0] == organization_id]:
            del self._digesters[digester_key]

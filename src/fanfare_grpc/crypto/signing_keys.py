"""Token signing keys: sealed under the master key, rotated on a schedule.

A key signs for ``rotation`` and stays published (JWKS, verification) until every
token it could have signed has expired, so a rotation never breaks live sessions.
Replicas share keys through the database; two replicas rotating at the same moment
merely publish two fresh keys. Each key is unsealed on its own: one this replica
cannot open (sealed under a master key version it does not have, or damaged) is
logged once and left out, so tokens of every other key keep verifying.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fanfare_grpc.crypto import aead
from fanfare_grpc.crypto.jwt_tokens import LEEWAY, SigningKey
from fanfare_grpc.crypto.master_keys import MasterKeyRing

PUBLIC_KEYS_REFRESH = dt.timedelta(seconds=30)
# A kid we do not know may be a key another replica just created: re-read the store,
# but at most this often, so tokens with made-up kids cannot hammer the database.
UNKNOWN_KID_REFRESH = dt.timedelta(seconds=1)


@dataclasses.dataclass(frozen=True)
class StoredSigningKey:
    """A signing key as stored: its private half sealed under a master key version."""

    kid: str
    sealed_private_key: bytes = dataclasses.field(repr=False)
    master_key_id: str
    created_at: dt.datetime
    sign_until: dt.datetime
    publish_until: dt.datetime


class SigningKeyStore(Protocol):
    """Where signing keys live (deployment-wide, not organization data)."""

    async def published_signing_keys(self, now: dt.datetime) -> list[StoredSigningKey]:
        """Keys whose ``publish_until`` is after ``now``, newest first."""
        ...

    async def add_signing_key(self, key: StoredSigningKey) -> None:
        """Store a new key."""
        ...


def _context(kid: str) -> bytes:
    return b"fanfare\x00signing-key\x00" + kid.encode()


def seal_signing_key(ring: MasterKeyRing, key: SigningKey) -> tuple[bytes, str]:
    """The private key sealed under the current master key, bound to its ``kid``."""
    raw = key.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return aead.seal(ring.current.material, 0, raw, _context(key.kid)), ring.current.key_id


def unseal_signing_key(ring: MasterKeyRing, stored: StoredSigningKey) -> SigningKey:
    """The usable key.

    Raises:
        aead.DecryptionError: Unknown master key version, or not this kid's key.
    """
    master = ring.find(stored.master_key_id)
    if master is None:
        raise aead.DecryptionError("signing key sealed by an unknown master key version")
    raw = aead.open_sealed(master.material, stored.sealed_private_key, _context(stored.kid))
    return SigningKey(stored.kid, Ed25519PrivateKey.from_private_bytes(raw), stored.created_at)


class SigningKeyRing:
    """The current signing key and the published public keys, cached per process."""

    def __init__(
        self,
        store: SigningKeyStore,
        master_keys: Callable[[], MasterKeyRing],
        *,
        rotation: dt.timedelta,
        token_lifetime: dt.timedelta,
        logger: logging.Logger | None = None,
    ) -> None:
        """
        Args:
            master_keys: The newest master keys (called before each seal or unseal,
                so it should be cheap: ``MasterKeySource.ring``).
            token_lifetime: The longest lifetime of anything a key signs (access
                tokens and handoff tokens alike): a key stays published that long
                after it stops signing, so no token outlives its key.
            logger: Where a key that cannot be unsealed is reported (once).
        """
        self._logger = logger or logging.getLogger(__name__)
        self._store = store
        self._master_keys = master_keys
        self._rotation = rotation
        self._token_lifetime = token_lifetime
        self._current: tuple[SigningKey, dt.datetime] | None = None
        self._published: list[StoredSigningKey] = []
        self._published_at: dt.datetime | None = None
        self._unsealed: dict[str, SigningKey] = {}
        # kid -> (what failed to open, with which master keys): retried only when the
        # stored key (re-sealed by a rotation) or this process's master keys change.
        self._unusable: dict[str, tuple[bytes, MasterKeyRing]] = {}

    async def signing_key(self, now: dt.datetime) -> SigningKey:
        """The key to sign with now (created, and stored, when none is current)."""
        if self._current is not None and self._current[1] > now:
            return self._current[0]
        for stored in await self._refresh(now):
            if stored.sign_until > now:
                usable = self._unseal(stored)
                if usable is not None:
                    self._current = (usable, stored.sign_until)
                    return usable
        # None current, or none this replica can open: a fresh key (newest first, so
        # the other replicas sign with it too once they see it).
        key = SigningKey.generate(now)
        sealed, master_key_id = seal_signing_key(self._master_keys(), key)
        sign_until = now + self._rotation
        stored = StoredSigningKey(
            kid=key.kid,
            sealed_private_key=sealed,
            master_key_id=master_key_id,
            created_at=now,
            sign_until=sign_until,
            # Every token it signs has expired (plus leeway) by then.
            publish_until=sign_until + self._token_lifetime + LEEWAY,
        )
        await self._store.add_signing_key(stored)
        self._unsealed[key.kid] = key
        self._published_at = None
        self._current = (key, sign_until)
        return key

    async def public_keys(self, now: dt.datetime) -> dict[str, Ed25519PublicKey]:
        """Every published key by ``kid`` (refreshed from the store every 30 s)."""
        return {key.kid: key.public_key for key in await self.published(now)}

    async def public_keys_for(
        self, kid: str | None, now: dt.datetime
    ) -> dict[str, Ed25519PublicKey]:
        """Published keys by ``kid``, re-read first if ``kid`` is new to this process."""
        keys = await self.public_keys(now)
        if (
            kid is not None
            and kid not in keys
            and (self._published_at is None or now - self._published_at > UNKNOWN_KID_REFRESH)
        ):
            await self._refresh(now)
            keys = await self.public_keys(now)
        return keys

    async def published(self, now: dt.datetime) -> list[SigningKey]:
        """Published keys this replica can open, newest first.

        For JWKS (only their public halves go out) and verification; a key that
        cannot be unsealed is left out rather than failing every other key's tokens.
        """
        keys = (self._unseal(stored) for stored in await self._published_keys(now))
        return [key for key in keys if key is not None]

    def _unseal(self, stored: StoredSigningKey) -> SigningKey | None:
        key = self._unsealed.get(stored.kid)
        if key is not None:
            return key
        master_keys = self._master_keys()
        failed = self._unusable.get(stored.kid)
        if failed is not None and failed == (stored.sealed_private_key, master_keys):
            return None
        try:
            key = unseal_signing_key(master_keys, stored)
        except (aead.DecryptionError, ValueError) as error:
            if failed is None:
                # Names only: the kid and the master key fingerprint are not secret.
                self._logger.warning(
                    "token signing key cannot be unsealed; its tokens are refused here",
                    extra={
                        "kid": stored.kid,
                        "master_key_id": stored.master_key_id,
                        "reason": str(error),
                    },
                )
            self._unusable[stored.kid] = (stored.sealed_private_key, master_keys)
            return None
        self._unusable.pop(stored.kid, None)
        self._unsealed[stored.kid] = key
        return key

    async def _published_keys(self, now: dt.datetime) -> list[StoredSigningKey]:
        if self._published_at is None or now - self._published_at > PUBLIC_KEYS_REFRESH:
            return await self._refresh(now)
        return [key for key in self._published if key.publish_until > now]

    async def _refresh(self, now: dt.datetime) -> list[StoredSigningKey]:
        self._published = await self._store.published_signing_keys(now)
        self._published_at = now
        return self._published

"""Token signing keys: sealed, rotated on schedule, published until their tokens expire."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from fanfare_grpc.crypto import aead
from fanfare_grpc.crypto.jwt_tokens import (
    AccessClaims,
    SigningKey,
    sign_access_token,
    verify_access_token,
)
from fanfare_grpc.crypto.master_keys import MasterKey, MasterKeyRing, new_key_material
from fanfare_grpc.crypto.rotation import rewrap_signing_keys
from fanfare_grpc.crypto.signing_keys import (
    SigningKeyRing,
    StoredSigningKey,
    seal_signing_key,
    unseal_signing_key,
)

START = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
ROTATION = dt.timedelta(days=7)
LIFETIME = dt.timedelta(minutes=15)


class MemoryStore:
    def __init__(self) -> None:
        self.keys: dict[str, StoredSigningKey] = {}

    async def published_signing_keys(self, now: dt.datetime) -> list[StoredSigningKey]:
        published = [key for key in self.keys.values() if key.publish_until > now]
        return sorted(published, key=lambda key: key.created_at, reverse=True)

    async def add_signing_key(self, key: StoredSigningKey) -> None:
        self.keys[key.kid] = key

    async def signing_keys_not_under(self, master_key_id: str) -> list[StoredSigningKey]:
        return [key for key in self.keys.values() if key.master_key_id != master_key_id]

    async def replace_signing_key(
        self, previous: StoredSigningKey, sealed_private_key: bytes, master_key_id: str
    ) -> bool:
        self.keys[previous.kid] = dataclasses.replace(
            previous, sealed_private_key=sealed_private_key, master_key_id=master_key_id
        )
        return True


def _ring() -> MasterKeyRing:
    return MasterKeyRing(MasterKey.from_material(new_key_material()))


def _claims(now: dt.datetime) -> AccessClaims:
    return AccessClaims("iss", "org_a", "cons_a", "sess_a", "d" * 64, now, now + LIFETIME, "jti")


async def test_one_key_signs_until_rotation_then_stays_published() -> None:
    store, master = MemoryStore(), _ring()
    ring = SigningKeyRing(store, lambda: master, rotation=ROTATION, token_lifetime=LIFETIME)
    first = await ring.signing_key(START)
    assert await ring.signing_key(START + dt.timedelta(days=1)) is first
    assert len(store.keys) == 1
    token = sign_access_token(first, _claims(START + ROTATION - dt.timedelta(seconds=1)))

    after = START + ROTATION + dt.timedelta(seconds=1)
    second = await ring.signing_key(after)
    assert second.kid != first.kid
    # The old key still verifies the tokens it signed until they expired.
    published = await ring.public_keys(after)
    assert set(published) == {first.kid, second.kid}
    verify_access_token(token, published, issuer="iss", organization_id="org_a", now=after)

    long_after = after + LIFETIME + dt.timedelta(minutes=2)
    fresh = SigningKeyRing(store, lambda: master, rotation=ROTATION, token_lifetime=LIFETIME)
    assert set(await fresh.public_keys(long_after)) == {second.kid}


async def test_replicas_share_the_stored_key() -> None:
    store, master = MemoryStore(), _ring()
    one = SigningKeyRing(store, lambda: master, rotation=ROTATION, token_lifetime=LIFETIME)
    two = SigningKeyRing(store, lambda: master, rotation=ROTATION, token_lifetime=LIFETIME)
    assert (await one.signing_key(START)).kid == (await two.signing_key(START)).kid


async def test_private_keys_are_sealed_and_bound_to_their_kid() -> None:
    store, master = MemoryStore(), _ring()
    ring = SigningKeyRing(store, lambda: master, rotation=ROTATION, token_lifetime=LIFETIME)
    key = await ring.signing_key(START)
    (stored,) = store.keys.values()
    assert unseal_signing_key(master, stored).public_jwk() == key.public_jwk()
    with pytest.raises(aead.DecryptionError):
        unseal_signing_key(master, dataclasses.replace(stored, kid="ed_someoneelse"))
    with pytest.raises(aead.DecryptionError):
        unseal_signing_key(_ring(), stored)


async def test_master_key_rotation_reseals_signing_keys() -> None:
    store, old = MemoryStore(), _ring()
    ring = SigningKeyRing(store, lambda: old, rotation=ROTATION, token_lifetime=LIFETIME)
    key = await ring.signing_key(START)
    new = MasterKeyRing(MasterKey.from_material(new_key_material()), (old.current,))
    assert await rewrap_signing_keys(new, store) == 1
    assert await rewrap_signing_keys(new, store) == 0
    only_new = MasterKeyRing(new.current)
    (stored,) = store.keys.values()
    assert unseal_signing_key(only_new, stored).public_jwk() == key.public_jwk()


def _stored(ring: MasterKeyRing, key: SigningKey, kid: str | None = None) -> StoredSigningKey:
    """``key`` sealed under ``ring`` as a stored row (under another ``kid``: damaged)."""
    sealed, master_key_id = seal_signing_key(ring, key)
    return StoredSigningKey(
        kid=kid or key.kid,
        sealed_private_key=sealed,
        master_key_id=master_key_id,
        created_at=key.created_at,
        sign_until=key.created_at + ROTATION,
        publish_until=key.created_at + ROTATION + LIFETIME,
    )


async def test_a_key_that_cannot_be_unsealed_spoils_only_its_own_tokens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, master = MemoryStore(), _ring()
    ring = SigningKeyRing(store, lambda: master, rotation=ROTATION, token_lifetime=LIFETIME)
    good = await ring.signing_key(START)
    token = sign_access_token(good, _claims(START))
    # Newer keys: one sealed under a master key this process lacks, one damaged.
    later = START + dt.timedelta(seconds=1)
    stranger = _stored(_ring(), SigningKey.generate(later))
    damaged = _stored(master, SigningKey.generate(later), kid="ed_damaged")
    store.keys.update({stranger.kid: stranger, damaged.kid: damaged})

    replica = SigningKeyRing(store, lambda: master, rotation=ROTATION, token_lifetime=LIFETIME)
    with caplog.at_level("WARNING"):
        for _ in range(3):
            published = await replica.public_keys(later)
            assert set(published) == {good.kid}
            verify_access_token(token, published, issuer="iss", organization_id="org_a", now=later)
        # The newest key it can open signs (the current one here).
        assert (await replica.signing_key(later)).kid == good.kid
    warnings = [record for record in caplog.records if "cannot be unsealed" in record.message]
    assert sorted(record.kid for record in warnings) == sorted([stranger.kid, "ed_damaged"])
    assert master.current.material.hex() not in caplog.text


async def test_when_no_current_key_can_be_unsealed_a_fresh_one_signs() -> None:
    store, master = MemoryStore(), _ring()
    stranger = _stored(_ring(), SigningKey.generate(START))
    store.keys[stranger.kid] = stranger
    ring = SigningKeyRing(store, lambda: master, rotation=ROTATION, token_lifetime=LIFETIME)
    fresh = await ring.signing_key(START)
    assert fresh.kid != stranger.kid
    assert store.keys[fresh.kid].master_key_id == master.current.key_id
    token = sign_access_token(fresh, _claims(START))
    published = await ring.public_keys_for(fresh.kid, START)
    verify_access_token(token, published, issuer="iss", organization_id="org_a", now=START)


async def test_a_key_left_out_is_retried_once_the_master_keys_change() -> None:
    store, master, other = MemoryStore(), _ring(), _ring()
    stranger = _stored(other, SigningKey.generate(START))
    store.keys[stranger.kid] = stranger
    rings = [master]
    ring = SigningKeyRing(store, lambda: rings[-1], rotation=ROTATION, token_lifetime=LIFETIME)
    assert await ring.public_keys(START) == {}
    # The missing version reaches this process (e.g. `master-key rotate` added it).
    rings.append(MasterKeyRing(master.current, (other.current,)))
    assert set(await ring.public_keys(START)) == {stranger.kid}

"""KeyVerifier edge cases: races with invalidations, attempt limits, cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest

from fanfare_grpc import errors
from fanfare_grpc.authentication.key_verifier import FAILURES_PER_WINDOW, KeyVerifier
from fanfare_grpc.cache.memory import MemoryCache
from fanfare_grpc.domain.access import KeyKind, Mode, Role
from fanfare_grpc.domain.api_keys import ApiKey, generate_api_key, hash_api_key

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


class Records:
    """In-memory key records; ``on_lookup`` runs right after a lookup (mid-verification)."""

    def __init__(self, key: ApiKey) -> None:
        self.key = key
        self.on_lookup: list[object] = []

    async def find_by_lookup_id(self, lookup_id: str) -> ApiKey | None:
        found = self.key if lookup_id == self.key.lookup_id else None
        for action in self.on_lookup:
            asyncio.get_running_loop().call_soon(action)  # type: ignore[arg-type]
        return found

    async def get(self, organization_id: str, mode: Mode, key_id: str) -> ApiKey | None:
        return self.key if key_id == self.key.key_id else None


def _key() -> tuple[ApiKey, str]:
    generated = generate_api_key(KeyKind.SECRET, Mode.TEST)
    key = ApiKey(
        key_id="key_a",
        organization_id="org_a",
        mode=Mode.TEST,
        kind=KeyKind.SECRET,
        role=Role.ADMIN,
        name="k",
        lookup_id=generated.lookup_id,
        secret_hash=hash_api_key(generated.plaintext),
        prefix=generated.plaintext[:12],
        last4=generated.plaintext[-4:],
        created_at=NOW,
    )
    return key, generated.plaintext


def _verifier(records: Records) -> KeyVerifier:
    verifier = KeyVerifier(records, MemoryCache().counters, wall_clock=lambda: NOW)
    verifier.invalidations_connected = True
    return verifier


async def test_a_revocation_during_verification_is_not_lost() -> None:
    key, plaintext = _key()
    records = Records(key)
    verifier = _verifier(records)

    def revoke() -> None:
        records.key = dataclasses.replace(key, revoked_at=NOW)
        verifier.key_changed(key.key_id)

    records.on_lookup.append(revoke)
    with pytest.raises(errors.Unauthenticated):
        await verifier.verify(plaintext, "client")
    records.on_lookup.clear()
    with pytest.raises(errors.Unauthenticated):
        await verifier.verify(plaintext, "client")


def _wrong(plaintext: str, index: int) -> str:
    return plaintext[:-6] + f"{index:06d}"


async def test_guessing_from_one_client_never_locks_out_the_key() -> None:
    key, plaintext = _key()
    verifier = _verifier(Records(key))
    for index in range(FAILURES_PER_WINDOW + 5):
        with pytest.raises(errors.Unauthenticated):
            await verifier.verify(_wrong(plaintext, index), "attacker")
    assert verifier.bcrypt_checks == FAILURES_PER_WINDOW  # the rest refused without bcrypt
    assert (await verifier.verify(plaintext, "merchant-backend")).key_id == key.key_id


async def test_concurrent_guesses_cannot_overshoot_the_attempt_limit() -> None:
    key, plaintext = _key()
    verifier = _verifier(Records(key))
    results = await asyncio.gather(
        *(
            verifier.verify(_wrong(plaintext, i), "attacker")
            for i in range(3 * FAILURES_PER_WINDOW)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(result, errors.Unauthenticated) for result in results)
    assert verifier.bcrypt_checks <= FAILURES_PER_WINDOW


async def test_a_cancelled_caller_does_not_fail_the_others() -> None:
    key, plaintext = _key()
    verifier = _verifier(Records(key))
    first = asyncio.create_task(verifier.verify(plaintext, "a"))
    second = asyncio.create_task(verifier.verify(plaintext, "b"))
    await asyncio.sleep(0.01)  # both wait on the same bcrypt check
    first.cancel()
    assert (await asyncio.wait_for(second, timeout=5)).key_id == key.key_id
    assert verifier.bcrypt_checks == 1

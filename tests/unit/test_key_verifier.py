"""KeyVerifier edge cases: races with invalidations, attempt limits, cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest

from fanfare_grpc import errors
from fanfare_grpc.authentication.key_verifier import (
    FAILURES_PER_WINDOW,
    KeyVerifier,
    attempts_key,
)
from fanfare_grpc.cache.memory import MemoryCache
from fanfare_grpc.cache.protocols import CounterValue
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
        verifier.key_changed(key.organization_id, key.mode, key.key_id)

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


class RecordingCounters:
    """Counters that remember which names were incremented."""

    def __init__(self) -> None:
        self._inner = MemoryCache().counters
        self.names: list[str] = []

    async def increment(self, key: str, amount: int, ttl_seconds: float) -> CounterValue:
        self.names.append(key)
        return await self._inner.increment(key, amount, ttl_seconds)

    async def get(self, key: str) -> int:
        return await self._inner.get(key)


@pytest.mark.parametrize("mode", [Mode.TEST, Mode.LIVE])
async def test_attempt_counters_are_namespaced_by_organization_and_mode(mode: Mode) -> None:
    generated = generate_api_key(KeyKind.SECRET, mode)
    key, _ = _key()
    key = dataclasses.replace(
        key,
        mode=mode,
        lookup_id=generated.lookup_id,
        secret_hash=hash_api_key(generated.plaintext),
    )
    counters = RecordingCounters()
    verifier = KeyVerifier(Records(key), counters, wall_clock=lambda: NOW)
    with pytest.raises(errors.Unauthenticated):
        await verifier.verify(_wrong(generated.plaintext, 1), "attacker")
    assert counters.names == [f"auth-attempts:org_a:{mode.value}:{key.lookup_id}:attacker"]
    assert counters.names == [attempts_key(key, "attacker")]


async def test_unknown_lookup_ids_count_no_attempts() -> None:
    # Nothing to namespace them by, and nothing to protect: refused before any bcrypt.
    key, _ = _key()
    counters = RecordingCounters()
    verifier = KeyVerifier(Records(key), counters, wall_clock=lambda: NOW)
    unknown = generate_api_key(KeyKind.SECRET, Mode.TEST).plaintext
    with pytest.raises(errors.Unauthenticated):
        await verifier.verify(unknown, "attacker")
    assert counters.names == []
    assert verifier.bcrypt_checks == 0


async def test_a_key_change_reaches_only_that_organization_and_modes_key() -> None:
    key, plaintext = _key()
    records = Records(key)
    verifier = _verifier(records)
    await verifier.verify(plaintext, "client")
    records.key = dataclasses.replace(key, revoked_at=NOW)
    # Same key id, another organization or mode: not this key, its cached state stands.
    verifier.key_changed("org_b", Mode.TEST, key.key_id)
    verifier.key_changed(key.organization_id, Mode.LIVE, key.key_id)
    assert (await verifier.verify(plaintext, "client")).key_id == key.key_id
    verifier.key_changed(key.organization_id, Mode.TEST, key.key_id)
    with pytest.raises(errors.Unauthenticated):
        await verifier.verify(plaintext, "client")

"""API key verification with a cache, so bcrypt runs only on a miss.

- Positive cache keyed by the SHA-256 digest of the presented key: the bcrypt check
  happens once per key per process; revocation and expiry are still checked on
  every call (expiry from the cached record, revocation through invalidations).
- Negative cache: unknown or wrong keys are refused without a database query or
  bcrypt for a short while, so floods of garbage keys cannot pin the CPU.
- A counter per lookup id *and client* (shared through the cache backend) caps the
  bcrypt checks one client can cause against one key; other clients, and the key's
  legitimate holder, are never locked out by it. Its name carries the key's
  organization and mode, like every other cache key (``attempts_key``).
- bcrypt runs in worker threads behind a semaphore, never on the event loop, and
  concurrent misses for the same key share one verification, which runs in its own
  task so that one caller going away does not fail the others.
- A verification that overlapped an invalidation re-reads the key's state before
  it is cached, so a revocation published mid-bcrypt is never lost.
- Invalidations (``KeyInvalidationListener``) mark cached entries stale; while the
  listener is disconnected, or for a while after this replica failed to publish an
  invalidation (``distrust_invalidations``), entries older than ``STALE_AFTER`` are
  re-checked against the database, so a revocation is never missed for more than 2 s.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from typing import Protocol

from fanfare_grpc import errors
from fanfare_grpc.cache.protocols import CounterStore
from fanfare_grpc.crypto.digests import sha256_hex
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.api_keys import ApiKey, api_key_matches, parse_api_key

INVALID_CREDENTIALS = "missing or invalid credentials"
POSITIVE_TTL_SECONDS = 300.0
NEGATIVE_TTL_SECONDS = 10.0
STALE_AFTER_SECONDS = 1.0
MAX_CACHED_KEYS = 100_000
# Uncached verifications one client may cause per key per window (bcrypt each).
FAILURES_PER_WINDOW = 10
FAILURE_WINDOW_SECONDS = 60.0
BCRYPT_THREADS = 2


class KeyRecords(Protocol):
    """Where verification reads keys from."""

    async def find_by_lookup_id(self, lookup_id: str) -> ApiKey | None:
        """The key with this lookup id."""
        ...

    async def get(self, organization_id: str, mode: Mode, key_id: str) -> ApiKey | None:
        """The current state of a key."""
        ...


@dataclasses.dataclass
class _Verified:
    key: ApiKey
    state_checked_at: float


def attempts_key(key: ApiKey, client: str) -> str:
    """The attempt counter of one client against one key.

    Namespaced by the key's organization and mode like the rest of the cache: attempts
    are counted only once the lookup id found a stored key (an unknown one is refused
    before any bcrypt, and counts nothing), so both are always known here, taken from
    the stored record (the presented ``sk_test_``/``sk_live_`` prefix agrees with its
    mode, or the lookup would have found nothing).
    """
    return f"auth-attempts:{key.organization_id}:{key.mode.value}:{key.lookup_id}:{client}"


def _refuse() -> errors.Unauthenticated:
    return errors.Unauthenticated(INVALID_CREDENTIALS)


class KeyVerifier:
    """Verifies presented API keys; one instance per process."""

    def __init__(
        self,
        records: KeyRecords,
        failures: CounterStore,
        *,
        wall_clock: Callable[[], dt.datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records = records
        self._failures = failures
        self._now = wall_clock
        self._monotonic = monotonic
        self._verified: collections.OrderedDict[str, _Verified] = collections.OrderedDict()
        self._digests_by_key: dict[str, set[str]] = collections.defaultdict(set)
        self._refused: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._in_flight: dict[str, asyncio.Future[ApiKey]] = {}
        # Bumped by every invalidation: a verification that saw it change re-checks.
        self._generation = 0
        self._bcrypt_slots = asyncio.Semaphore(BCRYPT_THREADS)
        self.invalidations_connected = False
        # Until then (monotonic) a connected subscription is not trusted either.
        self._distrusted_until = float("-inf")
        self.bcrypt_checks = 0

    async def verify(self, presented: str, client: str = "") -> ApiKey:
        """The usable key behind ``presented``.

        Args:
            presented: The credential as sent.
            client: A digest identifying the caller (keyed IP hash) for attempt limits.

        Raises:
            Unauthenticated: Malformed, unknown, wrong, revoked or expired (one message).
        """
        parsed = parse_api_key(presented)
        if parsed is None:
            raise _refuse()
        digest = sha256_hex(presented)
        cached = self._verified.get(digest)
        if cached is not None:
            return await self._from_cache(digest, cached)
        refused_until = self._refused.get(digest)
        if refused_until is not None and refused_until > self._monotonic():
            raise _refuse()
        verification = self._in_flight.get(digest)
        if verification is None:
            verification = asyncio.ensure_future(
                self._verify_slowly(digest, parsed.lookup_id, presented, client)
            )
            self._in_flight[digest] = verification
            verification.add_done_callback(self._verification_done)
        # Shielded: a caller that goes away must not cancel the check others await.
        return await asyncio.shield(verification)

    def _verification_done(self, verification: asyncio.Future[ApiKey]) -> None:
        for digest, running in list(self._in_flight.items()):
            if running is verification:
                del self._in_flight[digest]
        if not verification.cancelled():
            # Retrieved here so that a check nobody awaits any more logs no warning.
            verification.exception()

    def key_changed(self, organization_id: str, mode: Mode, key_id: str) -> None:
        """A key of this organization and mode was revoked or rotated: re-check its
        state before the next use."""
        self._generation += 1
        for digest in self._digests_by_key.get(key_id, ()):
            entry = self._verified.get(digest)
            if (
                entry is not None
                and entry.key.organization_id == organization_id
                and entry.key.mode is mode
            ):
                entry.state_checked_at = float("-inf")

    def distrust_invalidations(self, seconds: float) -> None:
        """Invalidations may not be reaching replicas (one could not be published):
        re-check cached keys every ``STALE_AFTER_SECONDS`` for the next ``seconds``."""
        self._distrusted_until = max(self._distrusted_until, self._monotonic() + seconds)

    @property
    def invalidations_trusted(self) -> bool:
        """Whether a cached key may be believed for ``POSITIVE_TTL_SECONDS``."""
        return self.invalidations_connected and self._monotonic() >= self._distrusted_until

    def everything_changed(self) -> None:
        """Invalidations may have been missed: re-check every cached key's state."""
        self._generation += 1
        for entry in self._verified.values():
            entry.state_checked_at = float("-inf")

    async def _from_cache(self, digest: str, cached: _Verified) -> ApiKey:
        freshness = POSITIVE_TTL_SECONDS if self.invalidations_trusted else STALE_AFTER_SECONDS
        if self._monotonic() - cached.state_checked_at > freshness:
            current = await self._records.get(
                cached.key.organization_id, cached.key.mode, cached.key.key_id
            )
            if current is None or current.secret_hash != cached.key.secret_hash:
                self._forget(digest)
                raise _refuse()
            cached.key = current
            cached.state_checked_at = self._monotonic()
        if not cached.key.usable_at(self._now()):
            self._forget(digest)
            self._remember_refusal(digest)
            raise _refuse()
        self._verified.move_to_end(digest)
        return cached.key

    async def _verify_slowly(
        self, digest: str, lookup_id: str, presented: str, client: str
    ) -> ApiKey:
        generation = self._generation
        key = await self._records.find_by_lookup_id(lookup_id)
        if key is None:
            self._remember_refusal(digest)
            raise _refuse()
        # Attempts are counted before bcrypt, so concurrent guesses cannot overshoot.
        attempts = await self._failures.increment(
            attempts_key(key, client), 1, FAILURE_WINDOW_SECONDS
        )
        if attempts.value > FAILURES_PER_WINDOW:
            raise _refuse()
        async with self._bcrypt_slots:
            self.bcrypt_checks += 1
            matches = await asyncio.to_thread(api_key_matches, presented, key.secret_hash)
        if not matches:
            self._remember_refusal(digest)
            raise _refuse()
        if generation != self._generation:
            # An invalidation arrived while we looked: the record may be stale.
            current = await self._records.get(key.organization_id, key.mode, key.key_id)
            if current is None or current.secret_hash != key.secret_hash:
                raise _refuse()
            key = current
        if not key.usable_at(self._now()):
            self._remember_refusal(digest)
            raise _refuse()
        self._remember(digest, key)
        return key

    def _remember(self, digest: str, key: ApiKey) -> None:
        self._verified[digest] = _Verified(key, self._monotonic())
        self._digests_by_key[key.key_id].add(digest)
        while len(self._verified) > MAX_CACHED_KEYS:
            evicted_digest, evicted = self._verified.popitem(last=False)
            self._digests_by_key[evicted.key.key_id].discard(evicted_digest)

    def _forget(self, digest: str) -> None:
        entry = self._verified.pop(digest, None)
        if entry is not None:
            self._digests_by_key[entry.key.key_id].discard(digest)

    def _remember_refusal(self, digest: str) -> None:
        self._refused[digest] = self._monotonic() + NEGATIVE_TTL_SECONDS
        self._refused.move_to_end(digest)
        while len(self._refused) > MAX_CACHED_KEYS:
            self._refused.popitem(last=False)

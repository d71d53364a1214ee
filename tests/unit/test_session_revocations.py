"""SessionRevocations on its own: when a missing marker is believed, when the database
decides, and what happens to markers that could not be written."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence

import pytest

from fanfare_grpc import errors
from fanfare_grpc.authentication.session_revocations import (
    DATA_SET_CHANGED,
    DISTRUST_SECONDS,
    EPOCH_KEY,
    RECHECK_AFTER_SECONDS,
    SERVER_CHANGED,
    STALE_AFTER_SECONDS,
    SessionRevocations,
    revocation_marker,
)
from fanfare_grpc.cache.memory import MemoryCache
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.consumer_sessions import ConsumerSession

ORG = "org_a"
SESSION = "sess_a"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
MARKER_LIFETIME = dt.timedelta(minutes=15)


class Markers:
    """An in-memory KeyValueStore that can be broken (TTL ignored)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        # Values stored without expiry (the data-set epoch), kept apart from markers.
        self.permanent: dict[str, str] = {}
        self.broken = False
        self.slow: set[str] = set()

    def _check(self) -> None:
        if self.broken:
            raise ConnectionError("cache unreachable")

    async def set_if_absent(self, key: str, value: str, ttl_seconds: float) -> bool:
        self._check()
        return self.values.setdefault(key, value) == value

    async def set(self, key: str, value: str, ttl_seconds: float) -> None:
        self._check()
        for _ in range(3 if key in self.slow else 1):
            await asyncio.sleep(0)  # a round trip: other calls run meanwhile
        self.values[key] = value

    async def get(self, key: str) -> str | None:
        self._check()
        return self.values.get(key)

    async def delete(self, key: str) -> bool:
        self._check()
        return self.values.pop(key, None) is not None

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        self._check()
        return [self.values.get(key, self.permanent.get(key)) for key in keys]

    async def get_or_set(self, key: str, value: str) -> str:
        self._check()
        return self.permanent.setdefault(key, value)

    def lose_everything(self) -> None:
        """Redis restarted without persistence (or was flushed)."""
        self.values.clear()
        self.permanent.clear()


class Sessions:
    """The database: one session, and a count of reads."""

    def __init__(self) -> None:
        self.session = ConsumerSession(
            session_id=SESSION,
            organization_id=ORG,
            mode=Mode.TEST,
            consumer_id="cons_a",
            guest=True,
            device_hash="d",
            created_at=NOW,
            expires_at=NOW + dt.timedelta(days=30),
            last_seen_at=NOW,
        )
        self.reads = 0

    def revoke(self) -> None:
        self.session = dataclasses.replace(self.session, revoked_at=NOW)

    async def get_session(
        self, organization_id: str, mode: Mode, session_id: str
    ) -> ConsumerSession | None:
        self.reads += 1
        if (organization_id, mode, session_id) != (ORG, Mode.TEST, SESSION):
            return None
        return self.session


@dataclasses.dataclass
class Parts:
    revocations: SessionRevocations
    markers: Markers
    sessions: Sessions
    now: list[float]

    def advance(self, seconds: float) -> None:
        self.now[0] += seconds


def unstarted_parts(server: list[str] | None = None) -> Parts:
    """``server`` holds the cache server's current id (None: it has none)."""
    markers, sessions, now = Markers(), Sessions(), [100.0]

    async def server_id() -> str | None:
        return None if server is None else server[0]

    revocations = SessionRevocations(
        markers,
        sessions,
        marker_lifetime=MARKER_LIFETIME,
        logger=logging.getLogger("test.session_revocations"),
        monotonic=lambda: now[0],
        server_id=server_id,
    )
    return Parts(revocations, markers, sessions, now)


@pytest.fixture
async def parts() -> Parts:
    """Started, as the server starts it: the cache's epoch is known."""
    started = unstarted_parts()
    await started.revocations.start()
    return started


async def standing_revoked(parts: Parts, confirmed_at: float) -> bool:
    standing = await parts.revocations.standing(ORG, Mode.TEST, SESSION, confirmed_at)
    return standing.revoked


async def test_a_marker_revokes_without_a_database_read(parts: Parts) -> None:
    await parts.revocations.sessions_revoked(ORG, Mode.TEST, [SESSION])
    assert parts.markers.values == {revocation_marker(ORG, Mode.TEST, SESSION): "1"}
    assert await standing_revoked(parts, confirmed_at=parts.now[0])
    assert parts.sessions.reads == 0


async def test_markers_are_namespaced_by_organization_and_mode() -> None:
    assert revocation_marker(ORG, Mode.LIVE, SESSION) == "org_a:live:sessions:revoked:sess_a"
    assert revocation_marker(ORG, Mode.TEST, SESSION) != revocation_marker(
        "org_b", Mode.TEST, SESSION
    )


async def test_while_markers_work_the_database_is_read_only_every_recheck_period(
    parts: Parts,
) -> None:
    confirmed_at = parts.now[0]
    parts.advance(RECHECK_AFTER_SECONDS)
    assert not await standing_revoked(parts, confirmed_at)
    assert parts.sessions.reads == 0
    # Past the period the database is asked even though markers work: a replica
    # that never saw the cache fail still learns of a marker that another one lost.
    parts.sessions.revoke()
    parts.advance(1)
    assert await standing_revoked(parts, confirmed_at)
    assert parts.sessions.reads == 1


async def test_an_unreadable_marker_is_not_a_live_session(parts: Parts) -> None:
    confirmed_at = parts.now[0]
    parts.sessions.revoke()  # its marker was never written
    parts.markers.broken = True
    parts.advance(STALE_AFTER_SECONDS)
    assert not await standing_revoked(parts, confirmed_at)  # within the bound
    assert not parts.revocations.markers_trusted
    parts.advance(0.01)
    assert await standing_revoked(parts, confirmed_at)
    assert parts.sessions.reads == 1


async def test_a_live_session_is_reconfirmed_at_most_every_stale_period_while_distrusted(
    parts: Parts,
) -> None:
    parts.markers.broken = True
    confirmed_at = parts.now[0]
    parts.advance(STALE_AFTER_SECONDS + 1)
    standing = await parts.revocations.standing(ORG, Mode.TEST, SESSION, confirmed_at)
    assert not standing.revoked
    assert standing.confirmed_at == parts.now[0]
    assert parts.sessions.reads == 1
    # The new confirmation holds for the next STALE_AFTER_SECONDS: no read per call.
    parts.advance(1)
    assert not await standing_revoked(parts, standing.confirmed_at)
    assert parts.sessions.reads == 1


async def test_distrust_ends_some_time_after_the_last_failure(parts: Parts) -> None:
    parts.markers.broken = True
    await parts.revocations.standing(ORG, Mode.TEST, SESSION, parts.now[0])
    parts.markers.broken = False
    parts.advance(DISTRUST_SECONDS - 1)
    await parts.revocations.standing(ORG, Mode.TEST, SESSION, parts.now[0])
    assert not parts.revocations.markers_trusted
    parts.advance(1)
    assert parts.revocations.markers_trusted


async def test_a_marker_that_cannot_be_written_fails_the_call_and_is_retried(
    parts: Parts,
) -> None:
    parts.markers.broken = True
    with pytest.raises(errors.Unavailable):
        await parts.revocations.sessions_revoked(ORG, Mode.TEST, [SESSION, "sess_b"])
    assert parts.revocations.pending == 2
    assert not parts.revocations.markers_trusted
    # This replica refuses the session from memory, without the cache or the database.
    assert await standing_revoked(parts, confirmed_at=parts.now[0])
    assert parts.sessions.reads == 0
    await parts.revocations.retry_pending()
    assert parts.revocations.pending == 2
    parts.markers.broken = False
    await parts.revocations.retry_pending()
    assert parts.revocations.pending == 0
    assert set(parts.markers.values) == {
        revocation_marker(ORG, Mode.TEST, SESSION),
        revocation_marker(ORG, Mode.TEST, "sess_b"),
    }


async def test_a_retry_of_the_revoking_call_writes_the_marker(parts: Parts) -> None:
    parts.markers.broken = True
    with pytest.raises(errors.Unavailable):
        await parts.revocations.sessions_revoked(ORG, Mode.TEST, [SESSION])
    parts.markers.broken = False
    await parts.revocations.sessions_revoked(ORG, Mode.TEST, [SESSION])
    assert parts.revocations.pending == 0
    assert revocation_marker(ORG, Mode.TEST, SESSION) in parts.markers.values


async def test_a_pending_marker_is_dropped_once_every_token_has_expired(parts: Parts) -> None:
    parts.markers.broken = True
    with pytest.raises(errors.Unavailable):
        await parts.revocations.sessions_revoked(ORG, Mode.TEST, [SESSION])
    parts.advance(MARKER_LIFETIME.total_seconds())
    await parts.revocations.retry_pending()
    assert parts.revocations.pending == 0


async def test_an_outage_is_logged_once_and_its_end_once(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.session_revocations")
    parts.markers.broken = True
    with pytest.raises(errors.Unavailable):
        await parts.revocations.sessions_revoked(ORG, Mode.TEST, [SESSION])
    for _ in range(5):
        await parts.revocations.retry_pending()
        await parts.revocations.standing(ORG, Mode.TEST, "sess_b", parts.now[0])
    parts.markers.broken = False
    await parts.revocations.retry_pending()
    lines = [(record.levelno, record.getMessage(), record.exc_info) for record in caplog.records]
    assert [(level, exc_info) for level, _, exc_info in lines] == [
        (logging.WARNING, None),
        (logging.INFO, None),
    ]
    assert lines[0][1].startswith("session revocation markers: backend unreachable")
    assert lines[1][1].startswith("session revocation markers: recovered after ")


async def test_the_retry_task_skips_a_marker_a_repeated_revoke_wrote_meanwhile(
    parts: Parts,
) -> None:
    parts.markers.broken = True
    with pytest.raises(errors.Unavailable):
        await parts.revocations.sessions_revoked(ORG, Mode.TEST, [SESSION, "sess_b"])
    parts.markers.broken = False
    # The retry is still writing the first marker when a repeated revoke writes the
    # second: the retry then finds it written already.
    parts.markers.slow.add(revocation_marker(ORG, Mode.TEST, SESSION))
    await asyncio.gather(
        parts.revocations.retry_pending(),
        parts.revocations.sessions_revoked(ORG, Mode.TEST, ["sess_b"]),
    )
    assert parts.revocations.pending == 0


# --- the cache losing its data (restart without persistence, failover, flush) ------


async def test_a_lost_marker_is_not_a_live_session_once_the_data_set_changed(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.session_revocations")
    confirmed_at = parts.now[0]
    parts.advance(1)
    parts.sessions.revoke()
    await parts.revocations.sessions_revoked(ORG, Mode.TEST, [SESSION])
    parts.markers.lose_everything()  # no error anywhere: the marker is just gone
    parts.advance(0.01)
    assert await standing_revoked(parts, confirmed_at)
    assert parts.sessions.reads == 1
    assert EPOCH_KEY in parts.markers.permanent  # stored again for the other replicas
    errors_logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors_logged == [DATA_SET_CHANGED]


async def test_a_live_session_is_rechecked_once_after_the_data_set_changed(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.session_revocations")
    confirmed_at = parts.now[0]
    parts.advance(1)
    parts.markers.lose_everything()
    standing = await parts.revocations.standing(ORG, Mode.TEST, SESSION, confirmed_at)
    assert not standing.revoked
    assert standing.confirmed_at == parts.now[0]
    assert parts.sessions.reads == 1
    # Confirmed after the change: the markers cover it again, no read per call.
    parts.advance(1)
    for _ in range(3):
        assert not await standing_revoked(parts, standing.confirmed_at)
    assert parts.sessions.reads == 1
    assert [r.levelno for r in caplog.records].count(logging.ERROR) == 1


async def test_an_epoch_stored_by_another_replica_after_a_loss_is_noticed(parts: Parts) -> None:
    """Another replica noticed the loss first and stored a new epoch: the marker this
    replica would have read is gone all the same."""
    confirmed_at = parts.now[0]
    parts.advance(1)
    parts.sessions.revoke()
    parts.markers.lose_everything()
    parts.markers.permanent[EPOCH_KEY] = "stored-by-another-replica"
    assert await standing_revoked(parts, confirmed_at)
    assert parts.sessions.reads == 1
    assert parts.markers.permanent[EPOCH_KEY] == "stored-by-another-replica"


async def test_until_the_epoch_is_known_confirmations_are_rechecked() -> None:
    """The cache was unreachable when the server started: a session confirmed before
    the epoch could be read is re-checked once it can."""
    parts = unstarted_parts()
    parts.markers.broken = True
    await parts.revocations.start()  # does not raise: the first marker read retries
    parts.markers.broken = False
    parts.advance(DISTRUST_SECONDS)
    confirmed_at = parts.now[0]
    parts.advance(1)
    parts.sessions.revoke()
    assert await standing_revoked(parts, confirmed_at)
    assert parts.sessions.reads == 1


async def test_the_in_process_cache_keeps_its_epoch(parts: Parts) -> None:
    """The same path on the in-process cache: it never loses data apart from the
    process, so its epoch never changes and nothing is re-checked."""
    memory = MemoryCache()
    now = [100.0]
    revocations = SessionRevocations(
        memory.values,
        parts.sessions,
        marker_lifetime=MARKER_LIFETIME,
        logger=logging.getLogger("test.session_revocations"),
        monotonic=lambda: now[0],
    )
    await revocations.start()
    epoch = await memory.values.get(EPOCH_KEY)
    assert epoch is not None
    confirmed_at = now[0]
    now[0] += RECHECK_AFTER_SECONDS
    assert not (await revocations.standing(ORG, Mode.TEST, SESSION, confirmed_at)).revoked
    assert parts.sessions.reads == 0
    assert await memory.values.get(EPOCH_KEY) == epoch


async def test_a_new_cache_server_that_kept_the_epoch_is_noticed_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis restarted from a snapshot older than the marker (or failed over to a
    replica that lagged): the epoch survived, the marker did not."""
    caplog.set_level(logging.INFO, logger="test.session_revocations")
    server = ["run-1"]
    parts = unstarted_parts(server)
    await parts.revocations.start()
    confirmed_at = parts.now[0]
    parts.advance(1)
    parts.sessions.revoke()
    await parts.revocations.sessions_revoked(ORG, Mode.TEST, [SESSION])
    parts.markers.values.clear()  # the epoch is kept in ``permanent``
    server[0] = "run-2"
    await parts.revocations.check_server()  # what ``run`` does every second
    assert await standing_revoked(parts, confirmed_at)
    assert parts.sessions.reads == 1
    await parts.revocations.check_server()
    errors_logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors_logged == [SERVER_CHANGED]


async def test_the_same_cache_server_changes_nothing() -> None:
    server = ["run-1"]
    parts = unstarted_parts(server)
    await parts.revocations.start()
    confirmed_at = parts.now[0]
    parts.advance(1)
    await parts.revocations.check_server()
    assert not await standing_revoked(parts, confirmed_at)
    assert parts.sessions.reads == 0

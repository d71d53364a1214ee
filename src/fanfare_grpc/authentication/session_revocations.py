"""Whether a consumer session is revoked: the one place that answers it on a replica.

The database is the authority: a revoke commits there first. A marker per revoked
session in the shared cache (``{org}:{mode}:sessions:revoked:{session}``) then tells
every replica on its next call, without a database read. A marker is trusted only
while the cache works, so a lost marker never means a live token (fail closed):

- A marker that cannot be written fails the revoking call with UNAVAILABLE: the
  database revoke stays, and revoking again is safe and writes the marker again. The
  marker is also retried in the background every ``RETRY_INTERVAL_SECONDS`` until it
  is written, and until then this replica refuses the session from memory.
- A marker that cannot be read never means "not revoked": the session is judged by
  the database instead.
- From a failed marker write or read until ``DISTRUST_SECONDS`` after the last one,
  and while any marker waits for its retry, a cached token is re-checked against the
  database when its session was last confirmed more than ``STALE_AFTER_SECONDS`` ago
  (as ``KeyVerifier`` does for keys while invalidations are down). Otherwise the
  re-check happens every ``RECHECK_AFTER_SECONDS`` regardless: that bounds what a
  replica that never saw the cache fail can miss while another replica's marker
  waits for its retry.

Losing the cache's data (Redis restarted without persistence, failed over to an empty
replica, flushed) raises no error: markers just vanish. So the cache holds a
data-set epoch (``EPOCH_KEY``, a random value stored without expiry by the first
replica that finds none), read with every marker in the same round trip. Each
replica remembers the epoch it saw; a missing or different one means markers
written before may be gone, so every session confirmation made before this replica
noticed is re-checked against the database on its token's next call (once), and
the epoch is stored again for the next replica to notice. A session confirmed after
the change is covered by markers again: any later revoke writes its marker into the
new data set. A restart that reloads an older snapshot (or a failover to a replica
that lagged) keeps the epoch but not the markers written since: the server's id
(Redis ``run_id``) is read every ``RETRY_INTERVAL_SECONDS`` for that, and a new one
has the same effect as a new epoch, within that interval.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from fanfare_grpc import errors
from fanfare_grpc.cache.protocols import KeyValueStore
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.consumer_sessions import ConsumerSession
from fanfare_grpc.outages import DependencyOutages, RetriedFailureLog

STALE_AFTER_SECONDS = 2.0
RECHECK_AFTER_SECONDS = 300.0
DISTRUST_SECONDS = 30.0
RETRY_INTERVAL_SECONDS = 1.0
# Cache key of the data-set epoch: it changes only when the cache lost its data.
EPOCH_KEY = "sessions:revocation-epoch"
DATA_SET_CHANGED = (
    "cache data set changed (Redis restarted without persistence, failed over or "
    "was flushed): revocation markers written before may be lost; every cached "
    "consumer session is re-checked against the database on its next call"
)
SERVER_CHANGED = (
    "cache server changed (Redis restarted or failed over): revocation markers written "
    "since its last save may be lost; every cached consumer session is re-checked "
    "against the database on its next call"
)
MARKER_NOT_WRITTEN = (
    "session revoked, but not yet announced to every server (cache unavailable): "
    "retry the call, repeating it is safe"
)

_SessionKey = tuple[str, Mode, str]


class SessionReader(Protocol):
    """Where session state is read (the authority)."""

    async def get_session(
        self, organization_id: str, mode: Mode, session_id: str
    ) -> ConsumerSession | None:
        """One session."""
        ...


@dataclasses.dataclass(frozen=True)
class Standing:
    """A session's standing, and when (monotonic) the database last said it was live."""

    revoked: bool
    confirmed_at: float


def revocation_marker(organization_id: str, mode: Mode, session_id: str) -> str:
    """Cache key whose presence means: this session's access tokens are dead."""
    return f"{organization_id}:{mode.value}:sessions:revoked:{session_id}"


class SessionRevocations:
    """Publishes revocations to every replica and judges sessions; one per process."""

    def __init__(
        self,
        markers: KeyValueStore,
        sessions: SessionReader,
        *,
        marker_lifetime: dt.timedelta,
        logger: logging.Logger,
        monotonic: Callable[[], float] = time.monotonic,
        outages: DependencyOutages | None = None,
        server_id: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self._markers = markers
        self._read_server_id = server_id
        self._server_id: str | None = None
        self._sessions = sessions
        self._marker_seconds = marker_lifetime.total_seconds()
        self._monotonic = monotonic
        self._failures = RetriedFailureLog(
            logger,
            "session revocation markers",
            meanwhile=(
                "revoking calls answer UNAVAILABLE; cached consumer tokens re-checked "
                f"against the database every {STALE_AFTER_SECONDS:g} s"
            ),
            outages=outages,
        )
        # Markers not yet written, with when they stop mattering (every token dead).
        self._pending: dict[_SessionKey, float] = {}
        self._distrusted_until = float("-inf")
        self._logger = logger
        # The cache's data-set epoch this replica last saw, and since when (monotonic)
        # it has seen it: a session confirmed earlier than that may have lost its marker.
        self._epoch: str | None = None
        self._epoch_seen_since = math.inf

    async def start(self) -> None:
        """Learn the cache's epoch (storing one if there is none) and server id before
        any token is confirmed; if the cache cannot say, the first marker read learns
        the epoch instead."""
        await self.check_server()
        try:
            epoch = await self._markers.get_or_set(EPOCH_KEY, _new_epoch())
        except Exception as error:  # noqa: BLE001 - logged by _marker_failed
            self._marker_failed(error)
            return
        self._adopt(epoch)

    async def check_server(self) -> None:
        """Read the cache server's id: a new one may have lost recent markers, so every
        earlier confirmation is re-checked (the epoch stays: it may have survived)."""
        if self._read_server_id is None:
            return
        try:
            server_id = await self._read_server_id()
        except Exception:  # noqa: BLE001 - an outage shows in marker reads and writes
            return
        if server_id is None or server_id == self._server_id:
            return
        if self._server_id is not None:
            self._logger.error(SERVER_CHANGED)
        # Also when first learnt (the cache was down at start): what was confirmed
        # before cannot be tied to this server.
        self._epoch_seen_since = max(self._epoch_seen_since, self._monotonic())
        self._server_id = server_id

    @property
    def markers_trusted(self) -> bool:
        """Whether a missing marker may be believed (no recent failure, none pending)."""
        return not self._pending and self._monotonic() >= self._distrusted_until

    @property
    def pending(self) -> int:
        """Markers waiting for their background retry."""
        return len(self._pending)

    async def sessions_revoked(
        self, organization_id: str, mode: Mode, session_ids: Sequence[str]
    ) -> None:
        """Tell every replica that these sessions (revoked in the database) are dead.

        Raises:
            Unavailable: A marker could not be written; it is retried in the
                background, and revoking again writes it again.
        """
        failed = False
        for session_id in session_ids:
            key = (organization_id, mode, session_id)
            self._pending.setdefault(key, self._monotonic() + self._marker_seconds)
            failed = not await self._write(key) or failed
        if failed:
            raise errors.RepeatableUnavailable(MARKER_NOT_WRITTEN)

    async def standing(
        self, organization_id: str, mode: Mode, session_id: str, confirmed_at: float
    ) -> Standing:
        """Whether the session is revoked, for a token whose session the database last
        confirmed live at ``confirmed_at`` (monotonic); re-read from the database when
        the markers cannot vouch for it."""
        if (organization_id, mode, session_id) in self._pending:
            return Standing(True, confirmed_at)
        epoch_before = self._epoch
        backed = True
        try:
            marker, epoch = await self._markers.get_many(
                [revocation_marker(organization_id, mode, session_id), EPOCH_KEY]
            )
        except Exception as error:  # noqa: BLE001 - logged by _marker_failed
            self._marker_failed(error)
            marked = False  # unknown, not "not revoked": the database decides below
        else:
            self._marker_worked()
            marked = marker is not None
            # Read in the same command as the marker: if it is still the epoch this
            # replica saw before the session was confirmed, no marker was lost since.
            # (Another call of this replica may have moved on to a newer epoch while
            # this read was in flight: that is not a change, and the newer
            # ``_epoch_seen_since`` only makes the check below stricter.)
            if epoch is None or epoch not in (epoch_before, self._epoch):
                await self._data_set_changed(epoch)
            backed = confirmed_at >= self._epoch_seen_since
        if marked:
            return Standing(True, confirmed_at)
        now = self._monotonic()
        max_age = RECHECK_AFTER_SECONDS if self.markers_trusted else STALE_AFTER_SECONDS
        if backed and now - confirmed_at <= max_age:
            return Standing(False, confirmed_at)
        session = await self._sessions.get_session(organization_id, mode, session_id)
        if session is None or session.revoked_at is not None:
            return Standing(True, confirmed_at)
        return Standing(False, now)

    async def retry_pending(self) -> None:
        """Write the markers that could not be written (stop at the first failure)."""
        now = self._monotonic()
        for key, deadline in list(self._pending.items()):
            if deadline <= now:
                del self._pending[key]  # every token of the session has expired
            elif not await self._write(key):
                return

    async def run(self, interval_seconds: float = RETRY_INTERVAL_SECONDS) -> None:
        """Retry pending markers and watch the cache server's id until cancelled."""
        while True:
            await asyncio.sleep(interval_seconds)
            await self.check_server()
            if self._pending:
                await self.retry_pending()

    async def _write(self, key: _SessionKey) -> bool:
        deadline = self._pending.get(key)
        if deadline is None:
            return True  # written meanwhile by a concurrent call or the retry task
        remaining = deadline - self._monotonic()
        try:
            if remaining > 0:
                await self._markers.set(revocation_marker(*key), "1", remaining)
        except Exception as error:  # noqa: BLE001 - logged by _marker_failed
            self._marker_failed(error)
            return False
        self._pending.pop(key, None)
        self._marker_worked()
        return True

    async def _data_set_changed(self, seen: str | None) -> None:
        """The epoch read was missing or new: adopt the current one (storing a new one if
        missing), so that every earlier confirmation is re-checked."""
        if self._epoch is not None:
            self._logger.error(DATA_SET_CHANGED)
        # Until an epoch is adopted again every confirmation is re-checked (and a
        # concurrent call noticing the same change does not log it again).
        self._epoch, self._epoch_seen_since = None, math.inf
        if seen is None:
            try:
                seen = await self._markers.get_or_set(EPOCH_KEY, _new_epoch())
            except Exception as error:  # noqa: BLE001 - logged by _marker_failed
                self._marker_failed(error)
                return
        self._adopt(seen)

    def _adopt(self, epoch: str) -> None:
        if epoch != self._epoch:
            self._epoch = epoch
            # Taken after the read: a session confirmed from now on was confirmed
            # while this epoch (and every marker written since) was in the cache.
            self._epoch_seen_since = self._monotonic()

    def _marker_failed(self, error: Exception) -> None:
        self._distrusted_until = self._monotonic() + DISTRUST_SECONDS
        self._failures.failed(error)

    def _marker_worked(self) -> None:
        if not self._pending:
            self._failures.succeeded()


def _new_epoch() -> str:
    """A value no data set ever had: a stored epoch is never mistaken for another."""
    return secrets.token_hex(16)

"""Caps on open ``WatchPosition`` streams per consumer session and per client.

Each open stream costs this process memory (about 25 KB: the call, its layers and a
watcher) and a place in its queue's poll, so one token or one host must not open
thousands. The counts are kept per process ("per replica"): the resource they
protect is this process's memory, they need no round trip to open a stream, and they
cannot outlive the process that holds the streams (a crashed replica leaks nothing).
A client spread over several replicas gets the caps on each of them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Callable, Iterator

from fanfare_grpc import errors

# A slot frees when one of the client's own streams ends, which it controls: retry soon.
RETRY_AFTER_SECONDS = 5


@dataclasses.dataclass(frozen=True)
class StreamLimits:
    """How many streams may be open at once in this process.

    Attributes:
        per_session: Streams of one consumer session.
        per_client: Streams from one client IP address (all sessions, all
            organizations).
    """

    per_session: int = 4
    per_client: int = 64


class StreamSlots:
    """Counts open streams; a slot is held for exactly as long as its stream runs.

    Args:
        limits: The caps.
        client_digest: Keyed digest of a client IP (raw addresses are never kept).
    """

    def __init__(self, limits: StreamLimits, client_digest: Callable[[str], str]) -> None:
        self._limits = limits
        self._client_digest = client_digest
        self._sessions: collections.Counter[str] = collections.Counter()
        self._clients: collections.Counter[str] = collections.Counter()

    @property
    def open_streams(self) -> int:
        """Slots held in this process."""
        return self._clients.total()

    @contextlib.contextmanager
    def hold(
        self, organization_id: str, mode: str, session_id: str, client_host: str
    ) -> Iterator[None]:
        """Hold one slot of the session and one of the client until the block exits.

        Raises:
            ResourceExhausted: The session or the client has its maximum open; the
                message says which.
        """
        session = f"{organization_id}:{mode}:{session_id}"
        client = self._client_digest(client_host)
        if self._sessions[session] >= self._limits.per_session:
            raise errors.ResourceExhausted(
                f"too many open position streams for this session "
                f"(at most {self._limits.per_session}); close one first",
                retry_after_seconds=RETRY_AFTER_SECONDS,
            )
        if self._clients[client] >= self._limits.per_client:
            raise errors.ResourceExhausted(
                f"too many open position streams from this client address "
                f"(at most {self._limits.per_client}); close one first",
                retry_after_seconds=RETRY_AFTER_SECONDS,
            )
        self._sessions[session] += 1
        self._clients[client] += 1
        try:
            yield
        finally:
            _release(self._sessions, session)
            _release(self._clients, client)


def _release(counts: collections.Counter[str], key: str) -> None:
    # Keys at zero are deleted: the counters hold only clients with open streams.
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]

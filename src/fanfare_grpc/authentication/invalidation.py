"""Key invalidations between replicas, over the cache backend's pub/sub.

One channel per deployment (the Redis backend prefixes it), and each message names
the key's organization and mode: ``{organization id}:{mode}:{key id}``. Namespacing
the message rather than the channel keeps one subscription per replica however many
organizations there are (no pattern subscriptions, one outage to watch), while a
change only ever touches the cached key of that organization and mode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fanfare_grpc import errors
from fanfare_grpc.authentication.key_verifier import (
    POSITIVE_TTL_SECONDS,
    STALE_AFTER_SECONDS,
    KeyVerifier,
)
from fanfare_grpc.backends import is_backend_unavailable
from fanfare_grpc.cache.protocols import PubSub
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.outages import DependencyOutages, OutageLog, RetriedFailureLog

CHANNEL = "api-keys:changed"
RECONNECT_DELAY_SECONDS = 0.5
RETRY_INTERVAL_SECONDS = 1.0
DISTRUST_SECONDS = 30.0
CHANGE_NOT_ANNOUNCED = (
    "api key changed, but not yet announced to every server (cache unavailable): "
    "retry the call, repeating it is safe"
)


def key_change_message(organization_id: str, mode: Mode, key_id: str) -> str:
    """What is broadcast on ``CHANNEL`` when a key changes."""
    return f"{organization_id}:{mode.value}:{key_id}"


def parse_key_change(message: str) -> tuple[str, Mode, str] | None:
    """(organization id, mode, key id), or None if ``message`` is not in that form."""
    parts = message.split(":")
    modes = {mode.value: mode for mode in Mode}
    if len(parts) != 3 or not all(parts) or parts[1] not in modes:
        return None
    return parts[0], modes[parts[1]], parts[2]


class PubSubKeyInvalidations:
    """``KeyInvalidationPublisher`` that broadcasts key changes on ``CHANNEL``, failing
    closed: a change that could not be broadcast is never answered OK.

    The change is committed already when it is announced, and a replica whose
    subscription stayed up keeps a cached key for ``POSITIVE_TTL_SECONDS`` unless it
    hears of it (a failed publish says nothing about other replicas' connections). So
    when the publish fails:

    - this replica re-checks the key against the database on its next use, and re-checks
      every cached key every ``STALE_AFTER_SECONDS`` until ``DISTRUST_SECONDS`` after the
      last failure (its own subscription may be missing messages too);
    - the call answers UNAVAILABLE (``RepeatableUnavailable``): the revoke or rotation
      stands, and repeating the call announces it again;
    - the announcement is retried in the background every ``RETRY_INTERVAL_SECONDS``
      until it is published, or until every replica has re-read the key anyway
      (``POSITIVE_TTL_SECONDS`` after the change).
    """

    def __init__(
        self,
        pubsub: PubSub,
        logger: logging.Logger,
        verifier: KeyVerifier,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        outages: DependencyOutages | None = None,
    ) -> None:
        self._pubsub = pubsub
        self._verifier = verifier
        self._monotonic = monotonic
        self._failures = RetriedFailureLog(
            logger,
            "key change broadcasts",
            meanwhile=(
                "revoking and rotating calls answer UNAVAILABLE; cached API keys "
                f"re-checked every {STALE_AFTER_SECONDS:g} s on this server"
            ),
            outages=outages,
        )
        # Messages not yet published, with when they stop mattering (every replica has
        # re-read the key by then).
        self._pending: dict[str, float] = {}

    @property
    def pending(self) -> int:
        """Announcements waiting for their background retry."""
        return len(self._pending)

    async def key_changed(self, organization_id: str, mode: Mode, key_id: str) -> None:
        """Announce a committed key change to every replica.

        Raises:
            RepeatableUnavailable: Not announced; retried in the background, and
                repeating the call announces it again.
        """
        message = key_change_message(organization_id, mode, key_id)
        self._pending[message] = self._monotonic() + POSITIVE_TTL_SECONDS
        if not await self._publish(message):
            # This replica refuses at once, whatever the others may still believe.
            self._verifier.key_changed(organization_id, mode, key_id)
            raise errors.RepeatableUnavailable(CHANGE_NOT_ANNOUNCED)

    async def retry_pending(self) -> None:
        """Publish the announcements that failed (stop at the first failure)."""
        now = self._monotonic()
        for message, deadline in list(self._pending.items()):
            if deadline <= now:
                del self._pending[message]  # every replica has re-read the key since
            elif not await self._publish(message):
                return

    async def run(self, interval_seconds: float = RETRY_INTERVAL_SECONDS) -> None:
        """Retry pending announcements until cancelled."""
        while True:
            await asyncio.sleep(interval_seconds)
            if self._pending:
                await self.retry_pending()

    async def _publish(self, message: str) -> bool:
        if message not in self._pending:
            return True  # published meanwhile by a concurrent call or the retry task
        try:
            await self._pubsub.publish(CHANNEL, message)
        except Exception as error:  # noqa: BLE001 - logged by RetriedFailureLog
            self._verifier.distrust_invalidations(DISTRUST_SECONDS)
            self._failures.failed(error)
            return False
        self._pending.pop(message, None)
        if not self._pending:
            self._failures.succeeded()
        return True


class KeyInvalidationListener:
    """Feeds broadcast key changes to this process's ``KeyVerifier``; reconnects forever."""

    def __init__(
        self,
        pubsub: PubSub,
        verifier: KeyVerifier,
        logger: logging.Logger,
        *,
        outages: DependencyOutages | None = None,
    ) -> None:
        self._pubsub = pubsub
        self._verifier = verifier
        self._logger = logger
        self._outage = OutageLog(
            logger,
            "key invalidation channel",
            meanwhile="cached API keys re-checked every 1 s",
            outages=outages,
        )
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled."""
        while True:
            try:
                async with self._pubsub.subscribe(CHANNEL) as subscription:
                    # Whatever was published while we were away is lost: re-check all.
                    self._verifier.everything_changed()
                    self._verifier.invalidations_connected = True
                    self.subscribed.set()
                    self._outage.succeeded()
                    async for message in subscription:
                        self._deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # Cleanup failed while we were being cancelled: stop, do not retry.
                    raise asyncio.CancelledError from None
                if is_backend_unavailable(error):
                    # Redis is down: say so once, not twice a second with a traceback.
                    self._outage.failed(error)
                else:
                    self._logger.warning(
                        "key invalidation channel lost; re-checking keys every 1 s",
                        exc_info=True,
                    )
            finally:
                self._verifier.invalidations_connected = False
                self.subscribed.clear()
            await asyncio.sleep(RECONNECT_DELAY_SECONDS)

    def _deliver(self, message: str) -> None:
        change = parse_key_change(message)
        if change is None:
            # Not ours to decode (a bare key id from a replica of an older version,
            # during a rolling upgrade): never drop a possible revocation, re-check all.
            self._verifier.everything_changed()
        else:
            self._verifier.key_changed(*change)

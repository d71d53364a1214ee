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

from fanfare_grpc.authentication.key_verifier import KeyVerifier
from fanfare_grpc.backends import is_backend_unavailable
from fanfare_grpc.cache.protocols import PubSub
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.outages import OutageLog

CHANNEL = "api-keys:changed"
RECONNECT_DELAY_SECONDS = 0.5


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
    """``KeyInvalidationPublisher`` that broadcasts key changes on ``CHANNEL``."""

    def __init__(self, pubsub: PubSub, logger: logging.Logger) -> None:
        self._pubsub = pubsub
        self._logger = logger

    async def key_changed(self, organization_id: str, mode: Mode, key_id: str) -> None:
        # The change is committed already: failing the call now would hide its result
        # (a rotated key's new secret). If Redis cannot take the message, the
        # replicas' subscriptions are down too, and they re-check keys every second.
        try:
            await self._pubsub.publish(CHANNEL, key_change_message(organization_id, mode, key_id))
        except Exception:
            self._logger.warning(
                "could not broadcast a key change", extra={"key_id": key_id}, exc_info=True
            )


class KeyInvalidationListener:
    """Feeds broadcast key changes to this process's ``KeyVerifier``; reconnects forever."""

    def __init__(self, pubsub: PubSub, verifier: KeyVerifier, logger: logging.Logger) -> None:
        self._pubsub = pubsub
        self._verifier = verifier
        self._logger = logger
        self._outage = OutageLog(
            logger, "key invalidation channel", meanwhile="cached API keys re-checked every 1 s"
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

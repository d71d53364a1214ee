"""Domain events: what happened, for webhooks (outbox, later) and tests.

Publishers never fail the change that caused the event: the webhook issue replaces
the recorder with an outbox written in the same transaction.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any, Protocol

QUEUE_CONSUMER_ENTERED = "queue.consumer.entered"
QUEUE_CONSUMER_ADMITTED = "queue.consumer.admitted"
QUEUE_CONSUMER_COMPLETED = "queue.consumer.completed"
QUEUE_CONSUMER_LEFT = "queue.consumer.left"
QUEUE_CONSUMER_DENIED = "queue.consumer.denied"
QUEUE_CONSUMER_EXPIRED = "queue.consumer.expired"
QUEUE_OPENED = "queue.opened"
QUEUE_CLOSED = "queue.closed"
HANDOFF_REDEEMED = "handoff.redeemed"


@dataclasses.dataclass(frozen=True)
class DomainEvent:
    """One event of one organization and mode."""

    event_type: str
    organization_id: str
    mode: str
    occurred_at: dt.datetime
    data: Mapping[str, Any]


class EventPublisher(Protocol):
    """Where events go."""

    async def publish(self, event: DomainEvent) -> None:
        """Record ``event`` (must not raise for a committed change)."""
        ...


class RecordingEventPublisher:
    """Keeps the latest events in memory and logs each one (until the webhook outbox)."""

    def __init__(self, logger: logging.Logger, capacity: int = 10_000) -> None:
        self._logger = logger
        self.events: collections.deque[DomainEvent] = collections.deque(maxlen=capacity)

    async def publish(self, event: DomainEvent) -> None:
        self.events.append(event)
        self._logger.debug(
            "domain event",
            extra={
                "event": event.event_type,
                "organization_id": event.organization_id,
                "mode": event.mode,
            },
        )

    def of_type(self, event_type: str) -> list[DomainEvent]:
        """Recorded events of one type, oldest first."""
        return [event for event in self.events if event.event_type == event_type]

"""QueueService: queue configuration, entries, positions, admission, handoff."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from fanfare.queue.v1 import queue_pb2, queue_service_pb2, queue_service_pb2_grpc

from fanfare_grpc.domain.access import KeyKind, Principal
from fanfare_grpc.domain.position_feed import PositionFeed, StreamCaller
from fanfare_grpc.domain.queue_config import NewQueue, QueueConfigService
from fanfare_grpc.domain.queue_entries import HandoffVerdict, Position, QueueEntries
from fanfare_grpc.domain.queue_state import EntryStatus
from fanfare_grpc.domain.queues import Queue as QueueConfig
from fanfare_grpc.domain.queues import QueueChanges, QueueStatus
from fanfare_grpc.servicers import convert
from fanfare_grpc.servicers.principal import client_host, current_principal, redemption_key

_QUEUE_STATUSES = {
    QueueStatus.DRAFT: queue_pb2.QUEUE_STATUS_DRAFT,
    QueueStatus.SCHEDULED: queue_pb2.QUEUE_STATUS_SCHEDULED,
    QueueStatus.OPEN: queue_pb2.QUEUE_STATUS_OPEN,
    QueueStatus.PAUSED: queue_pb2.QUEUE_STATUS_PAUSED,
    QueueStatus.CLOSED: queue_pb2.QUEUE_STATUS_CLOSED,
}
_QUEUE_STATUSES_FROM_PROTO = {int(value): status for status, value in _QUEUE_STATUSES.items()}
_ENTRY_STATUSES = {
    EntryStatus.QUEUED: queue_pb2.ENTRY_STATUS_QUEUED,
    EntryStatus.ADMITTED: queue_pb2.ENTRY_STATUS_ADMITTED,
    EntryStatus.COMPLETED: queue_pb2.ENTRY_STATUS_COMPLETED,
    EntryStatus.DENIED: queue_pb2.ENTRY_STATUS_DENIED,
    EntryStatus.LEFT: queue_pb2.ENTRY_STATUS_LEFT,
    EntryStatus.EXPIRED: queue_pb2.ENTRY_STATUS_EXPIRED,
}
_HANDOFF_REASONS = {
    HandoffVerdict.OK: queue_pb2.HANDOFF_TOKEN_REASON_OK,
    HandoffVerdict.EXPIRED: queue_pb2.HANDOFF_TOKEN_REASON_EXPIRED,
    HandoffVerdict.ALREADY_USED: queue_pb2.HANDOFF_TOKEN_REASON_ALREADY_USED,
    HandoffVerdict.WRONG_QUEUE: queue_pb2.HANDOFF_TOKEN_REASON_WRONG_QUEUE,
    HandoffVerdict.INVALID: queue_pb2.HANDOFF_TOKEN_REASON_INVALID,
}


def _from_epoch(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


def queue_message(queue: QueueConfig, *, public_only: bool = False) -> queue_pb2.Queue:
    """A queue; for publishable keys only what shoppers may see."""
    message = queue_pb2.Queue(
        queue_id=queue.queue_id,
        name=queue.name,
        status=_QUEUE_STATUSES[queue.status],
        mode=convert.mode_to_proto(convert.mode_from_text(queue.mode)),
        opens_at=convert.timestamp(queue.opens_at),
        closes_at=convert.timestamp(queue.closes_at),
    )
    if not public_only:
        message.admission_rate_per_minute = queue.admission_rate_per_minute
        message.handoff_ttl.CopyFrom(convert.duration(queue.handoff_ttl))
        message.max_size = queue.max_size
        message.created_at.FromDatetime(queue.created_at)
        message.updated_at.FromDatetime(queue.updated_at)
    return message


def entry_message(position: Position) -> queue_pb2.Entry:
    """An entry with its place in line (and handoff token once admitted)."""
    entry = position.entry
    message = queue_pb2.Entry(
        queue_id=position.queue.queue_id,
        consumer_id=entry.consumer_id,
        session_id=entry.session_id,
        status=_ENTRY_STATUSES[entry.status],
        position=position.position,
        ahead=position.ahead,
        pre_queue=position.pre_queue,
        entered_at=convert.timestamp(_from_epoch(entry.entered_at)),
        admitted_at=convert.timestamp(_from_epoch(entry.admitted_at)),
        ended_at=convert.timestamp(_from_epoch(entry.ended_at)),
    )
    if position.estimated_wait is not None:
        message.estimated_wait.CopyFrom(convert.duration(position.estimated_wait))
    if position.handoff_token is not None:
        message.handoff_token = position.handoff_token
        expires_at = _from_epoch(entry.handoff_expires_at)
        if expires_at is not None:
            message.handoff_expires_at.FromDatetime(expires_at)
    return message


def _consumer(principal: Principal) -> str:
    assert principal.consumer_id is not None, "authorization requires a consumer token"
    return principal.consumer_id


class QueueServicer(queue_service_pb2_grpc.QueueServiceServicer):
    """Thin: proto in, domain call, proto out."""

    def __init__(
        self, config: QueueConfigService, entries: QueueEntries, feed: PositionFeed
    ) -> None:
        self._config = config
        self._entries = entries
        self._feed = feed

    async def CreateQueue(
        self, request: queue_service_pb2.CreateQueueRequest, context: Any
    ) -> queue_service_pb2.CreateQueueResponse:
        organization_id, mode = current_principal().tenant()
        queue = await self._config.create(
            organization_id,
            mode.value,
            NewQueue(
                name=request.name,
                admission_rate_per_minute=request.admission_rate_per_minute,
                opens_at=_optional_time(request, "opens_at"),
                closes_at=_optional_time(request, "closes_at"),
                handoff_ttl=(
                    convert.from_duration(request.handoff_ttl, "handoff_ttl")
                    if request.HasField("handoff_ttl")
                    else None
                ),
                max_size=request.max_size,
            ),
        )
        return queue_service_pb2.CreateQueueResponse(queue=queue_message(queue))

    async def GetQueue(
        self, request: queue_service_pb2.GetQueueRequest, context: Any
    ) -> queue_service_pb2.GetQueueResponse:
        principal = current_principal()
        organization_id, mode = principal.tenant()
        if principal.key_kind is KeyKind.PUBLISHABLE:
            # Shoppers poll this during a drop: served from the short-lived copy.
            queue = await self._entries.queue(organization_id, mode.value, request.queue_id)
            return queue_service_pb2.GetQueueResponse(queue=queue_message(queue, public_only=True))
        queue = await self._config.get(organization_id, mode.value, request.queue_id)
        return queue_service_pb2.GetQueueResponse(queue=queue_message(queue))

    async def ListQueues(
        self, request: queue_service_pb2.ListQueuesRequest, context: Any
    ) -> queue_service_pb2.ListQueuesResponse:
        organization_id, mode = current_principal().tenant()
        queues, next_page_token = await self._config.list(
            organization_id,
            mode.value,
            _QUEUE_STATUSES_FROM_PROTO.get(request.status),
            request.page_size,
            request.page_token,
        )
        return queue_service_pb2.ListQueuesResponse(
            queues=[queue_message(queue) for queue in queues], next_page_token=next_page_token
        )

    async def UpdateQueue(
        self, request: queue_service_pb2.UpdateQueueRequest, context: Any
    ) -> queue_service_pb2.UpdateQueueResponse:
        organization_id, mode = current_principal().tenant()
        queue = await self._config.update(
            organization_id,
            mode.value,
            request.queue_id,
            QueueChanges(
                fields=frozenset(request.update_mask.paths),
                name=request.name,
                opens_at=_optional_time(request, "opens_at"),
                closes_at=_optional_time(request, "closes_at"),
                admission_rate_per_minute=request.admission_rate_per_minute,
                handoff_ttl=(
                    convert.from_duration(request.handoff_ttl, "handoff_ttl")
                    if request.HasField("handoff_ttl")
                    else None
                ),
                max_size=request.max_size,
            ),
        )
        return queue_service_pb2.UpdateQueueResponse(queue=queue_message(queue))

    async def DeleteQueue(
        self, request: queue_service_pb2.DeleteQueueRequest, context: Any
    ) -> queue_service_pb2.DeleteQueueResponse:
        organization_id, mode = current_principal().tenant()
        await self._config.delete(organization_id, mode.value, request.queue_id)
        return queue_service_pb2.DeleteQueueResponse()

    async def OpenQueue(
        self, request: queue_service_pb2.OpenQueueRequest, context: Any
    ) -> queue_service_pb2.OpenQueueResponse:
        organization_id, mode = current_principal().tenant()
        queue = await self._config.open(organization_id, mode.value, request.queue_id)
        return queue_service_pb2.OpenQueueResponse(queue=queue_message(queue))

    async def PauseQueue(
        self, request: queue_service_pb2.PauseQueueRequest, context: Any
    ) -> queue_service_pb2.PauseQueueResponse:
        organization_id, mode = current_principal().tenant()
        queue = await self._config.pause(organization_id, mode.value, request.queue_id)
        return queue_service_pb2.PauseQueueResponse(queue=queue_message(queue))

    async def CloseQueue(
        self, request: queue_service_pb2.CloseQueueRequest, context: Any
    ) -> queue_service_pb2.CloseQueueResponse:
        organization_id, mode = current_principal().tenant()
        queue = await self._config.close(organization_id, mode.value, request.queue_id)
        return queue_service_pb2.CloseQueueResponse(queue=queue_message(queue))

    async def EnterQueue(
        self, request: queue_service_pb2.EnterQueueRequest, context: Any
    ) -> queue_service_pb2.EnterQueueResponse:
        principal = current_principal()
        organization_id, mode = principal.tenant()
        assert principal.session_id is not None and principal.device_hash is not None
        position = await self._entries.enter(
            organization_id,
            mode.value,
            request.queue_id,
            consumer_id=_consumer(principal),
            session_id=principal.session_id,
            device_hash=principal.device_hash,
        )
        return queue_service_pb2.EnterQueueResponse(entry=entry_message(position))

    async def GetPosition(
        self, request: queue_service_pb2.GetPositionRequest, context: Any
    ) -> queue_service_pb2.GetPositionResponse:
        principal = current_principal()
        organization_id, mode = principal.tenant()
        position = await self._entries.position(
            organization_id, mode.value, request.queue_id, _consumer(principal)
        )
        return queue_service_pb2.GetPositionResponse(
            entry=entry_message(position), queue_status=_QUEUE_STATUSES[position.queue.status]
        )

    async def WatchPosition(
        self, request: queue_service_pb2.WatchPositionRequest, context: Any
    ) -> AsyncIterator[queue_service_pb2.WatchPositionResponse]:
        principal = current_principal()
        organization_id, mode = principal.tenant()
        assert principal.session_id is not None, "authorization requires a consumer token"
        caller = StreamCaller(_consumer(principal), principal.session_id, client_host())
        positions = self._feed.watch(organization_id, mode.value, request.queue_id, caller)
        async with contextlib.aclosing(positions):
            async for position in positions:
                yield queue_service_pb2.WatchPositionResponse(
                    entry=entry_message(position),
                    queue_status=_QUEUE_STATUSES[position.queue.status],
                )

    async def LeaveQueue(
        self, request: queue_service_pb2.LeaveQueueRequest, context: Any
    ) -> queue_service_pb2.LeaveQueueResponse:
        principal = current_principal()
        organization_id, mode = principal.tenant()
        position = await self._entries.leave(
            organization_id, mode.value, request.queue_id, _consumer(principal)
        )
        return queue_service_pb2.LeaveQueueResponse(entry=entry_message(position))

    async def AdmitConsumers(
        self, request: queue_service_pb2.AdmitConsumersRequest, context: Any
    ) -> queue_service_pb2.AdmitConsumersResponse:
        organization_id, mode = current_principal().tenant()
        admitted = await self._entries.admit_now(
            organization_id, mode.value, request.queue_id, request.count
        )
        return queue_service_pb2.AdmitConsumersResponse(admitted_count=len(admitted))

    async def DenyConsumer(
        self, request: queue_service_pb2.DenyConsumerRequest, context: Any
    ) -> queue_service_pb2.DenyConsumerResponse:
        organization_id, mode = current_principal().tenant()
        position = await self._entries.deny(
            organization_id, mode.value, request.queue_id, request.consumer_id, request.reason
        )
        return queue_service_pb2.DenyConsumerResponse(entry=entry_message(position))

    async def CompleteConsumer(
        self, request: queue_service_pb2.CompleteConsumerRequest, context: Any
    ) -> queue_service_pb2.CompleteConsumerResponse:
        organization_id, mode = current_principal().tenant()
        position = await self._entries.complete(
            organization_id, mode.value, request.queue_id, request.consumer_id
        )
        return queue_service_pb2.CompleteConsumerResponse(entry=entry_message(position))

    async def ValidateHandoffToken(
        self, request: queue_service_pb2.ValidateHandoffTokenRequest, context: Any
    ) -> queue_service_pb2.ValidateHandoffTokenResponse:
        organization_id, mode = current_principal().tenant()
        check = await self._entries.validate_handoff(
            organization_id,
            mode.value,
            request.handoff_token,
            request.queue_id if request.HasField("queue_id") else None,
            redemption_key(),
        )
        response = queue_service_pb2.ValidateHandoffTokenResponse(
            valid=check.verdict is HandoffVerdict.OK, reason=_HANDOFF_REASONS[check.verdict]
        )
        if check.claims is not None:
            response.consumer_id = check.claims.consumer_id
            response.queue_id = check.claims.queue_id
            response.session_id = check.claims.session_id
        return response

    async def GetQueueStats(
        self, request: queue_service_pb2.GetQueueStatsRequest, context: Any
    ) -> queue_service_pb2.GetQueueStatsResponse:
        organization_id, mode = current_principal().tenant()
        stats = await self._entries.stats(organization_id, mode.value, request.queue_id)
        response = queue_service_pb2.GetQueueStatsResponse(
            waiting=stats.counters.waiting,
            admitted=stats.counters.admitted,
            completed=stats.counters.completed,
            denied=stats.counters.denied,
            left=stats.counters.left,
            expired=stats.counters.expired,
            admission_rate_per_minute=stats.admissions_per_minute,
            status=_QUEUE_STATUSES[stats.queue.status],
        )
        if stats.oldest_wait is not None:
            response.oldest_wait.CopyFrom(convert.duration(stats.oldest_wait))
        if stats.state_lost_at is not None:
            response.state_lost_at.FromDatetime(stats.state_lost_at)
        return response


def _optional_time(request: Any, field: str) -> dt.datetime | None:
    return (
        convert.from_timestamp(getattr(request, field), field) if request.HasField(field) else None
    )

"""Helpers for queue tests: a consumer world plus QueueService calls."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.queue.v1 import queue_service_pb2_grpc
from google.protobuf import timestamp_pb2

from fanfare_grpc.app import Application
from fanfare_grpc.domain.queue_entries import queue_ref
from fanfare_grpc.domain.queue_state import EnterOutcome, EntryRecord, EntryStatus
from tests.consumers import ConsumerWorld, Metadata, Tenant, consumer_metadata
from tests.grpc_helpers import bearer


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    converted = timestamp_pb2.Timestamp()
    converted.FromDatetime(value)
    return converted


async def seed_waiting(
    application: Application, organization_id: str, queue_id: str, count: int, mode: str = "test"
) -> None:
    """``count`` consumers waiting in the queue, entered through the store (thousands of
    sign-ins through the API would take minutes and test nothing more)."""
    queue = await application.queue_config.get(organization_id, mode, queue_id)
    store, ref = application.cache.queue_states, queue_ref(queue)
    entered_at = application.clock().timestamp()
    slots = asyncio.Semaphore(64)

    async def enter(index: int) -> None:
        record = EntryRecord(
            consumer_id=f"cons_seed{index:06d}",
            session_id=f"sess_seed{index:06d}",
            device_hash=f"device-seed-{index:06d}",
            status=EntryStatus.QUEUED,
            entered_at=entered_at,
        )
        async with slots:
            result = await store.enter(ref, record, score=-1.0, max_size=None)
        assert result.outcome is EnterOutcome.ENTERED

    await asyncio.gather(*(enter(index) for index in range(count)))


@dataclasses.dataclass(frozen=True)
class Shopper:
    """A guest consumer with the metadata of its calls."""

    consumer_id: str
    session_id: str
    metadata: Metadata


@dataclasses.dataclass
class QueueWorld:
    """A consumer world with a QueueService stub."""

    world: ConsumerWorld

    @property
    def stub(self) -> queue_service_pb2_grpc.QueueServiceStub:
        return queue_service_pb2_grpc.QueueServiceStub(self.world.channel)

    def operator(self, tenant: Tenant | None = None) -> Metadata:
        return bearer((tenant or self.world.acme).secret_key)

    async def create(
        self, tenant: Tenant | None = None, **fields: object
    ) -> queues.CreateQueueResponse:
        fields.setdefault("name", "drop")
        fields.setdefault("admission_rate_per_minute", 60)
        response: queues.CreateQueueResponse = await self.stub.CreateQueue(
            queues.CreateQueueRequest(**fields),  # type: ignore[arg-type]
            metadata=self.operator(tenant),
        )
        return response

    async def open_queue(self, tenant: Tenant | None = None, **fields: object) -> str:
        queue_id = (await self.create(tenant, **fields)).queue.queue_id
        await self.stub.OpenQueue(
            queues.OpenQueueRequest(queue_id=queue_id), metadata=self.operator(tenant)
        )
        return queue_id

    async def shopper(self, device: str, tenant: Tenant | None = None) -> Shopper:
        tenant = tenant or self.world.acme
        guest = await self.world.guest(tenant, device=device)
        return Shopper(
            guest.session.consumer_id,
            guest.session.session_id,
            consumer_metadata(tenant.publishable_key, guest.access_token, device),
        )

    async def enter(self, queue_id: str, shopper: Shopper) -> queues.EnterQueueResponse:
        response: queues.EnterQueueResponse = await self.stub.EnterQueue(
            queues.EnterQueueRequest(queue_id=queue_id), metadata=shopper.metadata
        )
        return response

    async def position(self, queue_id: str, shopper: Shopper) -> queues.GetPositionResponse:
        response: queues.GetPositionResponse = await self.stub.GetPosition(
            queues.GetPositionRequest(queue_id=queue_id), metadata=shopper.metadata
        )
        return response

    async def admit(self, queue_id: str, count: int) -> int:
        response: queues.AdmitConsumersResponse = await self.stub.AdmitConsumers(
            queues.AdmitConsumersRequest(queue_id=queue_id, count=count),
            metadata=self.operator(),
        )
        return response.admitted_count

    async def validate(
        self, token: str, queue_id: str | None = None, tenant: Tenant | None = None
    ) -> queues.ValidateHandoffTokenResponse:
        request = queues.ValidateHandoffTokenRequest(handoff_token=token)
        if queue_id is not None:
            request.queue_id = queue_id
        response: queues.ValidateHandoffTokenResponse = await self.stub.ValidateHandoffToken(
            request, metadata=self.operator(tenant)
        )
        return response

"""Helpers for queue tests: a consumer world plus QueueService calls."""

from __future__ import annotations

import dataclasses
import datetime as dt

from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.queue.v1 import queue_service_pb2_grpc
from google.protobuf import timestamp_pb2

from tests.consumers import ConsumerWorld, Metadata, Tenant, consumer_metadata
from tests.grpc_helpers import bearer


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    converted = timestamp_pb2.Timestamp()
    converted.FromDatetime(value)
    return converted


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

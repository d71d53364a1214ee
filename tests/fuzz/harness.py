"""A real server on its own event loop thread, for Hypothesis' synchronous tests.

Hypothesis drives examples from a plain function; the server, its backends and the
client channel live on one asyncio loop in a background thread (as in the other
integration tests, client and server share a loop), and each example's call is
submitted there and awaited with a hard limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.common.v1 import common_pb2
from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.queue.v1 import queue_service_pb2_grpc
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import MethodDescriptor
from grpc import aio

from fanfare_grpc.app import LOGGER_NAME
from fanfare_grpc.logs import QUIET_LOGGERS, JsonFormatter, ThirdPartyRedaction
from fanfare_grpc.settings import Settings
from tests.consumers import ConsumerWorld, consumer_metadata, serving_consumer_world
from tests.grpc_helpers import bearer

T = TypeVar("T")
Metadata = tuple[tuple[str, str | bytes], ...]


class LoopThread:
    """An asyncio loop running in a daemon thread; ``run`` waits for a coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class LogCapture(logging.Handler):
    """Every server log record, filtered and formatted as production's handler does."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ThirdPartyRedaction())
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._lock:
            self.lines.append(line)

    def since(self, start: int) -> list[str]:
        with self._lock:
            return self.lines[start:]


@contextlib.contextmanager
def capture_server_log() -> Iterator[LogCapture]:
    """Capture the service log at DEBUG, with the drivers as quiet as in production."""
    capture = LogCapture()
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in (LOGGER_NAME, *QUIET_LOGGERS)}
    root.addHandler(capture)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@dataclasses.dataclass
class Targets:
    """Real resources a fuzzed request may name, fresh for each RPC."""

    open_queue: str
    draft_queue: str
    scheduled_queue: str
    handoff_token: str


@dataclasses.dataclass
class FuzzWorld:
    """Server, credentials of each kind, a victim consumer, and the log."""

    loop: LoopThread
    world: ConsumerWorld
    log: LogCapture
    consumer_access_token: str = ""
    victim_consumer_id: str = ""
    victim_session_id: str = ""
    victim_access_token: str = ""
    victim_refresh_token: str = ""
    spare_key_id: str = ""
    spare_key_secret: str = ""
    foreign_queue: str = ""
    secrets: list[str] = dataclasses.field(default_factory=list)

    CONSUMER_DEVICE = "fuzz-device"
    VICTIM_DEVICE = "victim-device"

    @property
    def admin(self) -> str:
        return self.world.acme.secret_key

    def credentials(self, kind: str) -> Metadata:
        """Metadata of one credential kind: none, sk ADMIN, pk, or pk + consumer token."""
        acme = self.world.acme
        if kind == "sk":
            return bearer(self.admin)
        if kind == "pk":
            return consumer_metadata(acme.publishable_key, device=self.CONSUMER_DEVICE)
        if kind == "consumer":
            return consumer_metadata(
                acme.publishable_key, self.consumer_access_token, self.CONSUMER_DEVICE
            )
        return ()

    async def setup(self) -> None:
        """Credentials, a victim session and a spare key; every secret is remembered."""
        world = self.world
        await self.renew_consumer()
        victim = await world.guest(device=self.VICTIM_DEVICE)
        self.victim_consumer_id = victim.session.consumer_id
        self.victim_session_id = victim.session.session_id
        self.victim_access_token = victim.access_token
        self.victim_refresh_token = victim.refresh_token
        spare: auth.CreateApiKeyResponse = await world.auth.CreateApiKey(
            auth.CreateApiKeyRequest(
                kind=common_pb2.API_KEY_KIND_SECRET, role=common_pb2.ROLE_READONLY, name="spare"
            ),
            metadata=bearer(self.admin),
        )
        self.spare_key_id = spare.api_key.key_id
        self.spare_key_secret = spare.secret
        self.foreign_queue = await self._queue(bearer(world.globex.secret_key))
        for tenant in (world.acme, world.globex):
            self.secrets += [
                tenant.organization.test_admin_key.plaintext,
                tenant.organization.live_admin_key.plaintext,
                tenant.publishable_key,
                tenant.live_publishable_key,
            ]
        self.secrets += [
            self.victim_access_token,
            self.victim_refresh_token,
            self.spare_key_secret,
        ]

    async def renew_consumer(self) -> None:
        """A fresh consumer session for the credential (a fuzzed call may revoke it)."""
        guest = await self.world.guest(device=self.CONSUMER_DEVICE)
        self.consumer_access_token = guest.access_token
        self.secrets += [guest.access_token, guest.refresh_token]

    async def _queue(self, metadata: Metadata, **fields: Any) -> str:
        stub = queue_service_pb2_grpc.QueueServiceStub(self.world.channel)
        created: queues.CreateQueueResponse = await stub.CreateQueue(
            queues.CreateQueueRequest(name="fuzz", admission_rate_per_minute=60, **fields),
            metadata=metadata,
        )
        return created.queue.queue_id

    async def targets(self) -> Targets:
        """An OPEN queue the consumer is in and the victim was admitted to, and two more."""
        stub = queue_service_pb2_grpc.QueueServiceStub(self.world.channel)
        admin = bearer(self.admin)
        open_queue = await self._queue(admin)
        await stub.OpenQueue(queues.OpenQueueRequest(queue_id=open_queue), metadata=admin)
        victim = consumer_metadata(
            self.world.acme.publishable_key, self.victim_access_token, self.VICTIM_DEVICE
        )
        handoff_token = ""
        with contextlib.suppress(grpc.aio.AioRpcError):
            # The victim's session may have been revoked by an earlier fuzzed call.
            await stub.EnterQueue(queues.EnterQueueRequest(queue_id=open_queue), metadata=victim)
            await stub.AdmitConsumers(
                queues.AdmitConsumersRequest(queue_id=open_queue, count=1), metadata=admin
            )
            position: queues.GetPositionResponse = await stub.GetPosition(
                queues.GetPositionRequest(queue_id=open_queue), metadata=victim
            )
            handoff_token = position.entry.handoff_token
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.EnterQueue(
                queues.EnterQueueRequest(queue_id=open_queue), metadata=self.credentials("consumer")
            )
        if handoff_token:
            self.secrets.append(handoff_token)
        opens_at = timestamp_pb2.Timestamp()
        opens_at.FromDatetime(self.world.clock() + dt.timedelta(hours=1))
        return Targets(
            open_queue=open_queue,
            draft_queue=await self._queue(admin),
            scheduled_queue=await self._queue(admin, opens_at=opens_at),
            handoff_token=handoff_token,
        )

    def hints(self, targets: Targets) -> dict[str, Sequence[str]]:
        """Valid values by field name, so that some requests reach the domain."""
        return {
            "queue_id": [
                targets.open_queue,
                targets.draft_queue,
                targets.scheduled_queue,
                self.foreign_queue,
            ],
            "consumer_id": [self.victim_consumer_id],
            "session_id": [self.victim_session_id],
            "key_id": [self.spare_key_id],
            "access_token": [self.victim_access_token],
            "refresh_token": [self.victim_refresh_token],
            "handoff_token": [targets.handoff_token] if targets.handoff_token else [],
            "device_fingerprint": [self.VICTIM_DEVICE],
            "name": ["drop"],
            "page_token": [""],
            "url": ["https://example.com/webhook"],
            "event_types": ["queue.opened"],
            "reason": ["sold out"],
            "email": ["fan@example.com"],
            "code": ["123456"],
        }


@contextlib.asynccontextmanager
async def fuzz_world(settings: Settings, loop: LoopThread) -> AsyncIterator[FuzzWorld]:
    """A server with two tenants, a consumer and a victim; stopped afterwards."""
    with capture_server_log() as log:
        async with serving_consumer_world(settings, run_worker=False) as world:
            # After the world's own log capture, which sets INFO while it runs.
            logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG)
            fuzz = FuzzWorld(loop, world, log)
            await fuzz.setup()
            yield fuzz


async def invoke(
    channel: aio.Channel,
    method: MethodDescriptor,
    body: bytes,
    metadata: Metadata,
    deadline_seconds: float,
) -> tuple[grpc.StatusCode, str]:
    """Send one request; the status code and message (stream: first message at most)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path)(body, metadata=metadata, timeout=deadline_seconds)
            first = await stream.read()
            if first is aio.EOF:
                return await stream.code(), await stream.details()
            stream.cancel()
            return grpc.StatusCode.OK, "first message received"
        unary: Awaitable[Any] = channel.unary_unary(path)(
            body, metadata=metadata, timeout=deadline_seconds
        )
        await unary
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""

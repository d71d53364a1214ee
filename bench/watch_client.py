"""Position-stream client: many ``WatchPosition`` streams in one process.

Started by ``bench.queues`` as ``python -m bench.watch_client FD`` (one end of a
socket pair, like ``bench.load_client``), several processes per measurement:

1. harness -> client: the ``WatchPlan``.
2. client -> harness: ``("ready", opened)`` once every stream of the plan has its
   first message (the consumer's QUEUED position), or ``("error", message)``.
3. harness -> client: ``("admit", t0)``: the ``time.monotonic_ns()`` at which the
   harness sent ``AdmitConsumers``. The monotonic clock is system-wide on Linux,
   so receipt times of other processes compare with it.
4. client -> harness: ``("result", WatchResult)`` once every stream has seen its
   consumer ADMITTED and ended, or at the plan's deadline.

Streams are spread over ``channels`` connections (own subchannel pool each, so they
really are separate TCP connections) and opened at most ``open_concurrency`` at a
time, so opening 10 k streams does not trip call deadlines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from multiprocessing.connection import Connection

from fanfare.queue.v1 import queue_pb2
from fanfare.queue.v1 import queue_service_pb2 as queues
from grpc import aio

from bench.load_client import Metadata, child_main, run_child

WATCH_POSITION = "/fanfare.queue.v1.QueueService/WatchPosition"
_ADMITTED = queue_pb2.ENTRY_STATUS_ADMITTED
_QUEUED = queue_pb2.ENTRY_STATUS_QUEUED


@dataclasses.dataclass(frozen=True)
class WatchPlan:
    """What one stream client does.

    Attributes:
        address: ``127.0.0.1:PORT`` of the SUT.
        queue_id: The queue every stream watches.
        metadata: One stream per entry: pk, device and consumer access token.
        channels: Connections to spread the streams over.
        open_concurrency: Streams waiting for their first message at most at once.
        ready_timeout_seconds: To open every stream and get its first message.
        admit_timeout_seconds: From ``admit`` until every stream must be ADMITTED.
    """

    address: str
    queue_id: str
    metadata: tuple[Metadata, ...]
    channels: int
    open_concurrency: int = 100
    ready_timeout_seconds: float = 120.0
    admit_timeout_seconds: float = 60.0


@dataclasses.dataclass(frozen=True)
class WatchResult:
    """What one stream client saw after ``admit``.

    Attributes:
        latencies_ns: Per stream that saw ADMITTED: receipt time minus ``t0``.
        errors: Streams that did not: status code name, ``ENDED_NOT_ADMITTED``, or
            ``NOT_ADMITTED_IN_TIME``.
        updates_before_admit: Messages after the first one, before ``admit``
            (heartbeats and position changes).
        client_cpu_seconds: CPU this process used from ``admit`` to its result.
    """

    latencies_ns: list[int]
    errors: dict[str, int]
    updates_before_admit: int
    client_cpu_seconds: float


class _Stream:
    """One WatchPosition call and what it received."""

    def __init__(self, call: aio.UnaryStreamCall[bytes, bytes]) -> None:
        self.call = call
        self.admitted_ns: int | None = None
        self.error: str | None = None
        self.updates = 0

    async def first(self) -> None:
        """Wait for the first message: the consumer must be QUEUED."""
        raw = await self.call.read()
        if raw is aio.EOF:
            raise RuntimeError("a position stream ended before its first message")
        status = queues.WatchPositionResponse.FromString(raw).entry.status
        if status != _QUEUED:
            raise RuntimeError(f"a watched consumer is not QUEUED but {status}")

    async def follow(self, admit: asyncio.Event) -> None:
        """Read until ADMITTED (time-stamped) or the end of the stream."""
        try:
            # read(), not ``async for``: grpc.aio refuses to mix the two on one call.
            while (raw := await self.call.read()) is not aio.EOF:
                message = queues.WatchPositionResponse.FromString(raw)
                if message.entry.status == _ADMITTED:
                    self.admitted_ns = time.monotonic_ns()
                    return
                if not admit.is_set():
                    self.updates += 1
            self.error = "ENDED_NOT_ADMITTED"
        except aio.AioRpcError as error:
            self.error = error.code().name


async def _open(
    channel: aio.Channel, request: bytes, metadata: Metadata, gate: asyncio.Semaphore
) -> _Stream:
    async with gate:
        watch: aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(WATCH_POSITION)
        stream = _Stream(watch(request, metadata=metadata))
        await stream.first()
        return stream


async def _drive(plan: WatchPlan, connection: Connection) -> WatchResult:
    request = queues.WatchPositionRequest(queue_id=plan.queue_id).SerializeToString()
    channels = [
        aio.insecure_channel(plan.address, options=(("grpc.use_local_subchannel_pool", 1),))
        for _ in range(max(1, plan.channels))
    ]
    try:
        gate = asyncio.Semaphore(plan.open_concurrency)
        streams = await asyncio.wait_for(
            asyncio.gather(
                *(
                    _open(channels[index % len(channels)], request, metadata, gate)
                    for index, metadata in enumerate(plan.metadata)
                )
            ),
            plan.ready_timeout_seconds,
        )
        admit = asyncio.Event()
        followers = [asyncio.create_task(stream.follow(admit)) for stream in streams]
        connection.send(("ready", len(streams)))
        if not await asyncio.to_thread(connection.poll, plan.ready_timeout_seconds):
            raise TimeoutError("no admit signal from the harness")
        kind, t0 = connection.recv()
        if kind != "admit":
            raise RuntimeError(f"unexpected message {kind!r}")
        admit.set()
        cpu_start = time.process_time()
        _, pending = await asyncio.wait(followers, timeout=plan.admit_timeout_seconds)
        for task in pending:
            task.cancel()
        errors: Counter[str] = Counter()
        latencies = []
        for stream in streams:
            if stream.admitted_ns is not None:
                latencies.append(stream.admitted_ns - t0)
            else:
                errors[stream.error or "NOT_ADMITTED_IN_TIME"] += 1
        return WatchResult(
            latencies_ns=latencies,
            errors=dict(errors),
            updates_before_admit=sum(stream.updates for stream in streams),
            client_cpu_seconds=time.process_time() - cpu_start,
        )
    finally:
        for channel in channels:
            await channel.close(grace=None)


def client_process_main(connection: Connection) -> None:
    """Receive the watch plan, run it, send the result (or the error) back."""
    run_child(connection, _drive, "watch")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.watch_client FD``: FD is the harness's end of a socket pair."""
    return child_main(
        argv, "python -m bench.watch_client FD (started by bench.queues)", client_process_main
    )


if __name__ == "__main__":
    # The copy imported under its real name pickles WatchResult as bench.watch_client.
    from bench.watch_client import main as imported_main

    raise SystemExit(imported_main())

"""Queue benchmarks (issue 5): positions in long lines, an entry burst, position streams.

They need the Redis cache (``python -m bench.run --redis URL``): the long lines are
bulk-loaded into the SUT's Redis keys (``bench.queue_fill``), and the burst is
compared with raw Redis. Every queue is created through the API (sk ADMIN
``CreateQueue`` + ``OpenQueue``; the SUT runs no worker, so nobody is admitted
unless a case says so); every measured consumer is a real guest session (pk
``CreateGuestSession``) that entered through ``EnterQueue``.

- ``get_position_1k`` / ``_100k`` / ``_1m``: ``GetPosition`` at concurrency 16 by
  ``POSITION_CONSUMERS`` consumers standing in the middle of a line of 1 k, 100 k or
  1 M bulk-loaded consumers (three queues, measured in alternating rounds like any
  unary case). ``_100k`` and ``_1m`` are divided by ``_1k``, ``_1k`` by the bare echo.
- ``enter_queue_burst``: ``BURST_CONSUMERS`` fresh guest sessions call
  ``EnterQueue`` once each at concurrency ``BURST_CONCURRENCY`` (first call of each
  token: cold token cache), into a line already ``BURST_LINE_LENGTH -
  BURST_CONSUMERS`` long, so they are the last ones of a 100 k burst. Its reference,
  ``redis_enter_pipeline``, writes the same ZADD + HSET + HSET per consumer from
  redis-py in the harness process: one pipeline (round trip) per consumer, as many
  in flight; the extra ``batched_1000_entries_per_s`` is 1,000 consumers per round trip.
- ``watch_position_fanout_1k`` / ``_5k`` / ``_10k``: that many ``WatchPosition``
  streams in one SUT process (``bench.watch_client`` processes). Server RSS before
  and with the streams open, server cores while they idle for one heartbeat period
  (``IDLE_WINDOW_SECONDS``), then one ``AdmitConsumers`` admits every watched
  consumer and each stream's time from that call to its ADMITTED message is the
  latency (calls/s = streams ÷ the slowest stream's time).

Setup (sessions, bulk loads, entries, opening streams) is never measured; it is
reported on stderr. Guest sessions are the slow part (≈ 100–140 per second here,
a bcrypt hash and a database insert each), so one crowd of sessions serves the
burst and then the fan-out queues (a consumer may stand in several queues); the
fan-out consumers enter when their case is measured, after the burst, which
therefore meets cold tokens.

``fanfare_grpc`` is imported only when a queue case is built, so the other cases
run whatever state the working tree's queue code is in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import grpc
from fanfare.auth.v1 import auth_service_pb2
from fanfare.common.v1 import common_pb2
from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.session.v1 import session_service_pb2 as sessions
from google.protobuf.message import Message
from grpc import aio
from redis.asyncio import Redis

from bench.echo import CONSUMER_ECHO_METHOD
from bench.harness import (
    REDIS,
    SUT,
    BenchContext,
    CallSpec,
    Case,
    CustomMeasurement,
    RunOptions,
    client_processes,
    expect,
    measure,
)
from bench.load_client import LoadPlan, Metadata, Payload
from bench.servers import ServerProcess, machine_busy_seconds, process_cpu_seconds
from bench.sessions import CREATE_GUEST_SESSION, consumer_metadata, new_device
from bench.stats import RoundSample
from bench.watch_client import WatchPlan, WatchResult

if TYPE_CHECKING:
    from fanfare_grpc.cache.queue_state_redis import RedisQueueStateStore
    from fanfare_grpc.domain.queue_state import QueueRef

_QUEUE_SERVICE = "/fanfare.queue.v1.QueueService/"
CREATE_QUEUE = _QUEUE_SERVICE + "CreateQueue"
OPEN_QUEUE = _QUEUE_SERVICE + "OpenQueue"
ENTER_QUEUE = _QUEUE_SERVICE + "EnterQueue"
GET_POSITION = _QUEUE_SERVICE + "GetPosition"
ADMIT_CONSUMERS = _QUEUE_SERVICE + "AdmitConsumers"
GET_QUEUE_STATS = _QUEUE_SERVICE + "GetQueueStats"
CREATE_API_KEY = "/fanfare.auth.v1.AuthService/CreateApiKey"

GET_POSITION_1K = "get_position_1k"
POSITION_LINES = {
    GET_POSITION_1K: 1_000,
    "get_position_100k": 100_000,
    "get_position_1m": 1_000_000,
}
POSITION_CONSUMERS = 32
POSITION_CONCURRENCY = 16

ENTER_QUEUE_BURST = "enter_queue_burst"
ENTER_QUEUE_WARM = "enter_queue_warm"
REDIS_ENTER_PIPELINE = "redis_enter_pipeline"
# 70–120 s of CreateGuestSession on a 2-core machine (100 k would take 9–17 min).
BURST_CONSUMERS = 12_000
BURST_LINE_LENGTH = 100_000
BURST_CONCURRENCY = 48
REDIS_BATCH_CONSUMERS = 1_000

FANOUT_STREAMS = {
    "watch_position_fanout_1k": 1_000,
    "watch_position_fanout_5k": 5_000,
    "watch_position_fanout_10k": 10_000,
}
STREAMS_PER_CLIENT_PROCESS = 5_000
# FANFARE_MAX_CONCURRENT_STREAMS (default 100): more would wait in the client's queue.
STREAMS_PER_CHANNEL = 100
# One heartbeat period of the position feed: every idle stream gets one message.
IDLE_WINDOW_SECONDS = 5.0

GROUPS = {
    "get_position_scaling": ("bare_echo", *POSITION_LINES),
    "watch_position_fanout": tuple(FANOUT_STREAMS),
    "queues": (
        "bare_echo",
        *POSITION_LINES,
        ENTER_QUEUE_BURST,
        ENTER_QUEUE_WARM,
        REDIS_ENTER_PIPELINE,
        *FANOUT_STREAMS,
    ),
}

_SESSION_CONCURRENCY = 32
_SETUP_CONCURRENCY = 64
_SETUP_TIMEOUT_SECONDS = 60.0
_MIB = 1024 * 1024
_Response = TypeVar("_Response")


def _say(message: str) -> None:
    print(f"queues: {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Shopper:
    """A guest consumer: its device fingerprint and access token."""

    consumer_id: str
    device: str
    access_token: str


@dataclasses.dataclass(frozen=True)
class _Redis:
    """Where the SUT keeps its cache."""

    url: str
    prefix: str

    def client(self) -> Redis:
        return Redis.from_url(self.url)

    def store(self, client: Redis) -> RedisQueueStateStore:
        from fanfare_grpc.cache.queue_state_redis import RedisQueueStateStore

        return RedisQueueStateStore(client, self.prefix)


def _bearer(api_key: str) -> Metadata:
    return (("authorization", f"Bearer {api_key}"),)


class QueueWorld:
    """State the queue cases of one run share: keys, sessions, Redis."""

    def __init__(self) -> None:
        self._context: BenchContext | None = None
        self._reset()

    def _reset(self) -> None:
        self._publishable_key = ""
        self._position_shoppers: list[Shopper] = []
        self._crowd: list[Shopper] = []
        self.sessions_per_second: float | None = None
        self._first_fanout_rss: int | None = None
        self._tokens_verified = False

    # -- setup -------------------------------------------------------------------

    def bind(self, context: BenchContext) -> None:
        """Use this run's SUT (state of an earlier run is dropped)."""
        if context is not self._context:
            self._reset()
            self._context = context

    @property
    def context(self) -> BenchContext:
        if self._context is None:
            raise RuntimeError("QueueWorld used before bind()")
        return self._context

    @property
    def address(self) -> str:
        return self.context.sut_address

    @property
    def secret_key(self) -> str:
        key: str = self.context.organization()["secret_key"]
        return key

    @property
    def redis(self) -> _Redis:
        env = self.context.sut_env
        url = env.get("FANFARE_REDIS_URL")
        if not url:
            raise RuntimeError(
                "queue cases need the SUT on Redis: add --redis redis://127.0.0.1:6379/0"
            )
        from fanfare_grpc.settings import Settings

        return _Redis(url, Settings.from_env(env).redis_key_prefix)

    def queue_ref(self, queue_id: str) -> QueueRef:
        """Where a queue of the bench organization lives (test mode: sk_test keys)."""
        from fanfare_grpc.domain.queue_state import QueueRef

        return QueueRef(self.context.organization()["organization_id"], "test", queue_id)

    def publishable_key(self) -> str:
        if not self._publishable_key:
            request = auth_service_pb2.CreateApiKeyRequest(
                kind=common_pb2.API_KEY_KIND_PUBLISHABLE, name="bench queues"
            )
            response = self._unary(
                CREATE_API_KEY, request, auth_service_pb2.CreateApiKeyResponse.FromString
            )
            self._publishable_key = response.secret
        return self._publishable_key

    def metadata(self, shopper: Shopper) -> Metadata:
        return consumer_metadata(self.publishable_key(), shopper.device, shopper.access_token)

    def position_shoppers(self) -> list[Shopper]:
        """The consumers whose positions are measured (the same in every line)."""
        if not self._position_shoppers:
            self._position_shoppers = asyncio.run(self._new_shoppers(POSITION_CONSUMERS))
        return self._position_shoppers

    def crowd(self, count: int) -> list[Shopper]:
        """At least ``count`` guest consumers for the burst and the fan-out (grown once)."""
        missing = count - len(self._crowd)
        if missing > 0:
            started = time.monotonic()
            self._crowd += asyncio.run(self._new_shoppers(missing))
            elapsed = time.monotonic() - started
            self.sessions_per_second = missing / elapsed
            _say(
                f"{missing:,} guest sessions in {elapsed:.0f} s "
                f"({self.sessions_per_second:,.0f}/s, concurrency {_SESSION_CONCURRENCY})"
            )
        return self._crowd[:count]

    async def _new_shoppers(self, count: int) -> list[Shopper]:
        publishable_key = self.publishable_key()
        request = sessions.CreateGuestSessionRequest().SerializeToString()
        created: list[Shopper] = []
        async with aio.insecure_channel(self.address) as channel:
            create: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                CREATE_GUEST_SESSION
            )

            async def one() -> None:
                device = new_device()
                raw = await create(
                    request,
                    metadata=consumer_metadata(publishable_key, device),
                    timeout=_SETUP_TIMEOUT_SECONDS,
                )
                response = sessions.CreateGuestSessionResponse.FromString(raw)
                created.append(Shopper(response.session.consumer_id, device, response.access_token))

            await _bounded(count, _SESSION_CONCURRENCY, one)
        return created

    def open_queue(self, name: str) -> str:
        """A new OPEN queue (no admissions: the SUT runs without its worker)."""
        created = self._unary(
            CREATE_QUEUE,
            queues.CreateQueueRequest(name=name, admission_rate_per_minute=60),
            queues.CreateQueueResponse.FromString,
        )
        queue_id: str = created.queue.queue_id
        self._unary(
            OPEN_QUEUE,
            queues.OpenQueueRequest(queue_id=queue_id),
            queues.OpenQueueResponse.FromString,
        )
        return queue_id

    async def enter(self, queue_id: str, shoppers: Sequence[Shopper]) -> list[int]:
        """Every shopper enters through ``EnterQueue``; their positions (unmeasured)."""
        request = queues.EnterQueueRequest(queue_id=queue_id).SerializeToString()
        positions: list[int] = []
        pending = iter(shoppers)
        async with aio.insecure_channel(self.address) as channel:
            enter: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ENTER_QUEUE)

            async def one() -> None:
                shopper = next(pending)
                raw = await enter(
                    request, metadata=self.metadata(shopper), timeout=_SETUP_TIMEOUT_SECONDS
                )
                positions.append(queues.EnterQueueResponse.FromString(raw).entry.position)

            await _bounded(len(shoppers), _SETUP_CONCURRENCY, one)
        return positions

    def _unary(
        self, method: str, request: Message, parse: Callable[[bytes], _Response]
    ) -> _Response:
        """One sk ADMIN call (blocking), parsed."""
        with grpc.insecure_channel(self.address) as channel:
            call = channel.unary_unary(method)
            raw = call(
                request.SerializeToString(),
                metadata=_bearer(self.secret_key),
                timeout=_SETUP_TIMEOUT_SECONDS,
            )
        return parse(raw)

    # -- get_position_* ----------------------------------------------------------

    def position_case(self, context: BenchContext, line: int) -> CallSpec:
        """A queue of ``line`` crowd consumers with the measured ones in the middle."""
        self.bind(context)
        shoppers = self.position_shoppers()
        queue_id = self.open_queue(f"bench positions {line}")
        asyncio.run(self._line_around(queue_id, line, shoppers))
        request = queues.GetPositionRequest(queue_id=queue_id).SerializeToString()
        return CallSpec(
            GET_POSITION,
            variants=tuple((request, self.metadata(shopper)) for shopper in shoppers),
        )

    async def _line_around(self, queue_id: str, line: int, shoppers: Sequence[Shopper]) -> None:
        from bench.queue_fill import (
            check_filled,
            crowd_consumer,
            fill_waiting,
            set_counter,
            used_memory,
        )

        started = time.monotonic()
        redis = self.redis
        queue = self.queue_ref(queue_id)
        ahead, behind = line // 2, line - line // 2
        tag = secrets.token_hex(3)
        async with redis.client() as client:
            store = redis.store(client)
            memory_before = await used_memory(client)
            # Crowd scores 2 … ahead+1; the counter makes EnterQueue continue after them.
            await fill_waiting(
                client, store, queue, tag=tag, first_index=0, count=ahead, first_score=2
            )
            await set_counter(client, store, queue, ahead)
            positions = await self.enter(queue_id, shoppers)
            await fill_waiting(
                client,
                store,
                queue,
                tag=tag,
                first_index=ahead,
                count=behind,
                first_score=ahead + len(shoppers) + 2,
            )
            await set_counter(client, store, queue, ahead + len(shoppers) + behind)
            last = line - 1
            await check_filled(
                store,
                queue,
                {
                    crowd_consumer(tag, 0): 0,
                    crowd_consumer(tag, ahead - 1): ahead - 1,
                    crowd_consumer(tag, ahead): ahead + len(shoppers),
                    crowd_consumer(tag, last): last + len(shoppers),
                },
            )
            memory_after = await used_memory(client)
        if sorted(positions) != list(range(ahead + 1, ahead + len(shoppers) + 1)):
            raise RuntimeError(f"measured consumers entered at {sorted(positions)[:3]}…")
        _say(
            f"line of {line:,} (+{len(shoppers)} measured at {ahead + 1:,}…) in "
            f"{time.monotonic() - started:.1f} s; Redis +{(memory_after - memory_before) / _MIB:,.0f}"
            f" MiB ({(memory_after - memory_before) / line:,.0f} B per waiting consumer)"
        )

    # -- enter_queue_burst -------------------------------------------------------

    def burst_case(self, context: BenchContext, *, warm: bool = False) -> CustomMeasurement:
        """The crowd enters a line already ``BURST_LINE_LENGTH - BURST_CONSUMERS`` long.

        ``warm``: a second queue, entered after the cold burst (or after one
        unmeasured ``ConsumerEcho`` per consumer), so every token is already verified.
        """
        self.bind(context)
        shoppers = self.crowd(BURST_CONSUMERS)
        name = "warm" if warm else "cold"
        queue_id = self.open_queue(f"bench burst {name}")
        prefill = BURST_LINE_LENGTH - len(shoppers)

        async def line() -> None:
            from bench.queue_fill import fill_waiting, set_counter

            redis = self.redis
            queue = self.queue_ref(queue_id)
            async with redis.client() as client:
                store = redis.store(client)
                await fill_waiting(
                    client, store, queue, tag=name, first_index=0, count=prefill, first_score=2
                )
                await set_counter(client, store, queue, prefill)

        asyncio.run(line())
        _say(f"{name} burst queue holds {prefill:,}; {len(shoppers):,} consumers will enter")
        request = queues.EnterQueueRequest(queue_id=queue_id).SerializeToString()
        payloads: tuple[Payload, ...] = tuple(
            (request, self.metadata(shopper)) for shopper in shoppers
        )
        return CustomMeasurement(
            lambda server, options: self._burst(server, options, queue_id, payloads, warm=warm)
        )

    def _burst(
        self,
        server: ServerProcess | None,
        options: RunOptions,
        queue_id: str,
        payloads: tuple[Payload, ...],
        *,
        warm: bool,
    ) -> RoundSample:
        assert server is not None
        if warm and not self._tokens_verified:
            started = time.monotonic()
            asyncio.run(self._verify_tokens([metadata for _, metadata in payloads]))
            _say(f"{len(payloads):,} tokens verified in {time.monotonic() - started:.1f} s")
        plan = LoadPlan(
            address=server.address,
            method=ENTER_QUEUE,
            payloads=payloads,
            concurrency=BURST_CONCURRENCY,
            warmup_seconds=0.0,
            duration_seconds=600.0,
            max_calls=len(payloads),
            call_timeout_seconds=options.call_timeout_seconds,
        )
        pid = asyncio.run(self._redis_pid())
        redis_before = None if pid is None else process_cpu_seconds(pid)
        sample = measure(plan, server, options)
        redis_after = None if pid is None else process_cpu_seconds(pid)
        self._tokens_verified = True
        stats = self._unary(
            GET_QUEUE_STATS,
            queues.GetQueueStatsRequest(queue_id=queue_id),
            queues.GetQueueStatsResponse.FromString,
        )
        extras = {
            "waiting_after": float(stats.waiting),
            "seconds_for_100k": BURST_LINE_LENGTH / sample.throughput,
        }
        if redis_before is not None and redis_after is not None and sample.latencies_ns:
            extras["redis_cpu_us_per_entry"] = (
                (redis_after - redis_before) / len(sample.latencies_ns) * 1e6
            )
        if self.sessions_per_second is not None and not warm:
            extras["guest_sessions_per_s"] = self.sessions_per_second
            extras["session_seconds_for_100k"] = BURST_LINE_LENGTH / self.sessions_per_second
        return dataclasses.replace(sample, extras=extras)

    async def _verify_tokens(self, metadata: Sequence[Metadata]) -> None:
        """One ``ConsumerEcho`` per token: the SUT verifies and caches each one."""
        pending = iter(metadata)
        async with aio.insecure_channel(self.address) as channel:
            echo: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                CONSUMER_ECHO_METHOD
            )

            async def one() -> None:
                await echo(b"", metadata=next(pending), timeout=_SETUP_TIMEOUT_SECONDS)

            await _bounded(len(metadata), _SETUP_CONCURRENCY, one)

    async def _redis_pid(self) -> int | None:
        """The local Redis server's pid (None if it is not a local ``redis-server``)."""
        from bench.queue_fill import redis_pid

        async with self.redis.client() as client:
            pid = await redis_pid(client)
        if pid is None or process_cpu_seconds(pid) is None:
            return None
        return pid

    # -- redis_enter_pipeline ----------------------------------------------------

    def redis_case(self, context: BenchContext) -> CustomMeasurement:
        """ZADD + HSET + HSET per consumer, straight from redis-py."""
        self.bind(context)
        return CustomMeasurement(lambda server, options: asyncio.run(self._raw_redis()))

    async def _raw_redis(self) -> RoundSample:
        from fanfare_grpc.cache.queue_state_redis import _encode_new
        from fanfare_grpc.domain.queue_state import EntryRecord, EntryStatus

        redis = self.redis
        count = BURST_CONSUMERS
        pid = await self._redis_pid()
        entered_at = time.time()
        # Encoded before the window: this is Redis and its client, nothing else.
        rows = [
            (
                f"cons_raw{index:08d}",
                f"raw-device-{index}",
                _encode_new(
                    EntryRecord(
                        consumer_id=f"cons_raw{index:08d}",
                        session_id=f"sess_raw{index:08d}",
                        device_hash=f"raw-device-{index}",
                        status=EntryStatus.QUEUED,
                        entered_at=entered_at,
                    )
                ),
            )
            for index in range(count)
        ]
        async with Redis.from_url(redis.url, max_connections=BURST_CONCURRENCY) as client:
            store = redis.store(client)
            keys = {
                key.rsplit(":", 1)[1]: key
                for key in store.keys(self.queue_ref(f"q_raw{secrets.token_hex(6)}"))
            }
            latencies: list[int] = []
            pending = iter(enumerate(rows))

            async def one() -> None:
                index, (consumer, device, raw) = next(pending)
                started = time.perf_counter_ns()
                async with client.pipeline(transaction=False) as pipe:
                    pipe.zadd(keys["waiting"], {consumer: index + 2})
                    pipe.hset(keys["entries"], consumer, raw)
                    pipe.hset(keys["devices"], device, consumer)
                    await pipe.execute()
                latencies.append(time.perf_counter_ns() - started)

            cpu, busy = time.process_time(), machine_busy_seconds()
            redis_cpu = None if pid is None else process_cpu_seconds(pid)
            started = time.perf_counter()
            await _bounded(count, BURST_CONCURRENCY, one)
            elapsed = time.perf_counter() - started
            redis_cpu_after = None if pid is None else process_cpu_seconds(pid)
            client_cpu, busy_after = time.process_time() - cpu, machine_busy_seconds()

            batched_keys = {
                key.rsplit(":", 1)[1]: key
                for key in store.keys(self.queue_ref(f"q_raw{secrets.token_hex(6)}"))
            }
            batched_started = time.perf_counter()
            for start in range(0, count, REDIS_BATCH_CONSUMERS):
                async with client.pipeline(transaction=False) as pipe:
                    for index in range(start, min(count, start + REDIS_BATCH_CONSUMERS)):
                        consumer, device, raw = rows[index]
                        pipe.zadd(batched_keys["waiting"], {consumer: index + 2})
                        pipe.hset(batched_keys["entries"], consumer, raw)
                        pipe.hset(batched_keys["devices"], device, consumer)
                    await pipe.execute()
            batched_elapsed = time.perf_counter() - batched_started
        server_cpu = (
            None if redis_cpu is None or redis_cpu_after is None else redis_cpu_after - redis_cpu
        )
        return RoundSample(
            concurrency=BURST_CONCURRENCY,
            latencies_ns=latencies,
            errors={},
            elapsed_seconds=elapsed,
            server_cpu_seconds=server_cpu,
            client_cpu_seconds=client_cpu,
            machine_busy_seconds=(
                None if busy is None or busy_after is None else busy_after - busy
            ),
            extras={f"batched_{REDIS_BATCH_CONSUMERS}_entries_per_s": count / batched_elapsed},
        )

    # -- watch_position_fanout_* -------------------------------------------------

    def fanout_case(self, context: BenchContext, streams: int) -> CustomMeasurement:
        """A queue for ``streams`` watchers (they enter when the case is measured)."""
        self.bind(context)
        shoppers = self.crowd(streams)
        queue_id = self.open_queue(f"bench fanout {streams}")
        return CustomMeasurement(lambda server, options: self._fanout(server, queue_id, shoppers))

    def _fanout(
        self, server: ServerProcess | None, queue_id: str, shoppers: Sequence[Shopper]
    ) -> RoundSample:
        assert server is not None
        count = len(shoppers)
        # Entered now, not when built: the burst before must meet cold tokens.
        started = time.monotonic()
        asyncio.run(self.enter(queue_id, shoppers))
        entered = time.monotonic() - started
        rss_before = server.rss_bytes() or 0
        if self._first_fanout_rss is None:
            self._first_fanout_rss = rss_before
        clients = math.ceil(count / STREAMS_PER_CLIENT_PROCESS)
        plans = [
            WatchPlan(
                address=server.address,
                queue_id=queue_id,
                metadata=tuple(self.metadata(shopper) for shopper in shoppers[index::clients]),
                channels=math.ceil(len(shoppers[index::clients]) / STREAMS_PER_CHANNEL),
            )
            for index in range(clients)
        ]
        with client_processes(plans, module="bench.watch_client") as processes:
            opening = time.monotonic()
            for _, connection in processes:
                expect(connection, "ready", plans[0].ready_timeout_seconds + 30.0)
            opened = time.monotonic() - opening
            idle_cpu = server.cpu_seconds()
            time.sleep(IDLE_WINDOW_SECONDS)
            idle_cpu_after = server.cpu_seconds()
            rss_streams = server.rss_bytes() or 0

            cpu_before, busy_before = server.cpu_seconds(), machine_busy_seconds()
            t0 = time.monotonic_ns()
            for _, connection in processes:
                connection.send(("admit", t0))
            admitted = self._unary(
                ADMIT_CONSUMERS,
                queues.AdmitConsumersRequest(queue_id=queue_id, count=count),
                queues.AdmitConsumersResponse.FromString,
            )
            admit_rpc_ns = time.monotonic_ns() - t0
            budget = plans[0].admit_timeout_seconds + 30.0
            results: list[WatchResult] = [
                expect(connection, "result", budget) for _, connection in processes
            ]
            cpu_after, busy_after = server.cpu_seconds(), machine_busy_seconds()
        latencies = [value for result in results for value in result.latencies_ns]
        errors: dict[str, int] = {}
        for result in results:
            for code, number in result.errors.items():
                errors[code] = errors.get(code, 0) + number
        if admitted.admitted_count != count:
            errors["ADMIT_COUNT_MISMATCH"] = 1
        _say(
            f"{count:,} streams: entered in {entered:.1f} s, opened in {opened:.1f} s; "
            f"AdmitConsumers returned after {admit_rpc_ns / 1e6:,.0f} ms"
        )
        updates = sum(result.updates_before_admit for result in results)
        idle_cores = (
            None
            if idle_cpu is None or idle_cpu_after is None
            else (idle_cpu_after - idle_cpu) / IDLE_WINDOW_SECONDS
        )
        extras = {
            "rss_before_mib": rss_before / _MIB,
            "rss_streams_open_mib": rss_streams / _MIB,
            "rss_kib_per_stream": (rss_streams - rss_before) / count / 1024,
            "rss_kib_per_stream_vs_first_step": (rss_streams - self._first_fanout_rss)
            / count
            / 1024,
            "open_seconds": opened,
            "updates_per_stream_before_admit": updates / count,
            "admit_rpc_ms": admit_rpc_ns / 1e6,
            "min_ms": min(latencies) / 1e6 if latencies else 0.0,
            "max_ms": max(latencies) / 1e6 if latencies else 0.0,
        }
        if idle_cores is not None:
            extras["idle_server_cores"] = idle_cores
        return RoundSample(
            concurrency=count,
            latencies_ns=latencies,
            errors=errors,
            elapsed_seconds=max(latencies) / 1e9 if latencies else 1.0,
            server_cpu_seconds=(
                None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
            ),
            client_cpu_seconds=sum(result.client_cpu_seconds for result in results),
            machine_busy_seconds=(
                None if busy_before is None or busy_after is None else busy_after - busy_before
            ),
            extras=extras,
        )


async def _bounded(count: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> None:
    """Run ``one()`` ``count`` times, at most ``concurrency`` at once."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))


def queue_cases() -> list[Case]:
    """The issue 5 cases; they share one ``QueueWorld`` (sessions, Redis)."""
    world = QueueWorld()
    cases = []
    for name, line in POSITION_LINES.items():
        cases.append(
            Case(
                name=name,
                target=SUT,
                build=functools.partial(world.position_case, line=line),
                description=(
                    f"GetPosition, {POSITION_CONSUMERS} consumers in the middle of "
                    f"{line:,} waiting (Redis)"
                ),
                reference="bare_echo" if name == GET_POSITION_1K else GET_POSITION_1K,
                concurrency=POSITION_CONCURRENCY,
            )
        )
    cases += [
        Case(
            name=ENTER_QUEUE_BURST,
            target=SUT,
            build=world.burst_case,
            description=(
                f"{BURST_CONSUMERS:,} new guest sessions EnterQueue once each (cold tokens), "
                f"concurrency {BURST_CONCURRENCY}, line ends at {BURST_LINE_LENGTH:,}"
            ),
            reference=REDIS_ENTER_PIPELINE,
            concurrency=BURST_CONCURRENCY,
            rounds=1,
        ),
        Case(
            name=ENTER_QUEUE_WARM,
            target=SUT,
            build=functools.partial(world.burst_case, warm=True),
            description=(
                f"the same {BURST_CONSUMERS:,} consumers EnterQueue a second queue "
                "(tokens already verified)"
            ),
            reference=ENTER_QUEUE_BURST,
            concurrency=BURST_CONCURRENCY,
            rounds=1,
        ),
        Case(
            name=REDIS_ENTER_PIPELINE,
            target=REDIS,
            build=world.redis_case,
            description=(
                f"redis-py: ZADD+HSET+HSET per consumer, one pipeline each, "
                f"{BURST_CONCURRENCY} in flight"
            ),
            reference=None,
            concurrency=BURST_CONCURRENCY,
            rounds=1,
        ),
    ]
    for name, streams in FANOUT_STREAMS.items():
        cases.append(
            Case(
                name=name,
                target=SUT,
                build=functools.partial(world.fanout_case, streams=streams),
                description=(
                    f"{streams:,} WatchPosition streams; AdmitConsumers → ADMITTED per stream"
                ),
                reference=None,
                concurrency=streams,
                rounds=1,
            )
        )
    return cases

"""The load generator. It always runs in its own process, never in a server's.

The harness starts ``python -m bench.load_client FD`` per client process and talks to
it over a ``multiprocessing`` ``Connection`` on the inherited socket ``FD``:

1. harness -> client: the ``LoadPlan``.
2. client -> harness: ``("ready", None)`` once its channel is connected, or
   ``("error", message)``.
3. harness -> client: the wall-clock time at which warm-up starts (the same for every
   client process, so their measurement windows coincide).
4. client -> harness: ``("result", LoadResult)`` or ``("error", message)``.

Load is closed-loop: ``concurrency`` workers each keep exactly one unary call in
flight. Calls that *start* inside the measurement window are measured; every loop is
bounded by a deadline and by a call count, and every call by a timeout.

With a ``CallChain`` in the plan, each worker owns one chain: before step 2 it sets
up its own state (e.g. a session, unmeasured), and each next request is derived from
the previous response (e.g. the newest single-use refresh token).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any, Protocol

from grpc import aio

# gRPC metadata as the Python API takes it: ((key, value), ...).
Metadata = tuple[tuple[str, str], ...]
# One call's payload: serialized request bytes and its metadata.
Payload = tuple[bytes, Metadata]

_READY_TIMEOUT_SECONDS = 15.0
_START_TIMEOUT_SECONDS = 60.0
_NS = 1_000_000_000


class CallChain(Protocol):
    """Calls whose request depends on the previous response; one chain per worker.

    Implementations are pickled into the ``LoadPlan``, so they must be importable
    classes of the ``bench`` package holding plain data.
    """

    async def start(self, channel: aio.Channel) -> Payload:
        """Set up one worker's state through ``channel`` (unmeasured); its first payload."""
        ...

    def next(self, payload: Payload, response: bytes) -> Payload:
        """The payload to send after ``payload`` succeeded with ``response``.

        After a failed call the worker sends the same payload again.
        """
        ...


@dataclasses.dataclass(frozen=True)
class LoadPlan:
    """What one client process does.

    Attributes:
        address: ``127.0.0.1:PORT`` of the server under load.
        method: Full method name, ``/package.Service/Method``.
        payloads: Cycled per call (call ``i`` sends ``payloads[i % len]``).
        concurrency: Calls kept in flight by this process.
        warmup_seconds: Calls made before measuring starts (not recorded).
        duration_seconds: Length of the measurement window.
        max_calls: At most this many measured calls (the window ends early if reached).
        call_timeout_seconds: Deadline of each call.
        chain: If set, ``payloads`` is ignored: each worker starts its own chain and
            derives every request from the previous response.
    """

    address: str
    method: str
    payloads: tuple[Payload, ...]
    concurrency: int
    warmup_seconds: float
    duration_seconds: float
    max_calls: int
    call_timeout_seconds: float
    chain: CallChain | None = None


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What one client process measured.

    Attributes:
        latencies_ns: Latency of every successful measured call, in nanoseconds.
        errors: Count of failed measured calls per status code name.
        warmup_calls: Calls made during warm-up.
        elapsed_seconds: From the start of the window to the last measured completion.
        client_cpu_seconds: CPU time this process used during the window.
    """

    latencies_ns: list[int]
    errors: dict[str, int]
    warmup_calls: int
    elapsed_seconds: float
    client_cpu_seconds: float


class _Meter:
    """Shared state of the workers of one client process (one event loop)."""

    def __init__(self, plan: LoadPlan, warmup_start_ns: int) -> None:
        self.measure_start_ns = warmup_start_ns + int(plan.warmup_seconds * _NS)
        self.measure_end_ns = self.measure_start_ns + int(plan.duration_seconds * _NS)
        self.max_calls = plan.max_calls
        self.sequence = 0
        self.claimed = 0
        self.warmup_calls = 0
        self.last_completion_ns = self.measure_start_ns
        self.latencies_ns: list[int] = []
        self.errors: Counter[str] = Counter()

    def next_payload_index(self) -> int:
        """A fresh call sequence number (selects the payload)."""
        self.sequence += 1
        return self.sequence - 1

    def claim(self) -> bool:
        """Reserve one measured call; False once ``max_calls`` are taken."""
        if self.claimed >= self.max_calls:
            return False
        self.claimed += 1
        return True

    def record(self, measured: bool, started_ns: int, finished_ns: int, error: str | None) -> None:
        """Account for one finished call."""
        if not measured:
            self.warmup_calls += 1
            return
        self.last_completion_ns = max(self.last_completion_ns, finished_ns)
        if error is None:
            self.latencies_ns.append(finished_ns - started_ns)
        else:
            self.errors[error] += 1


async def _worker(
    call: aio.UnaryUnaryMultiCallable[bytes, bytes],
    plan: LoadPlan,
    meter: _Meter,
    chained: Payload | None,
) -> None:
    """Keep one call in flight until the window closes or the call budget is spent.

    ``chained`` is this worker's first payload if the plan has a chain.
    """
    while True:
        started = time.perf_counter_ns()
        if started >= meter.measure_end_ns:
            return
        measured = started >= meter.measure_start_ns
        if measured and not meter.claim():
            return
        if chained is None:
            payload = plan.payloads[meter.next_payload_index() % len(plan.payloads)]
        else:
            payload = chained
        error: str | None = None
        try:
            response = await call(
                payload[0], metadata=payload[1], timeout=plan.call_timeout_seconds
            )
        except aio.AioRpcError as rpc_error:
            error = rpc_error.code().name
        meter.record(measured, started, time.perf_counter_ns(), error)
        if plan.chain is not None and error is None:
            chained = plan.chain.next(payload, response)


async def _cpu_at(deadline_ns: int) -> float:
    """This process's CPU time at ``deadline_ns`` (perf_counter clock)."""
    delay = (deadline_ns - time.perf_counter_ns()) / _NS
    if delay > 0:
        await asyncio.sleep(delay)
    return time.process_time()


async def _drive(plan: LoadPlan, connection: Connection) -> LoadResult:
    """Connect, report ready, wait for the common start time, then load the server."""
    async with aio.insecure_channel(plan.address) as channel:
        await asyncio.wait_for(channel.channel_ready(), _READY_TIMEOUT_SECONDS)
        call: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(plan.method)
        firsts: list[Payload | None] = [None] * plan.concurrency
        if plan.chain is not None:
            # One at a time: the setup is not measured and should not stress the server.
            for index in range(plan.concurrency):
                firsts[index] = await plan.chain.start(channel)
        connection.send(("ready", None))
        if not await asyncio.to_thread(connection.poll, _START_TIMEOUT_SECONDS):
            raise TimeoutError("no start time from the harness")
        start_at_wall: float = connection.recv()
        warmup_start_ns = time.perf_counter_ns() + int((start_at_wall - time.time()) * _NS)
        meter = _Meter(plan, warmup_start_ns)
        await _cpu_at(warmup_start_ns)
        cpu_start = asyncio.create_task(_cpu_at(meter.measure_start_ns))
        workers = [_worker(call, plan, meter, first) for first in firsts]
        await asyncio.gather(*workers)
        cpu_end = time.process_time()
        return LoadResult(
            latencies_ns=meter.latencies_ns,
            errors=dict(meter.errors),
            warmup_calls=meter.warmup_calls,
            elapsed_seconds=max(meter.last_completion_ns - meter.measure_start_ns, 1) / _NS,
            client_cpu_seconds=cpu_end - await cpu_start,
        )


def run_child(
    connection: Connection,
    drive: Callable[[Any, Connection], Coroutine[Any, Any, Any]],
    what: str,
) -> None:
    """A client process's life: receive the plan, run ``drive``, send the result (or
    the error) back to the harness."""
    try:
        if not connection.poll(_START_TIMEOUT_SECONDS):
            raise TimeoutError(f"no {what} plan from the harness")
        plan = connection.recv()
        result = asyncio.run(drive(plan, connection))
    except BaseException as error:  # report anything to the harness, then exit
        with contextlib.suppress(OSError):  # the harness may be gone already
            connection.send(("error", f"{error!r}\n{traceback.format_exc()}"))
        if not isinstance(error, Exception):
            raise
    else:
        connection.send(("result", result))
    finally:
        connection.close()


def child_main(argv: list[str] | None, usage: str, run: Callable[[Connection], None]) -> int:
    """``python -m bench.<client> FD``: FD is the harness's end of a socket pair."""
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1 or not arguments[0].isdigit():
        print(f"usage: {usage}", file=sys.stderr)
        return 2
    run(Connection(int(arguments[0])))
    return 0


def client_process_main(connection: Connection) -> None:
    """Receive the load plan, run it, send the result (or the error) back."""
    run_child(connection, _drive, "load")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.load_client FD``: FD is the harness's end of a socket pair."""
    return child_main(
        argv, "python -m bench.load_client FD (started by bench.harness)", client_process_main
    )


if __name__ == "__main__":
    # Run the copy imported under its real name, so that the LoadResult it sends
    # pickles as ``bench.load_client.LoadResult`` (not ``__main__.LoadResult``).
    from bench.load_client import main as imported_main

    raise SystemExit(imported_main())

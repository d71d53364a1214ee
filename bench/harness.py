"""The benchmark harness every Fanfare benchmark uses.

A ``Case`` names one RPC to hammer and the server it targets: the system under test
(``SUT``: ``python -m fanfare_grpc serve --no-worker`` on a fresh, migrated data dir)
or the bare baseline (``BASELINE``: a plain ``grpc.aio`` server without interceptors,
see ``bench.baseline_server``). Both servers run in their own processes for the whole
run; the load comes from separate client processes (``bench.load_client``). Each SUT
case is compared with a reference case (by default the baseline health check)
measured in the same run, so the ratios do not depend on the machine's speed.
Measurements that are not closed-loop unary load (streams, bursts, raw Redis) are a
``CustomMeasurement`` returned by the case's ``build`` (see ``bench.queues``).

Adding a case::

    Case(
        name="get_position",
        target=SUT,
        build=lambda ctx: CallSpec(
            method="/fanfare.queue.v1.QueueService/GetPosition",
            request=GetPositionRequest(queue_id="q_1").SerializeToString(),
            metadata=(("authorization", f"Bearer {ctx.organization()['secret_key']}"),),
        ),
    )
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from bench.load_client import CallChain, LoadPlan, LoadResult, Metadata, Payload
from bench.servers import (
    HEALTH_CHECK_METHOD,
    REPO_ROOT,
    ServerProcess,
    SutOptions,
    machine_busy_seconds,
    run_cli,
    run_cli_json,
    running_baseline,
    running_sut,
)
from bench.stats import CaseResult, RoundSample, summarize, with_ratios

Target = Literal["sut", "baseline", "redis"]
SUT: Target = "sut"
BASELINE: Target = "baseline"
# Raw Redis (no gRPC server): only cases with a ``CustomMeasurement`` target it.
REDIS: Target = "redis"
BARE_HEALTH_CHECK = "bare_health_check"

_CLIENT_READY_TIMEOUT_SECONDS = 30.0
_START_DELAY_SECONDS = 0.05


@dataclasses.dataclass(frozen=True)
class CallSpec:
    """The unary call a case makes, already serialized.

    Attributes:
        method: Full method name, ``/package.Service/Method``.
        request: Serialized request message (``b""`` is a default-valued message).
        metadata: Call metadata, e.g. ``(("authorization", "Bearer sk_test_..."),)``.
        variants: If set, call ``i`` sends ``variants[i % len(variants)]`` instead of
            (``request``, ``metadata``): e.g. one distinct key per call for a
            cold-cache case (combine with ``warmup_seconds=0`` and ``max_calls``).
        chain: If set, every worker of every measurement starts its own chain
            (unmeasured setup, e.g. a fresh session) and derives each request from the
            previous response (e.g. rotating refresh tokens); ``request``,
            ``metadata`` and ``variants`` are then unused. See
            ``bench.load_client.CallChain``.
    """

    method: str
    request: bytes = b""
    metadata: Metadata = ()
    variants: tuple[Payload, ...] = ()
    chain: CallChain | None = None

    def payloads(self) -> tuple[Payload, ...]:
        """The payloads the client cycles through."""
        return self.variants or ((self.request, self.metadata),)


@dataclasses.dataclass(frozen=True)
class CustomMeasurement:
    """A measurement that is not closed-loop unary load (streams, raw Redis, bursts).

    ``run(server, options)`` runs once per round of the case, at its turn in the
    case order, with the case's target server (``None`` for ``REDIS``). It does its
    own unmeasured setup, measures, and returns the round as a ``RoundSample``
    (latencies, errors, window length, server CPU in the window); numbers that fit
    no column go into ``RoundSample.extras``.
    """

    run: Callable[[ServerProcess | None, RunOptions], RoundSample]


class BenchContext:
    """What case builders may use: addresses, the SUT's CLI and a bench organization."""

    def __init__(self, sut_address: str, baseline_address: str, sut_env: Mapping[str, str]):
        self.sut_address = sut_address
        self.baseline_address = baseline_address
        self._sut_env = dict(sut_env)
        self._organization: dict[str, Any] | None = None

    @property
    def sut_env(self) -> Mapping[str, str]:
        """The SUT's environment (``FANFARE_REDIS_URL``, ``FANFARE_REDIS_PREFIX``, …)."""
        return self._sut_env

    def cli(self, *arguments: str) -> str:
        """Run ``python -m fanfare_grpc ARGS`` against the SUT's data; return stdout."""
        return run_cli(arguments, self._sut_env)

    def cli_json(self, *arguments: str) -> dict[str, Any]:
        """Like ``cli`` for commands that print one JSON object (``--json``)."""
        return run_cli_json(arguments, self._sut_env)

    def organization(self) -> dict[str, Any]:
        """``orgs create --name bench --json`` of the SUT, run once on first use.

        Today it holds ``organization_id``; with API keys it also holds
        ``secret_key`` (sk_test_) and ``live_secret_key``.
        """
        if self._organization is None:
            self._organization = self.cli_json("orgs", "create", "--name", "bench", "--json")
        return self._organization


@dataclasses.dataclass(frozen=True)
class Case:
    """One measured RPC.

    Attributes:
        name: Unique name, shown in the table and the JSON.
        target: ``SUT``, ``BASELINE``, or ``REDIS`` (custom measurements only).
        build: Returns the call to make (or a ``CustomMeasurement``); runs once, after
            both servers are ready, in the order of the cases.
        reference: Name of the case the ratios divide by (``None``: no ratios, e.g.
            for the baseline itself).
        description: One line for the report.
        concurrency, warmup_seconds, duration_seconds, max_calls, rounds: Per-case
            overrides of the run options (e.g. ``concurrency=1`` for an unloaded
            latency; ``rounds=1`` for a cold-cache case whose keys must not repeat).
    """

    name: str
    target: Target
    build: Callable[[BenchContext], CallSpec | CustomMeasurement]
    reference: str | None = BARE_HEALTH_CHECK
    description: str = ""
    concurrency: int | None = None
    warmup_seconds: float | None = None
    duration_seconds: float | None = None
    max_calls: int | None = None
    rounds: int | None = None


def bare_health_check_case() -> Case:
    """The reference: ``Health/Check`` on the bare baseline server."""
    return Case(
        name=BARE_HEALTH_CHECK,
        target=BASELINE,
        build=lambda ctx: CallSpec(HEALTH_CHECK_METHOD),
        reference=None,
        description="grpc.health.v1.Health/Check on a bare grpc.aio server",
    )


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Settings of one benchmark run (cases may override the load settings).

    Attributes:
        concurrency: Calls in flight, split across the client processes.
        warmup_seconds: Unmeasured load before each measurement.
        duration_seconds: Measurement window of each case and round.
        max_calls: Upper bound of measured calls per case and round.
        rounds: Every case is measured this many times, alternating the case order,
            and the rounds are pooled.
        client_processes: Load generator processes per measurement.
        call_timeout_seconds: Deadline of every call.
        sut: How to run the system under test.
    """

    concurrency: int = 16
    warmup_seconds: float = 1.0
    duration_seconds: float = 3.0
    max_calls: int = 1_000_000
    rounds: int = 4
    client_processes: int = 1
    call_timeout_seconds: float = 10.0
    sut: SutOptions = dataclasses.field(default_factory=SutOptions)


def check_cases(cases: Sequence[Case]) -> None:
    """Reject duplicate names and references to cases that are not in the run."""
    names = [case.name for case in cases]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise ValueError(f"duplicate case names: {sorted(duplicates)}")
    for case in cases:
        if case.reference is not None and case.reference not in names:
            raise ValueError(f"case {case.name!r} refers to unknown case {case.reference!r}")


def run_cases(
    cases: Sequence[Case],
    options: RunOptions,
    progress: Callable[[str], None] | None = None,
) -> list[CaseResult]:
    """Start both servers, measure every case ``options.rounds`` times, stop the servers.

    ``progress`` receives one line per measurement (e.g. to print on stderr).
    """
    check_cases(cases)
    with contextlib.ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fanfare-bench-")))
        sut, sut_env = stack.enter_context(running_sut(work_dir, options.sut))
        baseline = stack.enter_context(running_baseline(work_dir))
        servers: dict[str, ServerProcess] = {SUT: sut, BASELINE: baseline}
        context = BenchContext(sut.address, baseline.address, sut_env)
        specs = {case.name: case.build(context) for case in cases}
        samples: dict[str, list[RoundSample]] = {case.name: [] for case in cases}
        for round_index in range(options.rounds):
            ordered = cases if round_index % 2 == 0 else list(reversed(cases))
            for case in ordered:
                if round_index >= (case.rounds or options.rounds):
                    continue
                spec = specs[case.name]
                if isinstance(spec, CustomMeasurement):
                    sample = spec.run(servers.get(case.target), options)
                else:
                    server = servers[case.target]
                    sample = measure(_plan(case, spec, server.address, options), server, options)
                samples[case.name].append(sample)
                if progress is not None:
                    progress(_describe(round_index, options.rounds, case, sample))
        _warn_about_server_errors(servers.values())
    return with_ratios(
        [
            summarize(case.name, case.target, case.reference, case.description, samples[case.name])
            for case in cases
        ]
    )


def _describe(round_index: int, rounds: int, case: Case, sample: RoundSample) -> str:
    """One progress line."""
    errors = sum(sample.errors.values())
    return (
        f"round {round_index + 1}/{rounds} {case.name}: {sample.throughput:,.0f} calls/s, "
        f"{len(sample.latencies_ns):,} calls, {errors} errors"
    )


def _plan(case: Case, spec: CallSpec, address: str, options: RunOptions) -> LoadPlan:
    """The whole measurement's load plan (before splitting across client processes)."""

    def pick(override: float | None, default: float) -> float:
        return default if override is None else override

    return LoadPlan(
        address=address,
        method=spec.method,
        payloads=spec.payloads(),
        concurrency=int(pick(case.concurrency, options.concurrency)),
        warmup_seconds=pick(case.warmup_seconds, options.warmup_seconds),
        duration_seconds=pick(case.duration_seconds, options.duration_seconds),
        max_calls=int(pick(case.max_calls, options.max_calls)),
        call_timeout_seconds=options.call_timeout_seconds,
        chain=spec.chain,
    )


def _split(plan: LoadPlan, processes: int) -> list[LoadPlan]:
    """Share concurrency, the call budget and the payloads across the client processes.

    Several payloads (``CallSpec.variants``) are dealt out, so no two processes send
    the same one (a cold-cache case stays cold).
    """
    count = max(1, min(processes, plan.concurrency))
    if len(plan.payloads) > 1:
        count = min(count, len(plan.payloads))
    return [
        dataclasses.replace(
            plan,
            payloads=plan.payloads if len(plan.payloads) == 1 else plan.payloads[index::count],
            concurrency=plan.concurrency // count + (index < plan.concurrency % count),
            max_calls=plan.max_calls // count + (index < plan.max_calls % count),
        )
        for index in range(count)
    ]


def measure(plan: LoadPlan, server: ServerProcess, options: RunOptions) -> RoundSample:
    """Run one measurement: start clients, start their load together, collect results."""
    with client_processes(_split(plan, options.client_processes)) as clients:
        for _, connection in clients:
            expect(connection, "ready", _CLIENT_READY_TIMEOUT_SECONDS)
        start_at = time.time() + _START_DELAY_SECONDS
        for _, connection in clients:
            connection.send(start_at)
        time.sleep(max(0.0, start_at + plan.warmup_seconds - time.time()))
        cpu_before, busy_before = server.cpu_seconds(), machine_busy_seconds()
        budget = plan.duration_seconds + plan.call_timeout_seconds + 30.0
        results = [expect(connection, "result", budget) for _, connection in clients]
        cpu_after, busy_after = server.cpu_seconds(), machine_busy_seconds()
    return RoundSample.combine(
        plan.concurrency, results, _delta(cpu_before, cpu_after), _delta(busy_before, busy_after)
    )


def _delta(before: float | None, after: float | None) -> float | None:
    """``after - before`` if both are known."""
    return None if before is None or after is None else after - before


@contextlib.contextmanager
def client_processes(
    plans: Sequence[object], module: str = "bench.load_client"
) -> Iterator[list[tuple[subprocess.Popen[bytes], Connection]]]:
    """Start ``python -m MODULE FD`` per plan; always reap them.

    Each client gets one end of a socket pair as a ``Connection`` (its file
    descriptor number is the argument), and its plan as the first message.
    """
    clients: list[tuple[subprocess.Popen[bytes], Connection]] = []
    try:
        for plan in plans:
            ours, theirs = socket.socketpair()
            with ours, theirs:
                process = subprocess.Popen(
                    [sys.executable, "-m", module, str(theirs.fileno())],
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),),
                )
                connection = Connection(ours.detach())
            clients.append((process, connection))
            connection.send(plan)
        yield clients
    except BaseException:
        for process, _ in clients:
            process.kill()
        raise
    finally:
        for process, connection in clients:
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5.0)
            connection.close()


def expect(connection: Connection, kind: str, timeout: float) -> Any:
    """Receive a ``(kind, payload)`` message from a client; raise on errors and timeouts."""
    if not connection.poll(timeout):
        raise TimeoutError(f"no {kind!r} from a client process within {timeout:.0f} s")
    try:
        received_kind, payload = connection.recv()
    except EOFError:
        raise RuntimeError(f"a client process exited before sending {kind!r}") from None
    if received_kind != kind:
        raise RuntimeError(f"client process failed: {payload}")
    return payload


def _warn_about_server_errors(servers: Iterable[ServerProcess]) -> None:
    """Print error-level log lines the servers wrote during the run (they skew numbers)."""
    for server in servers:
        lines = server.error_lines()
        if lines:
            print(f"warning: {server.name} logged {len(lines)} error line(s), e.g. {lines[0]}")


__all__ = [
    "BARE_HEALTH_CHECK",
    "BASELINE",
    "HEALTH_CHECK_METHOD",
    "REDIS",
    "SUT",
    "BenchContext",
    "CallChain",
    "CallSpec",
    "Case",
    "CaseResult",
    "CustomMeasurement",
    "LoadResult",
    "RunOptions",
    "SutOptions",
    "bare_health_check_case",
    "check_cases",
    "client_processes",
    "expect",
    "measure",
    "run_cases",
]

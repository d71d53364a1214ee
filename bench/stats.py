"""Measurements: one round of one case, and a case's pooled result with its ratios."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence

from bench.load_client import LoadResult

_NS_PER_MS = 1_000_000


@dataclasses.dataclass(frozen=True)
class RoundSample:
    """One measurement of one case (all client processes merged).

    Attributes:
        concurrency: Calls in flight, all client processes together.
        latencies_ns: Latencies of the successful measured calls.
        errors: Failed measured calls per status code name.
        elapsed_seconds: Length of the measurement window (the longest client's).
        server_cpu_seconds: CPU the server process used in the window, if known.
        client_cpu_seconds: CPU the client processes used in the window, summed.
        machine_busy_seconds: CPU the whole machine used in the window, if known.
        extras: Numbers of custom measurements that fit no column, by name with
            the unit in it (e.g. ``server_rss_mb``).
    """

    concurrency: int
    latencies_ns: list[int]
    errors: dict[str, int]
    elapsed_seconds: float
    server_cpu_seconds: float | None
    client_cpu_seconds: float
    machine_busy_seconds: float | None = None
    extras: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def combine(
        cls,
        concurrency: int,
        results: Sequence[LoadResult],
        server_cpu_seconds: float | None,
        machine_busy_seconds: float | None = None,
    ) -> RoundSample:
        """Merge the results of the client processes of one measurement."""
        errors: Counter[str] = Counter()
        latencies: list[int] = []
        for result in results:
            errors.update(result.errors)
            latencies.extend(result.latencies_ns)
        return cls(
            concurrency=concurrency,
            latencies_ns=latencies,
            errors=dict(errors),
            elapsed_seconds=max(result.elapsed_seconds for result in results),
            server_cpu_seconds=server_cpu_seconds,
            client_cpu_seconds=sum(result.client_cpu_seconds for result in results),
            machine_busy_seconds=machine_busy_seconds,
        )

    @property
    def throughput(self) -> float:
        """Successful calls per second."""
        return len(self.latencies_ns) / self.elapsed_seconds


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """A case's rounds pooled, and its ratios to its reference case.

    ``server_cores``, ``client_cores`` and ``other_cores`` are average CPU cores used
    during the windows by the server, the load generators, and everything else on the
    machine (other work competing for the CPUs: high values make throughput noisy).
    ``extras`` are the rounds' extras, averaged over the rounds that have them.

    Ratios are this case divided by its reference: ``throughput_ratio`` 0.8 means 80 %
    of the reference's calls/s; ``p50_ratio`` and ``server_cpu_ratio`` above 1 mean
    slower / more CPU per call. They are ``None`` for cases without a reference.
    """

    name: str
    target: str
    reference: str | None
    description: str
    concurrency: int
    rounds: int
    calls: int
    errors: dict[str, int]
    elapsed_seconds: float
    throughput: float
    round_throughputs: list[float]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    server_cpu_us_per_call: float | None
    server_cores: float | None
    client_cores: float
    other_cores: float | None
    throughput_ratio: float | None = None
    round_throughput_ratios: list[float] = dataclasses.field(default_factory=list)
    p50_ratio: float | None = None
    p99_ratio: float | None = None
    server_cpu_ratio: float | None = None
    extras: dict[str, float] = dataclasses.field(default_factory=dict)


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending sequence (0 if empty)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(
    name: str,
    target: str,
    reference: str | None,
    description: str,
    samples: Sequence[RoundSample],
) -> CaseResult:
    """Pool the rounds of one case (ratios are added by ``with_ratios``)."""
    latencies = sorted(value for sample in samples for value in sample.latencies_ns)
    errors: Counter[str] = Counter()
    for sample in samples:
        errors.update(sample.errors)
    elapsed = sum(sample.elapsed_seconds for sample in samples)
    cpu_samples = [sample.server_cpu_seconds for sample in samples]
    server_cpu = None if None in cpu_samples else sum(c for c in cpu_samples if c is not None)
    calls = len(latencies)
    return CaseResult(
        name=name,
        target=target,
        reference=reference,
        description=description,
        concurrency=samples[0].concurrency,
        rounds=len(samples),
        calls=calls,
        errors=dict(errors),
        elapsed_seconds=elapsed,
        throughput=calls / elapsed,
        round_throughputs=[sample.throughput for sample in samples],
        p50_ms=percentile(latencies, 0.50) / _NS_PER_MS,
        p90_ms=percentile(latencies, 0.90) / _NS_PER_MS,
        p99_ms=percentile(latencies, 0.99) / _NS_PER_MS,
        mean_ms=(sum(latencies) / calls / _NS_PER_MS) if calls else 0.0,
        server_cpu_us_per_call=(server_cpu / calls * 1e6) if server_cpu and calls else None,
        server_cores=None if server_cpu is None else server_cpu / elapsed,
        client_cores=sum(sample.client_cpu_seconds for sample in samples) / elapsed,
        other_cores=_other_cores(samples, elapsed),
        extras=_mean_extras(samples),
    )


def _mean_extras(samples: Sequence[RoundSample]) -> dict[str, float]:
    """Each extra averaged over the rounds that report it."""
    values: dict[str, list[float]] = {}
    for sample in samples:
        for key, value in sample.extras.items():
            values.setdefault(key, []).append(value)
    return {key: sum(found) / len(found) for key, found in values.items()}


def _other_cores(samples: Sequence[RoundSample], elapsed: float) -> float | None:
    """Average cores used by processes other than the server and the clients."""
    other = 0.0
    for sample in samples:
        if sample.machine_busy_seconds is None or sample.server_cpu_seconds is None:
            return None
        ours = sample.server_cpu_seconds + sample.client_cpu_seconds
        other += max(0.0, sample.machine_busy_seconds - ours)
    return other / elapsed


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def with_ratios(results: Sequence[CaseResult]) -> list[CaseResult]:
    """Each result with its ratios to its reference result (same run)."""
    by_name = {result.name: result for result in results}
    completed = []
    for result in results:
        ref = by_name.get(result.reference) if result.reference else None
        if ref is None:
            completed.append(result)
            continue
        completed.append(
            dataclasses.replace(
                result,
                throughput_ratio=_ratio(result.throughput, ref.throughput),
                round_throughput_ratios=[
                    value / reference
                    for value, reference in zip(
                        result.round_throughputs, ref.round_throughputs, strict=False
                    )
                    if reference
                ],
                p50_ratio=_ratio(result.p50_ms, ref.p50_ms),
                p99_ratio=_ratio(result.p99_ms, ref.p99_ms),
                server_cpu_ratio=_ratio(result.server_cpu_us_per_call, ref.server_cpu_us_per_call),
            )
        )
    return completed

"""Rendering results: a Markdown table for people, JSON for machines."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.servers import REPO_ROOT
from bench.stats import CaseResult

_COLUMNS = (
    "case",
    "server",
    "conc",
    "calls",
    "calls/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "srv CPU µs/call",
    "srv cores",
    "cli cores",
    "other cores",
    "errors",
    "calls/s ÷ ref",
    "p50 ÷ ref",
    "CPU/call ÷ ref",
)


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _extra(value: float) -> str:
    """An extra number: no decimals when large, three significant digits when small."""
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _row(result: CaseResult) -> list[str]:
    errors = sum(result.errors.values())
    return [
        result.name,
        result.target,
        str(result.concurrency),
        f"{result.calls:,}",
        _number(result.throughput, 0),
        _number(result.p50_ms),
        _number(result.p90_ms),
        _number(result.p99_ms),
        _number(result.server_cpu_us_per_call, 0),
        _number(result.server_cores),
        _number(result.client_cores),
        _number(result.other_cores),
        str(errors) if errors else "0",
        _ratio(result.throughput_ratio),
        _ratio(result.p50_ratio),
        _ratio(result.server_cpu_ratio),
    ]


def table(results: Sequence[CaseResult]) -> str:
    """A Markdown table: absolute numbers, then the ratios to each case's reference."""
    rows = [list(_COLUMNS), *(_row(result) for result in results)]
    widths = [max(len(row[index]) for row in rows) for index in range(len(_COLUMNS))]
    numeric = range(2, len(_COLUMNS))

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(widths[index]) if index in numeric else cell.ljust(widths[index])
            for index, cell in enumerate(cells)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        "-" * (width - 1) + ":" if index in numeric else "-" * width
        for index, width in enumerate(widths)
    ]
    lines = [line(rows[0]), line(rule), *(line(row) for row in rows[1:])]
    references = sorted({result.reference for result in results if result.reference})
    notes = [
        (
            f"ref = {', '.join(references) or '–'}, measured in the same run. "
            "calls/s ÷ ref < 1 and p50/CPU ÷ ref > 1 mean the case costs more than its reference."
        )
    ]
    for result in results:
        if result.errors:
            notes.append(f"{result.name}: errors {result.errors}")
        spread = ", ".join(f"{value:,.0f}" for value in result.round_throughputs)
        note = f"{result.name}: calls/s per round {spread}"
        if result.round_throughput_ratios:
            ratios = ", ".join(f"{value:.2f}" for value in result.round_throughput_ratios)
            note += f" (÷ ref per round: {ratios})"
        notes.append(note)
    for result in results:
        if result.extras:
            shown = ", ".join(f"{key} {_extra(value)}" for key, value in result.extras.items())
            notes.append(f"{result.name}: {shown}")
    return "\n".join([*lines, "", *notes])


def _git(*arguments: str) -> str:
    """Output of a read-only git command in the repository, or ``""``."""
    try:
        completed = subprocess.run(
            ["git", *arguments], cwd=REPO_ROOT, capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return completed.stdout.decode().strip() if completed.returncode == 0 else ""


def sut_source(source_tree: Path | None) -> str:
    """Which code the SUT ran: a given tree, or the checkout's HEAD (and whether dirty)."""
    if source_tree is not None:
        return f"tree {source_tree}"
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", "src", "generated")
    return f"checkout at {head}" + (" with uncommitted changes in src/" if dirty else "")


def environment(
    options: dict[str, Any], argv: Sequence[str], source_tree: Path | None = None
) -> dict[str, Any]:
    """Where and how the numbers were taken."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(argv),
        "sut_source": sut_source(source_tree),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "options": options,
    }


def to_json(results: Sequence[CaseResult], env: dict[str, Any]) -> str:
    """The run's environment and every result, as one JSON document."""
    return json.dumps(
        {"environment": env, "results": [dataclasses.asdict(result) for result in results]},
        indent=2,
        ensure_ascii=False,
        default=str,
    )

"""Server processes for benchmarks: the system under test and the bare baseline.

Each server runs in its own process with stderr going to a log file (so the harness
spends no CPU draining it). Its address comes from the ``listening on HOST:PORT``
log line; at log levels above ``info`` that line is not written, so on Linux the
listening socket is found through ``/proc`` instead. A server is ready once a
``grpc.health.v1.Health/Check`` answers SERVING. Context managers stop every server
with SIGTERM (then SIGKILL after a grace period), on success and on error alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

_LISTENING = re.compile(r"listening on (\S+):(\d+)")
_TCP_LISTEN_STATE = "0A"
# 127.0.0.1 in /proc/net/tcp and, IPv4-mapped (::ffff:127.0.0.1), in /proc/net/tcp6.
_LOOPBACK_HEX = ("0100007F", "0000000000000000FFFF00000100007F")
_POLL_SECONDS = 0.05


class ServerStartError(RuntimeError):
    """A server process exited or did not become ready in time."""


@dataclasses.dataclass
class ServerProcess:
    """A server subprocess whose stderr is written to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""

    @classmethod
    def start(
        cls, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> ServerProcess:
        """Start ``argv`` from the repository root with stderr to ``log_path``."""
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        return cls(name, process, log_path)

    def log_text(self) -> str:
        """Everything the server logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def error_lines(self) -> list[str]:
        """JSON log lines at level error or critical."""
        found = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
                    found.append(line)
        return found

    def wait_ready(self, timeout: float) -> str:
        """Wait until the server listens and answers health checks; return its address."""
        deadline = time.monotonic() + timeout
        while not self.address:
            if self.process.poll() is not None:
                raise ServerStartError(self._failure("exited during startup"))
            if time.monotonic() > deadline:
                raise ServerStartError(self._failure("no listening address in time"))
            self.address = _address_from_log(self.log_text()) or _address_from_proc(
                self.process.pid
            )
            if not self.address:
                time.sleep(_POLL_SECONDS)
        if not _host_is_loopback(self.address):
            raise ServerStartError(self._failure(f"listens on {self.address}, not loopback"))
        while not health_check_serving(self.address, timeout=1.0):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServerStartError(self._failure("never answered SERVING"))
            time.sleep(_POLL_SECONDS)
        return self.address

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process (all threads), if known."""
        return process_cpu_seconds(self.process.pid)

    def rss_bytes(self) -> int | None:
        """Resident memory of the server process (``VmRSS``), if known."""
        return process_rss_bytes(self.process.pid)

    def stop(self, grace_seconds: float = 10.0) -> int:
        """SIGTERM, wait up to ``grace_seconds``, then SIGKILL; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(grace_seconds)

    def _failure(self, reason: str) -> str:
        return f"{self.name} {reason}; last log lines:\n{self.log_tail()}"


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all threads), if known (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After "pid (comm)": state is field 0, utime 11 and stime 12 (proc(5) 14 and 15).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int) -> int | None:
    """``VmRSS`` of a process from ``/proc/PID/status``, if known (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # "VmRSS:   123456 kB"
    except (OSError, ValueError, IndexError):
        return None
    return None


def machine_busy_seconds() -> float | None:
    """CPU time all processes of the machine used since boot (Linux), if known.

    The harness subtracts its own servers' and clients' share to show how much
    other work (someone else's test run) competed with a measurement.
    """
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    # cpu user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    ticks = [int(value) for value in first[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _host_is_loopback(address: str) -> bool:
    return address.rpartition(":")[0] == LOOPBACK


def _address_from_log(text: str) -> str:
    """``HOST:PORT`` from the first ``listening on`` line, or ``""``."""
    match = _LISTENING.search(text)
    return f"{match.group(1)}:{match.group(2)}" if match else ""


def _address_from_proc(pid: int) -> str:
    """``127.0.0.1:PORT`` of a TCP socket ``pid`` listens on (Linux), or ``""``.

    gRPC binds ``127.0.0.1`` as an IPv4-mapped IPv6 socket, so both tables are read.
    """
    try:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        rows = [
            row.split()
            for table in ("tcp", "tcp6")
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        ]
    except OSError:
        return ""
    for fields in rows:
        local, state, inode = fields[1], fields[3], fields[9]
        host_hex, _, port_hex = local.partition(":")
        if state == _TCP_LISTEN_STATE and inode in inodes and host_hex in _LOOPBACK_HEX:
            return f"{LOOPBACK}:{int(port_hex, 16)}"
    return ""


def health_check_serving(address: str, timeout: float) -> bool:
    """True if ``Health/Check`` for the overall service answers SERVING."""
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response = check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


@dataclasses.dataclass(frozen=True)
class SutOptions:
    """How to run the system under test.

    Attributes:
        log_level: ``FANFARE_LOG_LEVEL`` of the server (``warning``: no per-call lines).
        extra_env: More ``FANFARE_*`` variables (e.g. a PostgreSQL or Redis URL).
        startup_timeout: Seconds for migrate and for the server to become ready.
        source_tree: Run the SUT from this checkout (its ``src`` and ``generated``
            go first on ``PYTHONPATH``) instead of the installed package, e.g. an
            export of another commit; ``None`` uses the venv's (editable) install.
        redis_url: Redis for the SUT's cache: the harness sets ``FANFARE_REDIS_URL``
            and a fresh ``FANFARE_REDIS_PREFIX`` (``fanfare-bench-<random>``), and
            deletes every key under that prefix once the SUT has stopped, so a shared
            Redis can be used.
    """

    log_level: str = "warning"
    extra_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    startup_timeout: float = 60.0
    source_tree: Path | None = None
    redis_url: str | None = None


def sut_env(data_dir: Path, options: SutOptions) -> dict[str, str]:
    """This process's environment without ``FANFARE_*``, plus the benchmark settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FANFARE_")}
    env.update(
        {
            "FANFARE_DATA_DIR": str(data_dir),
            "FANFARE_LISTEN": f"{LOOPBACK}:0",
            "FANFARE_LOG_LEVEL": options.log_level,
            "FANFARE_SHUTDOWN_GRACE_SECONDS": "2",
            # Every simulated shopper connects from loopback: one client address.
            "FANFARE_WATCH_STREAMS_PER_CLIENT": "1000000",
        }
    )
    env.update(options.extra_env)
    if options.source_tree is not None:
        tree = options.source_tree.resolve()
        paths = [str(tree / "src"), str(tree / "generated"), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    return env


def run_cli(arguments: Sequence[str], env: Mapping[str, str], timeout: float = 60.0) -> str:
    """Run ``python -m fanfare_grpc ARGS`` to completion; return its stdout.

    Raises:
        RuntimeError: The command failed (the message has its stderr).
    """
    completed = subprocess.run(
        [sys.executable, "-m", "fanfare_grpc", *arguments],
        env=dict(env),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"fanfare-grpc {' '.join(arguments)} exited {completed.returncode}:\n"
            + completed.stderr.decode(errors="replace")[-4000:]
        )
    return completed.stdout.decode()


def run_cli_json(arguments: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    """Run a ``--json`` CLI command and parse the one object it prints."""
    parsed = json.loads(run_cli(arguments, env))
    if not isinstance(parsed, dict):
        raise TypeError(f"fanfare-grpc {' '.join(arguments)} printed {parsed!r}, not an object")
    return parsed


@contextlib.contextmanager
def running_sut(
    work_dir: Path, options: SutOptions
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """Migrate a fresh data dir, run the SUT (``bench.sut_server``); yield (server, env)."""
    data_dir = work_dir / "sut-data"
    data_dir.mkdir()
    env = sut_env(data_dir, options)
    with contextlib.ExitStack() as stack:
        if options.redis_url is not None:
            prefix = f"fanfare-bench-{secrets.token_hex(6)}"
            env.update({"FANFARE_REDIS_URL": options.redis_url, "FANFARE_REDIS_PREFIX": prefix})
            # A benchmark's Redis is scratch space: whether it persists is not measured.
            env.setdefault("FANFARE_REDIS_EPHEMERAL_OK", "true")
            # Registered first, so it runs after the server has stopped.
            stack.callback(delete_redis_prefix, options.redis_url, prefix)
        run_cli(["migrate"], env, timeout=options.startup_timeout)
        argv = [sys.executable, "-m", "bench.sut_server"]
        server = ServerProcess.start("SUT", argv, env, work_dir / "sut.log")
        stack.callback(server.stop)
        server.wait_ready(options.startup_timeout)
        yield server, env


def delete_redis_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix:`` (SCAN + UNLINK); return how many."""
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    finally:
        client.close()
    return deleted


@contextlib.contextmanager
def running_baseline(work_dir: Path, startup_timeout: float = 30.0) -> Iterator[ServerProcess]:
    """Run the bare ``grpc.aio`` health server (``bench.baseline_server``)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FANFARE_")}
    argv = [sys.executable, "-m", "bench.baseline_server", "--listen", f"{LOOPBACK}:0"]
    server = ServerProcess.start("baseline", argv, env, work_dir / "baseline.log")
    try:
        server.wait_ready(startup_timeout)
        yield server
    finally:
        server.stop()

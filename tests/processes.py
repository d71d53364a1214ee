"""Start ``fanfare-grpc`` processes for tests and read their JSON logs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def process_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment with a private data dir and a free port."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FANFARE_")}
    env.update({"FANFARE_DATA_DIR": str(data_dir), "FANFARE_LISTEN": "127.0.0.1:0"})
    # The test Redis servers persist nothing; tests of that refusal override this.
    env["FANFARE_REDIS_EPHEMERAL_OK"] = "true"
    env.update(extra or {})
    return env


async def run_cli(
    *arguments: str, env: Mapping[str, str], timeout: float = 60
) -> tuple[int, str, str]:
    """Run ``python -m fanfare_grpc ARGS`` to completion."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fanfare_grpc",
        *arguments,
        env=dict(env),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


class ServerProcess:
    """A server subprocess whose stderr (JSON log lines) is collected as it runs."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.log_lines: list[str] = []
        self.address = ""
        self._listening = asyncio.Event()
        self._reader = asyncio.create_task(self._read_logs())

    @classmethod
    async def start(cls, module_arguments: list[str], env: Mapping[str, str]) -> ServerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *module_arguments,
            env=dict(env),
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read_logs(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.log_lines.append(line)
            match = _LISTENING.search(line)
            if match and not self.address:
                self.address = f"{match.group(1)}:{match.group(2)}"
                self._listening.set()

    async def wait_listening(self, timeout: float = 30) -> str:
        waiter = asyncio.create_task(self._listening.wait())
        exited = asyncio.create_task(self.process.wait())
        await asyncio.wait({waiter, exited}, timeout=timeout, return_when="FIRST_COMPLETED")
        waiter.cancel()
        exited.cancel()
        assert self._listening.is_set(), "server did not start:\n" + "\n".join(self.log_lines)
        return self.address

    def messages(self) -> list[dict[str, object]]:
        parsed = []
        for line in self.log_lines:
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                parsed.append({"raw": line})
        return parsed

    async def wait_exit(self, timeout: float = 30) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout=timeout)
        await self._reader
        return code

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()

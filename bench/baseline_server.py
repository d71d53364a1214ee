"""The bare baseline: a plain ``grpc.aio`` server with no interceptors.

It hosts the standard ``grpc.health.v1.Health`` servicer (the same async
implementation the product uses) and the bench echo RPC (``bench.echo``), so the SUT
and the baseline answer the very same RPCs with the same message sizes; the
difference is everything Fanfare adds around them.

Run: ``python -m bench.baseline_server [--listen 127.0.0.1:0]``. It logs
``listening on HOST:PORT`` on stderr and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from bench.echo import echo_handler


def _parse_listen(argv: list[str] | None) -> str:
    """The ``--listen`` address; only loopback is accepted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="loopback host:port")
    listen: str = parser.parse_args(argv).listen
    if not listen.startswith("127.0.0.1:"):
        parser.error("the baseline listens on 127.0.0.1 only")
    return listen


async def serve(listen: str) -> None:
    """Serve health checks until SIGTERM or SIGINT."""
    server = aio.server()
    health = HealthServicer()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_generic_rpc_handlers((echo_handler(),))
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    asyncio.run(serve(_parse_listen(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A TCP relay whose connections to the server leave from another loopback address.

Every 127.0.0.0/8 address is this machine, so a relay that binds its outgoing socket
to 127.0.0.N makes the server see a caller at 127.0.0.N: another client, over real
sockets, as if from another machine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def relayed_from(source_host: str, target: str) -> AsyncIterator[str]:
    """An address to dial instead of ``target`` (``host:port``); the server sees ``source_host``.

    Close the channels using it before leaving the block.
    """
    target_host, _, target_port = target.rpartition(":")
    pipes: set[asyncio.Task[None]] = set()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                target_host, int(target_port), local_addr=(source_host, 0)
            )
        except OSError:
            writer.close()
            return
        for task in (
            asyncio.create_task(_pipe(reader, upstream_writer)),
            asyncio.create_task(_pipe(upstream_reader, writer)),
        ):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await server.wait_closed()

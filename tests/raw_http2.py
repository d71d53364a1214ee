"""A raw HTTP/2 gRPC client for what grpcio's own client refuses to send.

grpcio (and most gRPC clients) validate metadata before sending it, so header values
with invalid UTF-8 or control bytes, repeated credential headers in odd orders, or a
body that is not a valid message can only reach the server through a client that
writes the HTTP/2 frames itself. Attackers have such clients; so do these tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import struct
from collections.abc import Sequence
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events


@dataclasses.dataclass(frozen=True)
class RawResponse:
    """What came back: headers, trailers, and the gRPC status in either."""

    headers: dict[str, str]
    trailers: dict[str, str]
    body: bytes

    @property
    def status(self) -> int:
        """The numeric ``grpc-status`` (trailers-only responses carry it in headers)."""
        return int(self.trailers.get("grpc-status", self.headers.get("grpc-status", "-1")))

    @property
    def message(self) -> str:
        """The percent-decoded ``grpc-message``."""
        raw = self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))
        return unquote(raw)

    def header(self, name: str) -> str | None:
        """A response header or trailer."""
        return self.headers.get(name, self.trailers.get(name))


def grpc_frame(message: bytes) -> bytes:
    """One length-prefixed, uncompressed gRPC message."""
    return struct.pack(">?I", False, len(message)) + message


async def raw_grpc_call(
    address: str,
    method: str,
    body: bytes,
    metadata: Sequence[tuple[bytes, bytes]] = (),
    *,
    timeout: float = 10.0,
) -> RawResponse:
    """One unary call over plaintext HTTP/2 with metadata sent byte for byte."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    config = h2.config.H2Configuration(
        client_side=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        header_encoding=None,
    )
    connection = h2.connection.H2Connection(config=config)
    # Huffman-coding a 30 KB value in pure Python takes most of a second; raw octets
    # are as valid on the wire.
    connection.encoder.encode = functools.partial(connection.encoder.encode, huffman=False)  # type: ignore[method-assign]
    connection.initiate_connection()
    stream_id = connection.get_next_available_stream_id()
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", method.encode()),
        (b":authority", address.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *metadata,
    ]
    connection.send_headers(stream_id, headers)
    connection.send_data(stream_id, grpc_frame(body), end_stream=True)
    writer.write(connection.data_to_send())
    response_headers: dict[str, str] = {}
    trailers: dict[str, str] = {}
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                ended = False
                for event in connection.receive_data(chunk):
                    if isinstance(event, h2.events.ResponseReceived):
                        response_headers = _decoded(event.headers)
                    elif isinstance(event, h2.events.TrailersReceived):
                        trailers = _decoded(event.headers)
                    elif isinstance(event, h2.events.DataReceived):
                        data += event.data
                        connection.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        ended = True
                writer.write(connection.data_to_send())
                if ended:
                    break
    finally:
        writer.close()
    return RawResponse(response_headers, trailers, data)


def _decoded(headers: Sequence[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, value in headers:
        key = name.decode() if isinstance(name, bytes) else name
        result[key] = value.decode("latin-1") if isinstance(value, bytes) else value
    return result

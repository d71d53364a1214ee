"""Consumer sessions for benchmarks: guest sessions and the refresh-token chain.

Everything goes through the SUT's public API (``SessionService``) with a publishable
key, like a browser would. ``RefreshChain`` is a ``bench.load_client.CallChain``: it
is pickled into the load plan and runs in the client processes.
"""

from __future__ import annotations

import dataclasses
import secrets

import grpc
from fanfare.session.v1 import session_service_pb2 as sessions
from grpc import aio

from bench.load_client import Metadata, Payload

_SESSION_SERVICE = "/fanfare.session.v1.SessionService/"
CREATE_GUEST_SESSION = _SESSION_SERVICE + "CreateGuestSession"
REFRESH_SESSION = _SESSION_SERVICE + "RefreshSession"
SESSION_HEADER = "x-fanfare-session"
DEVICE_HEADER = "x-fanfare-device"
_SETUP_TIMEOUT_SECONDS = 30.0


def new_device() -> str:
    """A device fingerprint no other session of the run uses."""
    return f"bench-device-{secrets.token_hex(8)}"


def consumer_metadata(
    publishable_key: str, device: str, access_token: str | None = None
) -> Metadata:
    """pk and device fingerprint, and the consumer access token if given."""
    metadata = [("authorization", f"Bearer {publishable_key}"), (DEVICE_HEADER, device)]
    if access_token is not None:
        metadata.append((SESSION_HEADER, access_token))
    return tuple(metadata)


def create_guest_session(
    address: str, publishable_key: str, device: str
) -> sessions.CreateGuestSessionResponse:
    """A new guest session bound to ``device`` (blocking; for case builders)."""
    with grpc.insecure_channel(address) as channel:
        create = channel.unary_unary(
            CREATE_GUEST_SESSION,
            request_serializer=sessions.CreateGuestSessionRequest.SerializeToString,
            response_deserializer=sessions.CreateGuestSessionResponse.FromString,
        )
        response: sessions.CreateGuestSessionResponse = create(
            sessions.CreateGuestSessionRequest(),
            metadata=consumer_metadata(publishable_key, device),
            timeout=_SETUP_TIMEOUT_SECONDS,
        )
    return response


@dataclasses.dataclass(frozen=True)
class RefreshChain:
    """One guest session per worker, refreshed with its newest refresh token every call.

    Refresh tokens are single use and a reused one revokes the session, so a chain
    must never present a token twice after a success. After a failed call the worker
    presents the same token again: if the server had rotated it anyway, that is a
    reuse, the session is revoked and every later call of the worker fails (so one
    lost response shows up as many errors, not as a silent slowdown).

    Attributes:
        publishable_key: A test-mode pk of the bench organization.
    """

    publishable_key: str

    async def start(self, channel: aio.Channel) -> Payload:
        """Create this worker's guest session on a device of its own."""
        device = new_device()
        create: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            CREATE_GUEST_SESSION
        )
        response = sessions.CreateGuestSessionResponse.FromString(
            await create(
                sessions.CreateGuestSessionRequest().SerializeToString(),
                metadata=consumer_metadata(self.publishable_key, device),
                timeout=_SETUP_TIMEOUT_SECONDS,
            )
        )
        return self._refresh_payload(response.refresh_token, device)

    def next(self, payload: Payload, response: bytes) -> Payload:
        """The same device, the refresh token the last call returned."""
        device = dict(payload[1])[DEVICE_HEADER]
        refreshed = sessions.RefreshSessionResponse.FromString(response)
        return self._refresh_payload(refreshed.refresh_token, device)

    def _refresh_payload(self, refresh_token: str, device: str) -> Payload:
        request = sessions.RefreshSessionRequest(refresh_token=refresh_token)
        return request.SerializeToString(), consumer_metadata(self.publishable_key, device)

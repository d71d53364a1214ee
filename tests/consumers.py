"""A running server with two organizations and publishable keys, for consumer tests.

Login codes arrive through the real dev delivery channel (the server log), which
``LoginCodes`` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterator

from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from fanfare.common.v1 import common_pb2
from fanfare.session.v1 import session_service_pb2 as sessions
from fanfare.session.v1 import session_service_pb2_grpc
from grpc import aio

from fanfare_grpc.domain.organizations import NewOrganization
from fanfare_grpc.server import RunningServer
from fanfare_grpc.settings import Settings
from tests.clock import MutableClock
from tests.conftest import new_organization, start_migrated_server
from tests.grpc_helpers import bearer
from tests.log_capture import service_log_handler

Metadata = tuple[tuple[str, str], ...]


class LoginCodes(logging.Handler):
    """Collects the codes the dev delivery channel writes to the server log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.codes: dict[str, str] = {}
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        code = getattr(record, "login_code", None)
        if code is not None:
            self.codes[getattr(record, "challenge_id")] = code  # noqa: B009

    async def code_for(self, challenge_id: str, timeout: float = 5.0) -> str:
        """The code sent for ``challenge_id`` (delivery runs after the response)."""
        async with asyncio.timeout(timeout):
            while challenge_id not in self.codes:
                await asyncio.sleep(0.01)
        return self.codes[challenge_id]


@contextlib.contextmanager
def capture_login_codes() -> Iterator[LoginCodes]:
    """Attach a ``LoginCodes`` handler to the service logger for the duration."""
    with service_log_handler(LoginCodes(), logging.INFO) as handler:
        yield handler


@dataclasses.dataclass
class Tenant:
    """One organization with a test-mode pk and the ADMIN sk of each mode."""

    organization: NewOrganization
    publishable_key: str
    live_publishable_key: str

    @property
    def secret_key(self) -> str:
        return self.organization.test_admin_key.plaintext


def consumer_metadata(
    publishable_key: str, access_token: str | None = None, device: str | None = None
) -> Metadata:
    """pk, and optionally a consumer token and device fingerprint."""
    metadata = list(bearer(publishable_key))
    if access_token is not None:
        metadata.append(("x-fanfare-session", access_token))
    if device is not None:
        metadata.append(("x-fanfare-device", device))
    return tuple(metadata)


@dataclasses.dataclass
class ConsumerWorld:
    """Server, clock, log-delivered codes, two tenants, one channel."""

    server: RunningServer
    clock: MutableClock
    codes: LoginCodes
    acme: Tenant
    globex: Tenant
    channel: aio.Channel

    @property
    def auth(self) -> auth_service_pb2_grpc.AuthServiceStub:
        return auth_service_pb2_grpc.AuthServiceStub(self.channel)

    @property
    def sessions(self) -> session_service_pb2_grpc.SessionServiceStub:
        return session_service_pb2_grpc.SessionServiceStub(self.channel)

    async def guest(
        self, tenant: Tenant | None = None, device: str = "device-1"
    ) -> sessions.CreateGuestSessionResponse:
        tenant = tenant or self.acme
        response: sessions.CreateGuestSessionResponse = await self.sessions.CreateGuestSession(
            sessions.CreateGuestSessionRequest(),
            metadata=consumer_metadata(tenant.publishable_key, device=device),
        )
        return response

    async def start_login(
        self, email: str, device: str = "device-1", tenant: Tenant | None = None
    ) -> auth.StartPasswordlessLoginResponse:
        tenant = tenant or self.acme
        response: auth.StartPasswordlessLoginResponse = await self.auth.StartPasswordlessLogin(
            auth.StartPasswordlessLoginRequest(email=email),
            metadata=consumer_metadata(tenant.publishable_key, device=device),
        )
        return response

    async def verify_login(
        self,
        challenge_id: str,
        code: str,
        device: str = "device-1",
        tenant: Tenant | None = None,
    ) -> auth.VerifyPasswordlessLoginResponse:
        tenant = tenant or self.acme
        response: auth.VerifyPasswordlessLoginResponse = await self.auth.VerifyPasswordlessLogin(
            auth.VerifyPasswordlessLoginRequest(challenge_id=challenge_id, code=code),
            metadata=consumer_metadata(tenant.publishable_key, device=device),
        )
        return response

    async def login(
        self, email: str, device: str = "device-1", tenant: Tenant | None = None
    ) -> auth.VerifyPasswordlessLoginResponse:
        started = await self.start_login(email, device, tenant)
        code = await self.codes.code_for(started.challenge_id)
        return await self.verify_login(started.challenge_id, code, device, tenant)

    async def refresh(
        self, refresh_token: str, device: str = "device-1", tenant: Tenant | None = None
    ) -> sessions.RefreshSessionResponse:
        tenant = tenant or self.acme
        response: sessions.RefreshSessionResponse = await self.sessions.RefreshSession(
            sessions.RefreshSessionRequest(refresh_token=refresh_token),
            metadata=consumer_metadata(tenant.publishable_key, device=device),
        )
        return response

    async def get_session(
        self, access_token: str, device: str = "device-1", tenant: Tenant | None = None
    ) -> sessions.GetSessionResponse:
        tenant = tenant or self.acme
        response: sessions.GetSessionResponse = await self.sessions.GetSession(
            sessions.GetSessionRequest(),
            metadata=consumer_metadata(tenant.publishable_key, access_token, device),
        )
        return response


async def _publishable_key(channel: aio.Channel, secret_key: str) -> str:
    response: auth.CreateApiKeyResponse = await auth_service_pb2_grpc.AuthServiceStub(
        channel
    ).CreateApiKey(
        auth.CreateApiKeyRequest(kind=common_pb2.API_KEY_KIND_PUBLISHABLE, name="web"),
        metadata=bearer(secret_key),
    )
    return response.secret


async def _tenant(server: RunningServer, channel: aio.Channel, name: str) -> Tenant:
    organization = await new_organization(server, name)
    return Tenant(
        organization,
        await _publishable_key(channel, organization.test_admin_key.plaintext),
        await _publishable_key(channel, organization.live_admin_key.plaintext),
    )


@contextlib.asynccontextmanager
async def serving_consumer_world(
    settings: Settings, *, run_worker: bool = True
) -> AsyncIterator[ConsumerWorld]:
    """A migrated server on an injectable clock, with two tenants; stopped afterwards.

    With ``run_worker=False`` the background jobs never run on their own: tests drive
    them (``application.queue_worker.run_once()``) along with the clock.
    """
    clock = MutableClock()
    server = await start_migrated_server(settings, clock=clock, run_worker=run_worker)
    try:
        async with consumer_world(server, clock) as world:
            yield world
    finally:
        await server.shutdown(grace_seconds=1.0)


@contextlib.asynccontextmanager
async def consumer_world(
    server: RunningServer, clock: MutableClock
) -> AsyncIterator[ConsumerWorld]:
    """Two tenants on ``server``; codes captured from the log."""
    with capture_login_codes() as codes:
        async with aio.insecure_channel(server.address) as channel:
            yield ConsumerWorld(
                server,
                clock,
                codes,
                await _tenant(server, channel, "Acme"),
                await _tenant(server, channel, "Globex"),
                channel,
            )

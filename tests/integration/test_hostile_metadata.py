"""Metadata no well-behaved client sends: invalid UTF-8, repeated credentials, junk.

Sent byte for byte through a raw HTTP/2 client (grpcio's own client refuses to), on
both backends. What must hold: no secret reaches the log whatever every logger's
level, such headers get a clear status, two credentials never pick one silently,
and anonymous junk cannot grow the log faster than its budget.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.common.v1 import common_pb2
from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.queue.v1 import queue_service_pb2_grpc
from fanfare.session.v1 import session_service_pb2 as sessions
from grpc import aio

from fanfare_grpc.authentication.consumer_tokens import DEVICE_REQUIRED
from fanfare_grpc.authentication.key_verifier import INVALID_CREDENTIALS
from fanfare_grpc.interceptors.authentication import BEARER_FORMAT
from tests.conftest import BackendSettings
from tests.consumers import ConsumerWorld, consumer_metadata, serving_consumer_world
from tests.grpc_helpers import bad_request_fields, bearer, error_reasons, expect_status
from tests.log_capture import server_log
from tests.raw_http2 import raw_grpc_call

GET_JWKS = "/fanfare.auth.v1.AuthService/GetJwks"
GET_SESSION = "/fanfare.session.v1.SessionService/GetSession"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
# The raw client's own HTTP/2 libraries log at DEBUG too; they are not the server.
_CLIENT_LOGGERS = ("h2", "hpack")


@pytest.fixture
async def world(backend: BackendSettings) -> AsyncIterator[ConsumerWorld]:
    async with serving_consumer_world(backend.settings) as world:
        yield world


@pytest.fixture
def every_logger_at_debug() -> Iterator[io.StringIO]:
    """The server's log configuration at DEBUG, and every library logger at DEBUG."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    loggers += [logging.getLogger(name) for name in ("grpc", "grpc._cython.cygrpc")]
    previous_levels = {logger.name: logger.level for logger in loggers}
    with server_log("debug") as stream:
        for logger in loggers:
            client_side = logger.name.startswith(_CLIENT_LOGGERS)
            logger.setLevel(logging.WARNING if client_side else logging.DEBUG)
        try:
            yield stream
        finally:
            for logger in loggers:
                logger.setLevel(previous_levels[logger.name])


@pytest.fixture
def server_log_at_info() -> Iterator[io.StringIO]:
    """The server's log configuration at its default level."""
    with server_log("info") as stream:
        yield stream


def _assert_no_secret(log: str, *secrets_seen: str) -> None:
    for secret in secrets_seen:
        assert secret not in log
        assert secret[8:24] not in log  # not even a fragment without its prefix


async def test_a_credential_with_invalid_utf8_never_reaches_the_log(
    world: ConsumerWorld, every_logger_at_debug: io.StringIO
) -> None:
    secret_key = world.acme.secret_key
    publishable_key = world.acme.publishable_key
    guest = await world.guest()
    address = world.server.address
    cases = [
        [(b"authorization", b"Bearer " + secret_key.encode() + b"\xff")],
        [(b"authorization", b"Bearer \xc3\x28" + secret_key.encode())],
        [(b"x-publishable-key", publishable_key.encode() + b"\xfe")],
        [
            (b"authorization", b"Bearer " + publishable_key.encode()),
            (b"x-fanfare-session", guest.access_token.encode() + b"\xff"),
            (b"x-fanfare-device", b"device-1"),
        ],
    ]
    for metadata in cases:
        response = await raw_grpc_call(address, GET_SESSION, b"", metadata)
        assert response.status == UNAUTHENTICATED, response
        assert (response.header("x-request-id") or "").startswith("req_")
    log = every_logger_at_debug.getvalue()
    assert "rpc finished" in log  # the calls were logged, at DEBUG by every logger
    _assert_no_secret(log, secret_key, publishable_key, guest.access_token, guest.refresh_token)


async def test_credentials_padded_with_non_ascii_whitespace_do_not_authenticate(
    world: ConsumerWorld,
) -> None:
    # grpcio decodes 0xA0 / 0x85 as latin-1 U+00A0 / U+0085, which str.strip() removes:
    # a proxy matching the exact header value and the server would see two keys.
    guest = await world.guest()
    secret_key = world.acme.secret_key.encode()
    publishable_key = world.acme.publishable_key.encode()
    token = guest.access_token.encode()
    cases = [
        [(b"authorization", b"Bearer " + secret_key + b"\xa0")],
        [(b"authorization", b"Bearer \xa0" + secret_key)],
        [(b"authorization", b"Bearer " + secret_key + b"\x85")],
        [(b"x-publishable-key", publishable_key + b"\xa0")],
        [
            (b"authorization", b"Bearer " + publishable_key),
            (b"x-fanfare-session", token + b"\xa0"),
            (b"x-fanfare-device", b"device-1"),
        ],
    ]
    for metadata in cases:
        response = await raw_grpc_call(world.server.address, GET_SESSION, b"", metadata)
        assert response.status == UNAUTHENTICATED, (metadata, response)
    # The control: the same credentials without the padding work.
    control = [
        (b"authorization", b"Bearer " + publishable_key),
        (b"x-fanfare-session", token),
        (b"x-fanfare-device", b"device-1"),
    ]
    assert (await raw_grpc_call(world.server.address, GET_SESSION, b"", control)).status == 0


async def test_a_device_header_that_is_not_printable_ascii_is_invalid(
    world: ConsumerWorld, every_logger_at_debug: io.StringIO
) -> None:
    guest = await world.guest(device="device-1")
    pk = world.acme.publishable_key.encode()
    address = world.server.address
    # grpcio decodes bytes that are not UTF-8 as latin-1: without this check "\xe9"
    # (latin-1) and "\xc3\xa9" (UTF-8 é) could both become a fingerprint.
    for device in (b"device-1\xff", b"d\xc3\xa9vice", b"dev\x01ice", b"\xe9"):
        for method in (GET_JWKS, GET_SESSION):
            response = await raw_grpc_call(
                address,
                method,
                b"",
                [
                    (b"authorization", b"Bearer " + pk),
                    (b"x-fanfare-session", guest.access_token.encode()),
                    (b"x-fanfare-device", device),
                ],
            )
            assert response.status == INVALID_ARGUMENT, (device, response)
            assert response.message == "invalid device fingerprint"
    _assert_no_secret(every_logger_at_debug.getvalue(), guest.access_token, guest.refresh_token)


async def test_anonymous_junk_cannot_grow_the_log_past_its_budget(
    world: ConsumerWorld, server_log_at_info: io.StringIO
) -> None:
    # Before: one health check with 30 KB of \xff added ≈ 450 KB of log (grpcio logged
    # the value and a traceback). Now its records are redacted and budgeted.
    junk = [(b"x-junk", b"\xff" * 30_000)]
    for _ in range(300):
        response = await raw_grpc_call(world.server.address, HEALTH_CHECK, b"", junk)
        assert response.status == 0
    log = server_log_at_info.getvalue()
    assert "\xff" not in log and "\\xff" not in log and "ÿ" not in log
    assert len(log.encode()) < 250_000, len(log.encode())  # 300 calls: 135 MB before
    assert "log budget exceeded" in log


async def test_repeated_credential_headers_are_unauthenticated(world: ConsumerWorld) -> None:
    acme, globex = world.acme, world.globex
    acme_guest = await world.guest(acme)
    globex_guest = await world.guest(globex)
    stub = world.sessions
    cases = {
        "authorization": (
            ("authorization", f"Bearer {acme.secret_key}"),
            ("authorization", f"Bearer {globex.secret_key}"),
        ),
        "x-publishable-key": (
            ("x-publishable-key", acme.publishable_key),
            ("x-publishable-key", acme.publishable_key),
        ),
        "x-fanfare-session": (
            *consumer_metadata(acme.publishable_key, acme_guest.access_token, "device-1"),
            ("x-fanfare-session", acme_guest.access_token),
        ),
        "x-fanfare-device": (
            *consumer_metadata(acme.publishable_key, acme_guest.access_token, "device-1"),
            ("x-fanfare-device", "device-2"),
        ),
    }
    for header, metadata in cases.items():
        error = await expect_status(
            stub.GetSession(sessions.GetSessionRequest(), metadata=metadata),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert error.details() == f"duplicate {header} header: send it once"
    # Each alone works (the refusals above came from the repetition).
    await stub.GetSession(
        sessions.GetSessionRequest(),
        metadata=consumer_metadata(acme.publishable_key, acme_guest.access_token, "device-1"),
    )
    await stub.GetSession(
        sessions.GetSessionRequest(),
        metadata=consumer_metadata(globex.publishable_key, globex_guest.access_token, "device-1"),
    )


async def test_repeated_idempotency_keys_are_invalid(world: ConsumerWorld) -> None:
    request = auth.CreateApiKeyRequest(kind=common_pb2.API_KEY_KIND_PUBLISHABLE, name="web")
    metadata = (*bearer(world.acme.secret_key), ("idempotency-key", "a"), ("idempotency-key", "b"))
    error = await expect_status(
        world.auth.CreateApiKey(request, metadata=metadata), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert bad_request_fields(error) == ["idempotency-key"]


async def test_authorization_without_bearer_says_the_expected_format(
    world: ConsumerWorld,
) -> None:
    for value in (f"Basic {world.acme.secret_key}", world.acme.secret_key, "Bearer"):
        error = await expect_status(
            world.auth.GetJwks(auth.GetJwksRequest(), metadata=(("authorization", value),)),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert error.details() == BEARER_FORMAT
        assert world.acme.secret_key[8:] not in error.details()
    # A well-formed header with a wrong key still gets the uniform message.
    error = await expect_status(
        world.auth.GetJwks(auth.GetJwksRequest(), metadata=bearer("sk_test_" + "A" * 44)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert error.details() == INVALID_CREDENTIALS


async def test_a_session_without_its_device_says_the_header_is_missing(
    world: ConsumerWorld,
) -> None:
    guest = await world.guest()
    error = await expect_status(
        world.sessions.GetSession(
            sessions.GetSessionRequest(),
            metadata=consumer_metadata(world.acme.publishable_key, guest.access_token),
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert error.details() == DEVICE_REQUIRED
    assert error_reasons(error) == ["DEVICE_REQUIRED"]


async def test_permission_denied_says_what_the_method_needs(world: ConsumerWorld) -> None:
    queue_stub = queue_service_pb2_grpc.QueueServiceStub(world.channel)
    auditor = await world.auth.CreateApiKey(
        auth.CreateApiKeyRequest(
            kind=common_pb2.API_KEY_KIND_SECRET, role=common_pb2.ROLE_AUDITOR, name="audit"
        ),
        metadata=bearer(world.acme.secret_key),
    )
    guest = await world.guest()
    consumer = consumer_metadata(world.acme.publishable_key, guest.access_token, "device-1")
    cases: list[tuple[aio.UnaryUnaryCall, str]] = [
        (
            queue_stub.CreateQueue(
                queues.CreateQueueRequest(name="drop", admission_rate_per_minute=60),
                metadata=consumer,
            ),
            "requires a secret key with role ADMIN or OPERATOR",
        ),
        (
            world.auth.CreateApiKey(
                auth.CreateApiKeyRequest(kind=common_pb2.API_KEY_KIND_PUBLISHABLE, name="x"),
                metadata=bearer(auditor.secret),
            ),
            "requires a secret key with role ADMIN",
        ),
        (
            world.sessions.ValidateSession(
                sessions.ValidateSessionRequest(access_token=guest.access_token),
                metadata=consumer,
            ),
            "requires a secret key",
        ),
        (
            world.sessions.GetSession(
                sessions.GetSessionRequest(), metadata=bearer(auditor.secret)
            ),
            "requires a publishable key and a consumer session",
        ),
    ]
    for call, message in cases:
        error = await expect_status(call, grpc.StatusCode.PERMISSION_DENIED)
        assert error.details() == message
        assert auditor.api_key.key_id not in error.details()
        assert "AUDITOR" not in error.details() or "AUDITOR" in message

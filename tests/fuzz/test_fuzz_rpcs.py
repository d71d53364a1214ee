"""Descriptor-driven fuzzing of every RPC of the five services, on both backends.

For each RPC, a deterministic sweep sets every request field, one at a time, to each
of its edge values (``sweep``), and Hypothesis builds request messages from the
proto descriptors with hostile values (``strategies``); both go over a real channel
with each kind of credential (none, sk ADMIN, pk, pk + consumer token + device),
hostile metadata and, sometimes, a corrupted body. Header values that grpcio will
not send (invalid UTF-8, NUL) go over a hand-driven HTTP/2 connection. Every call
must end with a status other than INTERNAL or UNKNOWN, within its deadline, and no
secret of the fixture may appear in the server log.

The default profile is derandomized (the same examples on every run, so CI cannot
flake) and small enough for ``make test``. ``FANFARE_FUZZ_PROFILE=long`` draws many
more random examples; ``FANFARE_FUZZ_EXAMPLES=N`` sets the count per RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import string
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fanfare_grpc.domain.access import Role
from fanfare_grpc.permissions import PERMISSIONS, ConsumerToken
from tests.backends import REDIS_URL, throwaway_postgres_database, throwaway_redis_prefix
from tests.conftest import BACKENDS, embedded_settings
from tests.fuzz.harness import FuzzWorld, LoopThread, Metadata, fuzz_world, invoke
from tests.fuzz.strategies import RequestStrategies
from tests.fuzz.sweep import boundary_requests
from tests.protos import all_methods
from tests.raw_http2 import raw_grpc_call

LONG = os.environ.get("FANFARE_FUZZ_PROFILE", "") == "long"
EXAMPLES = int(os.environ.get("FANFARE_FUZZ_EXAMPLES", "0")) or (400 if LONG else 25)
DEADLINE_SECONDS = 5.0
FAILURES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
CREDENTIALS = ("none", "sk", "pk", "consumer")
METHODS = all_methods()
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    # The default profile replays the same examples every run; the long one explores.
    derandomize=not LONG,
    database=None,
    deadline=None,
    print_blob=True,
    # Real calls over a socket are slow next to what Hypothesis expects of a test.
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module", params=BACKENDS)
def fuzz(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzWorld]:
    """One server per backend for the whole module, on a loop in its own thread."""
    server_settings = embedded_settings(tmp_path_factory.mktemp("fuzz") / "data")
    with contextlib.ExitStack() as stack:
        if request.param != "embedded":
            server_settings = dataclasses.replace(
                server_settings,
                database_url=stack.enter_context(throwaway_postgres_database()),
                redis_url=REDIS_URL,
                redis_key_prefix=stack.enter_context(throwaway_redis_prefix()),
            )
        loop = LoopThread()
        stack.callback(loop.close)
        world = fuzz_world(server_settings, loop)
        yield loop.run(world.__aenter__(), 120)
        loop.run(world.__aexit__(None, None, None), 60)


_HEADER_NAMES = (
    "authorization",
    "x-publishable-key",
    "x-fanfare-device",
    "x-fanfare-session",
    "idempotency-key",
    "x-request-id",
    "x-forwarded-for",
)
# grpcio refuses to send text header values outside printable ASCII (it fails the
# call locally), so control characters and invalid UTF-8 travel in -bin headers.
_HEADER_VALUES = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
    st.sampled_from(["", " ", "Bearer ", "Bearer  ", "a" * 10_240, "Bearer " + "A" * 8_000]),
)


def hostile_metadata() -> st.SearchStrategy[Metadata]:
    """Extra headers: long values, duplicates of the credential headers, raw bytes."""
    text = st.tuples(st.sampled_from(_HEADER_NAMES), _HEADER_VALUES)
    binary = st.tuples(
        st.sampled_from([name + "-bin" for name in _HEADER_NAMES]),
        st.one_of(st.binary(max_size=64), st.just(b"\xff\xfe\x00" * 100)),
    )
    custom = st.tuples(
        st.text(string.ascii_lowercase + string.digits + "-_.", min_size=1, max_size=20).filter(
            lambda name: not name.startswith("grpc-") and not name.endswith("-bin")
        ),
        _HEADER_VALUES,
    )
    # Mostly none, so that most calls get past authentication.
    return st.one_of(
        st.just(()), st.just(()), st.lists(st.one_of(text, binary, custom), max_size=3).map(tuple)
    )


# Appended to the serialized request now and then: invalid UTF-8 in field 1, or
# random bytes (a body that does not parse as the method's message).
_BODY_SUFFIXES = st.one_of(
    st.just(b""),
    st.just(b""),
    st.just(b""),
    st.just(b"\x0a\x02\xff\xfe"),
    st.binary(min_size=1, max_size=16),
)


def _method_id(method: MethodDescriptor) -> str:
    return f"{method.containing_service.name}.{method.name}"


def accepted_credentials(method: MethodDescriptor) -> list[str]:
    """The credential kinds the permission table lets call ``method``."""
    policy = PERMISSIONS[f"/{method.containing_service.full_name}/{method.name}"]
    accepted = []
    if Role.ADMIN in policy.secret_roles:
        accepted.append("sk")
    if policy.publishable:
        accepted.append("consumer" if policy.consumer_token is ConsumerToken.REQUIRED else "pk")
    return accepted


def credential_kinds(method: MethodDescriptor) -> st.SearchStrategy[str]:
    """Every kind, the ones the method accepts more often (deeper than the auth layer)."""
    return st.sampled_from(accepted_credentials(method) * 3 + list(CREDENTIALS))


def _call(
    fuzz: FuzzWorld, method: MethodDescriptor, body: bytes, metadata: Metadata
) -> tuple[grpc.StatusCode, str, list[str]]:
    """Status, message and the secrets (first 12 characters) the call put in the log."""
    first_line = len(fuzz.log.lines)
    code, details = fuzz.loop.run(
        invoke(fuzz.world.channel, method, body, metadata, DEADLINE_SECONDS),
        DEADLINE_SECONDS + 10,
    )
    if method.name == "RevokeSession":
        # The consumer may just have revoked its own session: keep the credential live.
        fuzz.loop.run(fuzz.renew_consumer(), 30)
    return code, details, _leaked(fuzz, first_line)


def _leaked(fuzz: FuzzWorld, first_line: int) -> list[str]:
    """Fixture secrets (first 12 characters) in the log lines from ``first_line`` on."""
    logged = fuzz.log.since(first_line)
    return [secret[:12] for secret in fuzz.secrets if any(secret in line for line in logged)]


async def _sweep(
    fuzz: FuzzWorld, method: MethodDescriptor, credential: str, requests: list[tuple[str, bytes]]
) -> list[str]:
    """Send every request, a few at a time; describe each unclean answer."""
    limit = asyncio.Semaphore(8)

    async def send(label: str, body: bytes) -> str | None:
        async with limit:
            code, details = await invoke(
                fuzz.world.channel, method, body, fuzz.credentials(credential), DEADLINE_SECONDS
            )
        return f"{credential} {label}: {code.name} {details}" if code in FAILURES else None

    outcomes = await asyncio.gather(*(send(label, body) for label, body in requests))
    if method.name == "RevokeSession":
        await fuzz.renew_consumer()
    return [outcome for outcome in outcomes if outcome is not None]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", METHODS, ids=_method_id)
def test_each_field_at_each_edge_is_answered_cleanly(
    fuzz: FuzzWorld, method: MethodDescriptor
) -> None:
    targets = fuzz.loop.run(fuzz.targets(), 60)
    first_line = len(fuzz.log.lines)
    failures = []
    for credential in accepted_credentials(method) or ["sk"]:
        requests = [
            (label, request.SerializeToString())
            for label, request in boundary_requests(
                method.input_type, fuzz.hints(targets), int(time.time())
            )
        ]
        failures += fuzz.loop.run(_sweep(fuzz, method, credential, requests), 240)
    assert failures == []
    assert _leaked(fuzz, first_line) == []


@pytest.mark.timeout(max(120, EXAMPLES * 4))
@pytest.mark.parametrize("method", METHODS, ids=_method_id)
def test_hostile_requests_are_answered_cleanly(fuzz: FuzzWorld, method: MethodDescriptor) -> None:
    targets = fuzz.loop.run(fuzz.targets(), 60)
    strategies = RequestStrategies(fuzz.hints(targets), now=int(time.time()))

    @FUZZ_SETTINGS
    @given(
        request=strategies.message(method.input_type),
        credential=credential_kinds(method),
        extra=hostile_metadata(),
        suffix=_BODY_SUFFIXES,
    )
    def answered_cleanly(request: object, credential: str, extra: Metadata, suffix: bytes) -> None:
        body = request.SerializeToString() + suffix  # type: ignore[attr-defined]
        code, details, leaked = _call(fuzz, method, body, fuzz.credentials(credential) + extra)
        assert code not in FAILURES, f"{code.name}: {details}"
        assert leaked == [], f"secrets (first 12 characters shown) in the log: {leaked}"

    answered_cleanly()


UNARY_METHODS = [method for method in METHODS if not method.server_streaming]
# Raw header values: any bytes (invalid UTF-8, NUL, CR LF), which grpcio won't send.
# Header names stay lowercase: an uppercase name is illegal HTTP/2, which grpc's
# core itself answers with INTERNAL before any of our code runs.
_RAW_HEADERS = st.lists(
    st.tuples(
        st.sampled_from([name.encode() for name in _HEADER_NAMES]),
        st.one_of(
            st.binary(max_size=80),
            st.sampled_from([b"Bearer \xff", b"\x00", b"\r\n", b"\xc3\x28" * 1_000]),
        ),
    ),
    min_size=1,
    max_size=3,
)
_UNCLEAN_STATUSES = {code.value[0] for code in FAILURES}


@pytest.mark.timeout(max(120, EXAMPLES * 12))
def test_raw_header_bytes_are_answered_cleanly(fuzz: FuzzWorld) -> None:
    targets = fuzz.loop.run(fuzz.targets(), 60)
    strategies = RequestStrategies(fuzz.hints(targets), now=int(time.time()))

    @settings(FUZZ_SETTINGS, max_examples=EXAMPLES * 3)
    @given(
        method=st.sampled_from(UNARY_METHODS),
        credential=st.sampled_from(CREDENTIALS),
        headers=_RAW_HEADERS,
        garbled=st.sampled_from([b"", b"", b"\xff", b"\x00\xfe"]),
        data=st.data(),
    )
    def answered_cleanly(
        method: MethodDescriptor,
        credential: str,
        headers: list[tuple[bytes, bytes]],
        garbled: bytes,
        data: st.DataObject,
    ) -> None:
        request = data.draw(strategies.plausible(method.input_type))
        # A credential with bytes that are not UTF-8 after it: grpc logged such values.
        credentials = [
            (key.encode(), (value if isinstance(value, bytes) else value.encode()) + garbled)
            for key, value in fuzz.credentials(credential)
        ]
        first_line = len(fuzz.log.lines)
        response = fuzz.loop.run(
            raw_grpc_call(
                fuzz.world.server.address,
                f"/{method.containing_service.full_name}/{method.name}",
                request.SerializeToString(),
                credentials + headers,
                timeout=DEADLINE_SECONDS,
            ),
            DEADLINE_SECONDS + 10,
        )
        assert response.status not in _UNCLEAN_STATUSES | {-1}, response.message
        assert _leaked(fuzz, first_line) == []

    answered_cleanly()

"""AuthService key RPCs over real sockets, on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from fanfare.common.v1 import common_pb2
from fanfare.queue.v1 import queue_service_pb2, queue_service_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from fanfare_grpc.authentication.invalidation import CHANNEL
from fanfare_grpc.authentication.key_verifier import INVALID_CREDENTIALS, attempts_key
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.organizations import NewOrganization
from fanfare_grpc.interceptors.authentication import BEARER_FORMAT
from fanfare_grpc.logs import JsonFormatter
from fanfare_grpc.server import RunningServer
from tests.clock import MutableClock
from tests.conftest import BackendSettings, new_organization, start_migrated_server
from tests.display_names import SAFE_NAMES, UNSAFE_NAMES
from tests.grpc_helpers import bad_request_fields, bearer, run_grpcurl
from tests.log_capture import server_log

SECRET = common_pb2.API_KEY_KIND_SECRET
PUBLISHABLE = common_pb2.API_KEY_KIND_PUBLISHABLE
ROLES = {
    "admin": common_pb2.ROLE_ADMIN,
    "operator": common_pb2.ROLE_OPERATOR,
    "auditor": common_pb2.ROLE_AUDITOR,
    "readonly": common_pb2.ROLE_READONLY,
}


@dataclasses.dataclass
class World:
    """A running server, its clock, and two organizations."""

    server: RunningServer
    clock: MutableClock
    acme: NewOrganization
    globex: NewOrganization
    channel: aio.Channel

    @property
    def auth(self) -> auth_service_pb2_grpc.AuthServiceStub:
        return auth_service_pb2_grpc.AuthServiceStub(self.channel)

    @property
    def admin(self) -> str:
        return self.acme.test_admin_key.plaintext

    async def create_key(
        self, api_key: str, *, kind: int = SECRET, role: str | None = "operator", **fields: object
    ) -> auth.CreateApiKeyResponse:
        request = auth.CreateApiKeyRequest(
            kind=kind,
            role=ROLES[role] if role else common_pb2.ROLE_UNSPECIFIED,
            name=str(fields.pop("name", "a key")),
            **fields,  # type: ignore[arg-type]
        )
        response: auth.CreateApiKeyResponse = await self.auth.CreateApiKey(
            request, metadata=bearer(api_key)
        )
        return response

    async def list_keys(self, api_key: str, **fields: object) -> auth.ListApiKeysResponse:
        response: auth.ListApiKeysResponse = await self.auth.ListApiKeys(
            auth.ListApiKeysRequest(**fields),
            metadata=bearer(api_key),  # type: ignore[arg-type]
        )
        return response


@pytest.fixture
async def world(backend: BackendSettings) -> AsyncIterator[World]:
    clock = MutableClock()
    server = await start_migrated_server(backend.settings, clock=clock)
    try:
        acme = await new_organization(server, "Acme")
        globex = await new_organization(server, "Globex")
        async with aio.insecure_channel(server.address) as channel:
            yield World(server, clock, acme, globex, channel)
    finally:
        await server.shutdown(grace_seconds=1.0)


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(aio.AioRpcError) as failure:
        await call  # type: ignore[misc]
    code: grpc.StatusCode = failure.value.code()
    return code


async def _authenticated(world: World, api_key: str) -> bool:
    """Whether ``api_key`` gets past authentication (ListApiKeys needs ADMIN)."""
    try:
        await world.list_keys(api_key)
    except aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            assert error.details() == INVALID_CREDENTIALS
            return False
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    return True


async def test_create_list_and_use_keys(world: World) -> None:
    created = await world.create_key(world.admin, role="operator", name="  checkout backend ")
    assert created.secret.startswith("sk_test_") and len(created.secret) >= 8 + 32
    key = created.api_key
    assert key.key_id.startswith("key_")
    assert key.name == "checkout backend"
    assert (key.kind, key.mode, key.role) == (SECRET, common_pb2.MODE_TEST, ROLES["operator"])
    assert created.secret.startswith(key.prefix) and created.secret.endswith(key.last4)
    assert key.HasField("created_at") and not key.HasField("revoked_at")

    publishable = await world.create_key(world.admin, kind=PUBLISHABLE, role=None, name="web")
    assert publishable.secret.startswith("pk_test_")
    assert publishable.api_key.role == common_pb2.ROLE_UNSPECIFIED

    listed = await world.list_keys(world.admin)
    by_id = {item.key_id: item for item in listed.api_keys}
    assert {key.key_id, publishable.api_key.key_id} <= set(by_id)
    assert by_id[key.key_id] == key
    # Lists never carry a secret: only prefix and last four characters.
    assert created.secret not in str(listed) and publishable.secret not in str(listed)

    # The operator key authenticates (and is refused key management).
    assert await _code(world.list_keys(created.secret)) == grpc.StatusCode.PERMISSION_DENIED


async def test_live_admin_key_creates_live_keys_only(world: World) -> None:
    live_admin = world.acme.live_admin_key.plaintext
    created = await world.create_key(live_admin, role="readonly")
    assert created.secret.startswith("sk_live_")
    assert created.api_key.mode == common_pb2.MODE_LIVE
    test_ids = {key.key_id for key in (await world.list_keys(world.admin)).api_keys}
    live_ids = {key.key_id for key in (await world.list_keys(live_admin)).api_keys}
    assert created.api_key.key_id in live_ids
    assert created.api_key.key_id not in test_ids
    assert test_ids.isdisjoint(live_ids)


@pytest.mark.parametrize("role", ["operator", "auditor", "readonly", "publishable"])
async def test_only_admin_keys_manage_keys(world: World, role: str) -> None:
    if role == "publishable":
        caller = (await world.create_key(world.admin, kind=PUBLISHABLE, role=None)).secret
    else:
        caller = (await world.create_key(world.admin, role=role)).secret
    victim = (await world.create_key(world.admin)).api_key.key_id
    metadata = bearer(caller)
    calls = [
        world.auth.CreateApiKey(
            auth.CreateApiKeyRequest(kind=SECRET, role=ROLES["admin"], name="escalate"),
            metadata=metadata,
        ),
        world.auth.ListApiKeys(auth.ListApiKeysRequest(), metadata=metadata),
        world.auth.RotateApiKey(auth.RotateApiKeyRequest(key_id=victim), metadata=metadata),
        world.auth.RevokeApiKey(auth.RevokeApiKeyRequest(key_id=victim), metadata=metadata),
    ]
    for call in calls:
        assert await _code(call) == grpc.StatusCode.PERMISSION_DENIED
    assert await _authenticated(world, world.admin)
    still_there = {key.key_id for key in (await world.list_keys(world.admin)).api_keys}
    assert victim in still_there


async def test_admin_of_each_mode_is_allowed_every_key_rpc(world: World) -> None:
    for admin in (world.admin, world.acme.live_admin_key.plaintext):
        created = await world.create_key(admin)
        rotated = await world.auth.RotateApiKey(
            auth.RotateApiKeyRequest(key_id=created.api_key.key_id), metadata=bearer(admin)
        )
        await world.auth.RevokeApiKey(
            auth.RevokeApiKeyRequest(key_id=rotated.api_key.key_id), metadata=bearer(admin)
        )
        await world.list_keys(admin)


async def test_ids_of_other_organizations_and_modes_are_not_found(world: World) -> None:
    foreign = (await world.create_key(world.globex.test_admin_key.plaintext)).api_key.key_id
    other_mode = (await world.create_key(world.acme.live_admin_key.plaintext)).api_key.key_id
    random_id = "key_" + "Z" * 22
    details = set()
    for key_id in (foreign, other_mode, random_id):
        for call in (
            world.auth.RotateApiKey(
                auth.RotateApiKeyRequest(key_id=key_id), metadata=bearer(world.admin)
            ),
            world.auth.RevokeApiKey(
                auth.RevokeApiKeyRequest(key_id=key_id), metadata=bearer(world.admin)
            ),
        ):
            with pytest.raises(aio.AioRpcError) as failure:
                await call
            assert failure.value.code() == grpc.StatusCode.NOT_FOUND
            details.add(failure.value.details())
    assert details == {"api key not found"}  # indistinguishable from a random id
    # The foreign keys still work: nothing was revoked across the wall.
    globex_keys = await world.list_keys(world.globex.test_admin_key.plaintext)
    assert foreign in {key.key_id for key in globex_keys.api_keys}


async def test_a_key_never_reaches_another_organizations_data(world: World) -> None:
    acme_ids = {key.key_id for key in (await world.list_keys(world.admin)).api_keys}
    globex_ids = {
        key.key_id
        for key in (await world.list_keys(world.globex.test_admin_key.plaintext)).api_keys
    }
    assert acme_ids and globex_ids and acme_ids.isdisjoint(globex_ids)


async def test_rotation_without_grace_stops_the_old_key_at_once(world: World) -> None:
    old = await world.create_key(world.admin, role="admin", name="rotating")
    assert await _authenticated(world, old.secret)
    rotated = await world.auth.RotateApiKey(
        auth.RotateApiKeyRequest(key_id=old.api_key.key_id), metadata=bearer(world.admin)
    )
    assert rotated.secret != old.secret and rotated.secret.startswith("sk_test_")
    new = rotated.api_key
    assert (new.kind, new.role, new.mode, new.name) == (
        old.api_key.kind,
        old.api_key.role,
        old.api_key.mode,
        old.api_key.name,
    )
    assert new.rotated_from_key_id == old.api_key.key_id
    assert rotated.previous_api_key.replaced_by_key_id == new.key_id
    assert rotated.previous_api_key.HasField("revoked_at")
    assert not await _authenticated(world, old.secret)
    assert await _authenticated(world, rotated.secret)
    # A revoked key cannot be rotated again.
    assert (
        await _code(
            world.auth.RotateApiKey(
                auth.RotateApiKeyRequest(key_id=old.api_key.key_id), metadata=bearer(world.admin)
            )
        )
        == grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_rotation_with_grace_keeps_the_old_key_until_it_ends(world: World) -> None:
    old = await world.create_key(world.admin, role="admin", name="graceful")
    assert await _authenticated(world, old.secret)  # warm the verification cache
    rotated = await world.auth.RotateApiKey(
        auth.RotateApiKeyRequest(
            key_id=old.api_key.key_id, grace_period=duration_pb2.Duration(seconds=3600)
        ),
        metadata=bearer(world.admin),
    )
    previous = rotated.previous_api_key
    assert not previous.HasField("revoked_at")
    stops = previous.expires_at.ToDatetime(tzinfo=dt.UTC)
    assert dt.timedelta(minutes=59) < stops - world.clock() <= dt.timedelta(hours=1)
    assert await _authenticated(world, old.secret)
    assert await _authenticated(world, rotated.secret)
    world.clock.advance(dt.timedelta(minutes=59))
    assert await _authenticated(world, old.secret)
    world.clock.advance(dt.timedelta(minutes=2))
    assert not await _authenticated(world, old.secret)
    assert await _authenticated(world, rotated.secret)


async def test_grace_period_over_seven_days_is_invalid(world: World) -> None:
    key = await world.create_key(world.admin)
    with pytest.raises(aio.AioRpcError) as failure:
        await world.auth.RotateApiKey(
            auth.RotateApiKeyRequest(
                key_id=key.api_key.key_id,
                grace_period=duration_pb2.Duration(seconds=7 * 86400 + 1),
            ),
            metadata=bearer(world.admin),
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _authenticated(world, key.secret)


async def test_revocation_is_immediate_and_idempotent(world: World) -> None:
    key = await world.create_key(world.admin, role="admin")
    assert await _authenticated(world, key.secret)
    revoked = await world.auth.RevokeApiKey(
        auth.RevokeApiKeyRequest(key_id=key.api_key.key_id), metadata=bearer(world.admin)
    )
    assert revoked.api_key.HasField("revoked_at")
    assert not await _authenticated(world, key.secret)
    again = await world.auth.RevokeApiKey(
        auth.RevokeApiKeyRequest(key_id=key.api_key.key_id), metadata=bearer(world.admin)
    )
    assert again.api_key.revoked_at == revoked.api_key.revoked_at
    listed = await world.list_keys(world.admin)
    assert key.api_key.key_id not in {item.key_id for item in listed.api_keys}
    with_revoked = await world.list_keys(world.admin, include_revoked=True)
    assert key.api_key.key_id in {item.key_id for item in with_revoked.api_keys}


async def test_key_changes_and_attempt_counters_name_the_organization_and_mode(
    world: World,
) -> None:
    application = world.server.application
    organization_id = world.acme.organization.organization_id
    created = await world.create_key(world.admin, role="admin")
    key_id = created.api_key.key_id
    stored = await application.api_keys.get(organization_id, Mode.TEST, key_id)
    assert stored is not None

    # A wrong secret for a real key counts an attempt under the key's organization and mode.
    wrong = created.secret[:-6] + ("AAAAAA" if not created.secret.endswith("AAAAAA") else "BBBBBB")
    assert not await _authenticated(world, wrong)
    client = application.envelope.deployment_ip_digester().digest("127.0.0.1")
    counted = attempts_key(stored, client)
    assert counted.startswith(f"auth-attempts:{organization_id}:test:")
    assert await application.cache.counters.get(counted) == 1
    assert await application.cache.counters.get(f"auth-attempts:{stored.lookup_id}:{client}") == 0

    # The broadcast key change names them too (one channel for every organization).
    async with application.cache.pubsub.subscribe(CHANNEL) as subscription:
        await world.auth.RevokeApiKey(
            auth.RevokeApiKeyRequest(key_id=key_id), metadata=bearer(world.admin)
        )
        message = await asyncio.wait_for(anext(aiter(subscription)), 10)
    assert message == f"{organization_id}:test:{key_id}"
    assert not await _authenticated(world, created.secret)


async def test_expired_keys_stop_working(world: World) -> None:
    expires = timestamp_pb2.Timestamp()
    expires.FromDatetime(world.clock() + dt.timedelta(hours=1))
    key = await world.create_key(world.admin, role="admin", expires_at=expires)
    assert key.api_key.expires_at == expires
    assert await _authenticated(world, key.secret)
    world.clock.advance(dt.timedelta(hours=1, seconds=1))
    assert not await _authenticated(world, key.secret)


async def test_expiry_in_the_past_is_invalid(world: World) -> None:
    past = timestamp_pb2.Timestamp()
    past.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    assert (
        await _code(world.create_key(world.admin, expires_at=past))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_pagination_walks_every_key_once(world: World) -> None:
    created = {(await world.create_key(world.admin, name=f"k{i}")).api_key.key_id for i in range(5)}
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await world.list_keys(world.admin, page_size=2, page_token=token)
        assert len(page.api_keys) <= 2
        seen.extend(key.key_id for key in page.api_keys)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 6  # five new keys + the first admin key
    assert created <= set(seen)
    assert pages == 3
    assert (
        await _code(world.list_keys(world.admin, page_token="not-a-token"))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


@pytest.mark.parametrize("name", ["", "x" * 201])
async def test_bad_names_are_invalid_with_a_field_violation(world: World, name: str) -> None:
    with pytest.raises(aio.AioRpcError) as failure:
        await world.create_key(world.admin, name=name)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(failure.value)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [violation.field for violation in bad_request.field_violations] == ["name"]


async def test_names_with_control_or_bidi_characters_are_invalid(world: World) -> None:
    for name in UNSAFE_NAMES:
        with pytest.raises(aio.AioRpcError) as failure:
            await world.create_key(world.admin, name=name)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, repr(name)
        assert bad_request_fields(failure.value) == ["name"], repr(name)
    for name in SAFE_NAMES:
        created = await world.create_key(world.admin, name=name)
        assert created.api_key.name == name
    listed = await world.list_keys(world.admin, page_size=100)
    assert {key.name for key in listed.api_keys} >= set(SAFE_NAMES)
    assert not {key.name for key in listed.api_keys} & set(UNSAFE_NAMES)


async def test_role_must_match_kind(world: World) -> None:
    assert (
        await _code(world.create_key(world.admin, kind=SECRET, role=None))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await _code(world.create_key(world.admin, kind=PUBLISHABLE, role="admin"))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_publishable_keys_via_either_header_are_refused_on_secret_rpcs(world: World) -> None:
    publishable = (await world.create_key(world.admin, kind=PUBLISHABLE, role=None)).secret
    queues = queue_service_pb2_grpc.QueueServiceStub(world.channel)
    for metadata in (bearer(publishable), (("x-publishable-key", publishable),)):
        assert (
            await _code(world.auth.ListApiKeys(auth.ListApiKeysRequest(), metadata=metadata))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        # Consumer RPCs need a consumer token on top of the publishable key.
        assert (
            await _code(
                queues.GetPosition(
                    queue_service_pb2.GetPositionRequest(queue_id="q_abc"), metadata=metadata
                )
            )
            == grpc.StatusCode.UNAUTHENTICATED
        )
    # The alias is for publishable keys only.
    assert (
        await _code(
            world.auth.ListApiKeys(
                auth.ListApiKeysRequest(), metadata=(("x-publishable-key", world.admin),)
            )
        )
        == grpc.StatusCode.UNAUTHENTICATED
    )


async def test_malformed_keys_are_unauthenticated_without_bcrypt_or_errors(world: World) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("fanfare_grpc")
    logger.addHandler(handler)
    verifier = world.server.application.key_verifier
    real = world.admin
    candidates = [
        None,
        "",
        "Basic " + real,
        "Bearer",
        "Bearer ",
        "Bearer " + "xk" + real[2:],  # wrong kind prefix
        "Bearer " + real.replace("_test_", "_prod_"),  # wrong mode
        "Bearer " + real[:-1],  # too short
        "Bearer " + real + "A",  # too long
        "Bearer " + real[:-4] + "-_*!",  # non-base62
        "Bearer " + "sk_test_" + "A" * 10_000,  # 10 kB
        "Bearer " + "sk_test_" + "%C3%A9" * 8,  # unicode, percent-encoded as HTTP/2 would
    ]
    try:
        checks_before = verifier.bcrypt_checks
        for header in candidates:
            metadata = () if header is None else (("authorization", header),)
            with pytest.raises(aio.AioRpcError) as failure:
                await world.auth.ListApiKeys(auth.ListApiKeysRequest(), metadata=metadata)
            assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED, header
            # A header without "Bearer " is told the format; any key content gets
            # the uniform message.
            bearer_shaped = header is None or header.lower().startswith("bearer ")
            expected = INVALID_CREDENTIALS if bearer_shaped else BEARER_FORMAT
            assert failure.value.details() == expected
        assert verifier.bcrypt_checks == checks_before
    finally:
        logger.removeHandler(handler)
    logged = stream.getvalue()
    assert "Traceback" not in logged and "unexpected error" not in logged


async def test_bcrypt_runs_once_per_key_and_garbage_is_negatively_cached(world: World) -> None:
    verifier = world.server.application.key_verifier
    key = (await world.create_key(world.admin, role="admin")).secret
    before = verifier.bcrypt_checks
    for _ in range(20):
        assert await _authenticated(world, key)
    assert verifier.bcrypt_checks == before + 1

    # Right lookup id, wrong secret: one bcrypt, then refused from the negative cache.
    wrong = key[:-6] + ("AAAAAA" if not key.endswith("AAAAAA") else "BBBBBB")
    before = verifier.bcrypt_checks
    for _ in range(10):
        assert not await _authenticated(world, wrong)
    assert verifier.bcrypt_checks == before + 1

    # Well-formed keys with unknown lookup ids never reach bcrypt.
    before = verifier.bcrypt_checks
    for index in range(10):
        unknown = f"sk_test_{index:012d}" + "Q" * 32
        assert not await _authenticated(world, unknown)
    assert verifier.bcrypt_checks == before


async def test_concurrent_first_uses_share_one_bcrypt(world: World) -> None:
    verifier = world.server.application.key_verifier
    key = (await world.create_key(world.admin, role="admin")).secret
    before = verifier.bcrypt_checks
    results = await asyncio.gather(*(_authenticated(world, key) for _ in range(10)))
    assert all(results)
    assert verifier.bcrypt_checks == before + 1


async def test_last_used_at_is_batched(world: World) -> None:
    key = await world.create_key(world.admin, role="admin")
    assert not key.api_key.HasField("last_used_at")
    for _ in range(5):
        await world.list_keys(key.secret)
    listed = {item.key_id: item for item in (await world.list_keys(world.admin)).api_keys}
    # Not written per call: nothing reached the database yet.
    assert not listed[key.api_key.key_id].HasField("last_used_at")
    await world.server.application.key_usage.flush()
    listed = {item.key_id: item for item in (await world.list_keys(world.admin)).api_keys}
    used = listed[key.api_key.key_id].last_used_at.ToDatetime(tzinfo=dt.UTC)
    assert abs(used - world.clock()) < dt.timedelta(minutes=1)


async def test_no_secret_or_hash_reaches_logs_errors_or_lists(world: World) -> None:
    secrets_seen: list[str] = [world.admin]
    outputs: list[str] = []
    # Exactly what `FANFARE_LOG_LEVEL=debug` configures in the server.
    with server_log("debug") as stream:
        created = await world.create_key(world.admin, role="admin")
        secrets_seen.append(created.secret)
        rotated = await world.auth.RotateApiKey(
            auth.RotateApiKeyRequest(key_id=created.api_key.key_id), metadata=bearer(world.admin)
        )
        secrets_seen.append(rotated.secret)
        outputs.append(str(await world.list_keys(world.admin, include_revoked=True)))
        for presented in (created.secret, created.secret[:-1] + "Z", rotated.secret + "x"):
            try:
                await world.list_keys(presented)
            except aio.AioRpcError as error:
                outputs.append(f"{error.details()} {error.trailing_metadata()}")
        await world.server.application.key_usage.flush()
    logged = stream.getvalue()
    assert logged  # the calls were logged
    everything = logged + "\n".join(outputs)
    for secret in secrets_seen:
        assert secret not in everything
        assert secret[8:] not in everything  # not even without its prefix
    assert "$2b$" not in everything  # no bcrypt hash either


async def test_raw_unicode_credentials_are_unauthenticated(world: World) -> None:
    # grpcurl sends the header's UTF-8 bytes as they are (the Python client cannot).
    verifier = world.server.application.key_verifier
    before = verifier.bcrypt_checks
    for header in ("Bearer sk_test_" + "é" * 22, "Bearer " + "🔑" * 11, "Bearer sk_test_Ωmega"):
        code, _, stderr = await run_grpcurl(
            "-plaintext",
            "-H",
            f"authorization: {header}",
            "-d",
            "{}",
            world.server.address,
            "fanfare.auth.v1.AuthService/ListApiKeys",
        )
        assert code != 0
        assert "Unauthenticated" in stderr and INVALID_CREDENTIALS in stderr
    assert verifier.bcrypt_checks == before

"""Master key versions vs running servers: new keys follow a rotation, status counts.

The server runs in this process; ``master-key rotate`` and ``status`` run as the
operator runs them, in another process on the same backend.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os

from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from grpc import aio

from fanfare_grpc.app import Application
from fanfare_grpc.crypto.jwt_tokens import (
    AccessClaims,
    SigningKey,
    sign_access_token,
    verify_access_token,
)
from fanfare_grpc.crypto.master_keys import (
    DEV_KEY_FILE,
    MasterKey,
    MasterKeyRing,
    load_master_key_ring,
    new_key_material,
)
from fanfare_grpc.crypto.signing_keys import StoredSigningKey, seal_signing_key
from fanfare_grpc.settings import Settings
from fanfare_grpc.storage.data_keys import SqlDataKeyStore
from fanfare_grpc.storage.signing_keys import SqlSigningKeyStore
from tests.clock import MutableClock
from tests.conftest import BackendSettings, new_organization, start_migrated_server
from tests.grpc_helpers import bearer
from tests.log_capture import service_log_handler
from tests.processes import process_env, run_cli

ISSUER = "fanfare-test"


def _cli_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The CLI's environment for the same backend as ``settings``."""
    backend = {
        "FANFARE_DATABASE_URL": settings.database_url,
        "FANFARE_REDIS_URL": settings.redis_url,
        "FANFARE_REDIS_PREFIX": settings.redis_key_prefix,
    }
    return process_env(
        settings.data_dir,
        {**{key: value for key, value in backend.items() if value}, **(extra or {})},
    )


async def _status(env: dict[str, str]) -> dict[str, tuple[str, int, int, bool]]:
    code, stdout, stderr = await run_cli("master-key", "status", "--json", env=env)
    assert code == 0, stderr
    return {
        version["master_key_id"]: (
            version["state"],
            version["data_keys"],
            version["signing_keys"],
            version["safe_to_retire"],
        )
        for version in json.loads(stdout)["versions"]
    }


def _claims(organization_id: str, now: dt.datetime) -> AccessClaims:
    return AccessClaims(
        ISSUER,
        organization_id,
        "cons_a",
        "sess_a",
        "d" * 64,
        now,
        now + dt.timedelta(minutes=5),
        "jti_a",
    )


async def test_a_running_server_wraps_new_keys_under_the_master_key_rotated_in_meanwhile(
    backend: BackendSettings,
) -> None:
    settings, clock = backend.settings, MutableClock()
    env = _cli_env(settings)
    server = await start_migrated_server(settings, clock=clock, run_worker=False)
    try:
        application = server.application
        before = (await new_organization(server, "Before")).organization.organization_id
        old_signing_key = await application.signing_keys.signing_key(clock())
        old_master = load_master_key_ring(None, (), settings.data_dir).current.key_id

        code, stdout, stderr = await run_cli("master-key", "rotate", env=env)
        assert code == 0 and "re-wrapped 1 data keys" in stdout, stderr
        new_master = load_master_key_ring(None, (), settings.data_dir).current.key_id
        assert new_master != old_master

        # Made by the server that was running during the rotation: the new version.
        after = (await new_organization(server, "After")).organization.organization_id
        stored = await SqlDataKeyStore(application.database).get_data_key(after, 1)
        assert stored is not None and stored.master_key_id == new_master
        clock.advance(dt.timedelta(seconds=settings.signing_key_rotation_seconds + 1))
        new_signing_key = await application.signing_keys.signing_key(clock())
        assert new_signing_key.kid != old_signing_key.kid
        stored_signing_keys = await SqlSigningKeyStore(application.database).published_signing_keys(
            clock()
        )
        assert {key.kid: key.master_key_id for key in stored_signing_keys} == {
            old_signing_key.kid: new_master,  # re-sealed by the rotation
            new_signing_key.kid: new_master,
        }
        sealed = {
            organization: await application.envelope.encrypt(organization, "t", "c", "r", b"v")
            for organization in (before, after)
        }
        tokens = [
            sign_access_token(key, _claims(after, clock()))
            for key in (old_signing_key, new_signing_key)
        ]
        assert await _status(env) == {
            new_master: ("current", 2, 2, False),
            old_master: ("retired", 0, 0, True),
        }
    finally:
        await server.shutdown(grace_seconds=1.0)

    # The operator retires the old version: everything stays readable.
    key_file = settings.data_dir / DEV_KEY_FILE
    versions = key_file.read_text().split()
    assert len(versions) == 2
    key_file.write_text(versions[-1] + "\n")
    restarted = Application.build(settings, clock=clock)
    try:
        assert restarted.envelope.ring.retired == ()
        for organization, ciphertext in sealed.items():
            assert await restarted.envelope.decrypt(organization, "t", "c", "r", ciphertext) == (
                b"v"
            )
        published = await restarted.signing_keys.public_keys(clock())
        assert set(published) == {old_signing_key.kid, new_signing_key.kid}
        for token in tokens:
            verify_access_token(token, published, issuer=ISSUER, organization_id=after, now=clock())
    finally:
        await restarted.close()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _kids(response: auth.GetJwksResponse) -> set[str]:
    return {key["kid"] for key in json.loads(response.jwks_json)["keys"]}


def _stored(ring: MasterKeyRing, key: SigningKey, kid: str, now: dt.datetime) -> StoredSigningKey:
    sealed, master_key_id = seal_signing_key(ring, key)
    return StoredSigningKey(
        kid=kid,
        sealed_private_key=sealed,
        master_key_id=master_key_id,
        created_at=now,
        sign_until=now + dt.timedelta(days=14),
        publish_until=now + dt.timedelta(days=15),
    )


async def test_a_signing_key_this_replica_cannot_unseal_breaks_only_its_own_tokens(
    backend: BackendSettings,
) -> None:
    settings, clock = backend.settings, MutableClock()
    server = await start_migrated_server(settings, clock=clock, run_worker=False)
    replica = None
    try:
        application = server.application
        organization = await new_organization(server)
        organization_id = organization.organization.organization_id
        good = await application.signing_keys.signing_key(clock())
        token = sign_access_token(good, _claims(organization_id, clock()))

        # Newer keys: one sealed under a master key this deployment lacks, one damaged
        # (sealed for another kid).
        later = clock() + dt.timedelta(seconds=1)
        stranger = MasterKeyRing(MasterKey.from_material(new_key_material()))
        store = SqlSigningKeyStore(application.database)
        foreign = SigningKey.generate(later)
        await store.add_signing_key(_stored(stranger, foreign, foreign.kid, later))
        damaged = _stored(application.envelope.ring, SigningKey.generate(later), "ed_dmg", later)
        await store.add_signing_key(damaged)

        clock.advance(dt.timedelta(seconds=2))
        admin = bearer(organization.test_admin_key.plaintext)
        with service_log_handler(_Records(), logging.WARNING) as logged:
            replica = await start_migrated_server(settings, clock=clock, run_worker=False)
            signing_keys = replica.application.signing_keys
            async with aio.insecure_channel(replica.address) as channel:
                stub = auth_service_pb2_grpc.AuthServiceStub(channel)
                for _ in range(2):
                    response = await stub.GetJwks(auth.GetJwksRequest(), metadata=admin)
                    assert _kids(response) == {good.kid}
                # Tokens of the good key still verify here, and it still signs (the
                # newest key this replica can open).
                published = await signing_keys.public_keys_for(good.kid, clock())
                verify_access_token(
                    token, published, issuer=ISSUER, organization_id=organization_id, now=clock()
                )
                assert (await signing_keys.signing_key(clock())).kid == good.kid

                # Once it stops signing, the replica makes a fresh key rather than
                # failing on the newer ones it cannot open.
                clock.advance(dt.timedelta(seconds=settings.signing_key_rotation_seconds))
                fresh = await signing_keys.signing_key(clock())
                assert fresh.kid not in {foreign.kid, damaged.kid, good.kid}
                response = await stub.GetJwks(auth.GetJwksRequest(), metadata=admin)
                assert _kids(response) == {good.kid, fresh.kid}
        fresh_token = sign_access_token(fresh, _claims(organization_id, clock()))
        # ... and the first server, which never saw that kid, verifies its tokens too.
        verify_access_token(
            fresh_token,
            await application.signing_keys.public_keys_for(fresh.kid, clock()),
            issuer=ISSUER,
            organization_id=organization_id,
            now=clock(),
        )
        unsealable = [r for r in logged.records if "cannot be unsealed" in r.getMessage()]
        # Once per key, naming it, and nothing secret.
        assert sorted(r.kid for r in unsealable) == sorted([foreign.kid, damaged.kid])
        secret = base64.b64encode(application.envelope.ring.current.material).decode()
        assert all(secret not in str(r.__dict__) for r in unsealable)
    finally:
        if replica is not None:
            await replica.shutdown(grace_seconds=1.0)
        await server.shutdown(grace_seconds=1.0)


async def test_status_counts_keys_per_master_key_version_before_and_after_a_rewrap(
    backend: BackendSettings,
) -> None:
    old_key, new_key = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    old_id = MasterKey.from_base64(old_key, "old").key_id
    new_id = MasterKey.from_base64(new_key, "new").key_id
    before = _cli_env(backend.settings, {"FANFARE_MASTER_KEY": old_key})
    assert (await run_cli("migrate", env=before))[0] == 0
    for name in ("One", "Two"):
        code, _, stderr = await run_cli("orgs", "create", "--name", name, env=before)
        assert code == 0, stderr
    assert await _status(before) == {old_id: ("current", 2, 0, False)}

    # The new version configured, the old one kept, nothing re-wrapped yet.
    during = _cli_env(
        backend.settings, {"FANFARE_MASTER_KEY": new_key, "FANFARE_MASTER_KEYS_OLD": old_key}
    )
    assert await _status(during) == {
        new_id: ("current", 0, 0, False),
        old_id: ("retired", 2, 0, False),
    }
    code, stdout, stderr = await run_cli("master-key", "status", env=during)
    assert code == 0, stderr
    assert stdout.splitlines() == [
        "master key           state    data keys  signing keys  retire",
        f"{new_id}  current          0             0  no: current version",
        f"{old_id}  retired          2             0  not yet: run `fanfare-grpc master-key rotate`",
    ]
    # Dropping the old version too early: the status says what would be lost.
    too_early = _cli_env(backend.settings, {"FANFARE_MASTER_KEY": new_key})
    assert await _status(too_early) == {
        new_id: ("current", 0, 0, False),
        old_id: ("missing", 2, 0, False),
    }
    # ... and a rotation then re-wraps what it can and names what it cannot.
    code, stdout, stderr = await run_cli("master-key", "rotate", env=too_early)
    assert code == 1 and "re-wrapped 0 data keys" in stdout
    assert f"fanfare-grpc: 2 keys are still wrapped under {old_id}: configure the missing" in (
        stderr
    )
    assert "Traceback" not in stderr and old_key not in stderr and new_key not in stderr

    code, _, stderr = await run_cli("master-key", "rotate", env=during)
    assert code == 0, stderr
    assert await _status(during) == {
        new_id: ("current", 2, 0, False),
        old_id: ("retired", 0, 0, True),
    }
    code, stdout, _ = await run_cli("master-key", "status", env=during)
    assert stdout.splitlines()[-1] == f"{old_id}  retired          0             0  safe"

"""AES-GCM envelope encryption, master keys and keyed digests."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from fanfare_grpc.crypto import aead
from fanfare_grpc.crypto.digests import device_digester, ip_digester
from fanfare_grpc.crypto.envelope import Envelope, WrappedDataKey
from fanfare_grpc.crypto.master_keys import (
    DEV_KEY_FILE,
    MasterKey,
    MasterKeyError,
    MasterKeyRing,
    MasterKeySource,
    add_dev_master_key,
    load_master_key_ring,
    new_key_material,
)
from fanfare_grpc.crypto.rotation import master_key_usage, rewrap_data_keys


class DictDataKeys:
    """In-memory data key store for envelope tests."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, int], WrappedDataKey] = {}

    async def get_data_key(self, organization_id: str, version: int) -> WrappedDataKey | None:
        return self.keys.get((organization_id, version))

    def add(self, key: WrappedDataKey) -> None:
        self.keys[(key.organization_id, key.version)] = key

    async def wrapped_keys_not_under(self, master_key_id: str) -> list[WrappedDataKey]:
        return [key for key in self.keys.values() if key.master_key_id != master_key_id]

    async def replace(self, previous: WrappedDataKey, rewrapped: WrappedDataKey) -> bool:
        if self.keys.get((previous.organization_id, previous.version)) != previous:
            return False
        self.add(rewrapped)
        return True


def _ring() -> MasterKeyRing:
    return MasterKeyRing(MasterKey.from_material(new_key_material()))


def test_seal_round_trip_and_tamper_detection() -> None:
    key = new_key_material()
    sealed = aead.seal(key, 3, b"hello", b"context")
    assert aead.key_version_of(sealed) == 3
    assert aead.open_sealed(key, sealed, b"context") == b"hello"
    assert b"hello" not in sealed
    for position in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        with pytest.raises(aead.DecryptionError):
            aead.open_sealed(key, bytes(tampered), b"context")
    with pytest.raises(aead.DecryptionError):
        aead.open_sealed(key, sealed, b"other context")
    with pytest.raises(aead.DecryptionError):
        aead.open_sealed(new_key_material(), sealed, b"context")
    with pytest.raises(aead.DecryptionError):
        aead.open_sealed(key, b"short", b"context")


async def test_ciphertext_moved_to_another_organization_or_row_fails() -> None:
    store = DictDataKeys()
    envelope = Envelope(_ring(), store)
    for organization in ("org_a", "org_b"):
        store.add(envelope.new_data_key(organization))
    sealed = await envelope.encrypt("org_a", "consumers", "email", "cons_1", b"ada@example.com")
    assert await envelope.decrypt("org_a", "consumers", "email", "cons_1", sealed) == (
        b"ada@example.com"
    )
    for place in (
        ("org_b", "consumers", "email", "cons_1"),
        ("org_a", "consumers", "email", "cons_2"),
        ("org_a", "consumers", "name", "cons_1"),
        ("org_a", "audit_events", "email", "cons_1"),
    ):
        with pytest.raises(aead.DecryptionError):
            await envelope.decrypt(*place, sealed)


async def test_wrapped_data_key_is_bound_to_its_organization() -> None:
    store = DictDataKeys()
    envelope = Envelope(_ring(), store)
    wrapped = envelope.new_data_key("org_a")
    moved = WrappedDataKey("org_b", wrapped.version, wrapped.wrapped, wrapped.master_key_id)
    with pytest.raises(aead.DecryptionError):
        envelope.unwrap(moved)


async def test_master_key_rotation_keeps_old_data_readable() -> None:
    store = DictDataKeys()
    old_ring = _ring()
    envelope = Envelope(old_ring, store)
    store.add(envelope.new_data_key("org_a"))
    sealed = await envelope.encrypt("org_a", "t", "c", "r", b"secret data")

    new_master = MasterKey.from_material(new_key_material())
    rotated_ring = MasterKeyRing(new_master, (old_ring.current,))
    assert await rewrap_data_keys(rotated_ring, store) == 1
    assert await rewrap_data_keys(rotated_ring, store) == 0  # idempotent
    assert store.keys[("org_a", 1)].master_key_id == new_master.key_id

    # A process that only knows the new master key still reads old ciphertexts.
    fresh = Envelope(MasterKeyRing(new_master), store)
    assert await fresh.decrypt("org_a", "t", "c", "r", sealed) == b"secret data"


def test_master_key_from_environment_is_validated() -> None:
    good = base64.b64encode(new_key_material()).decode()
    ring = load_master_key_ring(good, (), Path("/nonexistent"))
    assert ring.current.key_id.startswith("mk_")
    assert good not in repr(ring)
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(MasterKeyError) as error:
            load_master_key_ring(bad, (), Path("/nonexistent"))
        assert bad not in str(error.value)


def test_dev_master_keys_are_generated_private_and_rotatable(tmp_path: Path) -> None:
    first = load_master_key_ring(None, (), tmp_path)
    path = tmp_path / DEV_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key_ring(None, (), tmp_path) == first  # stable across restarts
    added = add_dev_master_key(tmp_path)
    ring = load_master_key_ring(None, (), tmp_path)
    assert ring.current == added
    assert ring.retired == (first.current,)


def test_keyed_digests_are_stable_keyed_and_separated_by_purpose() -> None:
    root = new_key_material()
    assert ip_digester(root).digest("203.0.113.7") == ip_digester(root).digest("203.0.113.7")
    assert ip_digester(root).digest("203.0.113.7") != ip_digester(new_key_material()).digest(
        "203.0.113.7"
    )
    assert ip_digester(root).digest("x") != device_digester(root).digest("x")
    assert "203.0.113.7" not in ip_digester(root).digest("203.0.113.7")


async def test_envelope_wraps_under_a_master_key_added_to_the_dev_file_meanwhile(
    tmp_path: Path,
) -> None:
    store = DictDataKeys()
    # What a server holds: the keys as configured, followed as they change.
    envelope = Envelope(MasterKeySource.configured(None, (), tmp_path), store)
    store.add(envelope.new_data_key("org_before"))
    old = load_master_key_ring(None, (), tmp_path).current

    added = add_dev_master_key(tmp_path)  # `master-key rotate` in another process
    wrapped = envelope.new_data_key("org_after")
    assert wrapped.master_key_id == added.key_id != old.key_id
    store.add(wrapped)
    assert await rewrap_data_keys(load_master_key_ring(None, (), tmp_path), store) == 1

    # Retiring the old version leaves every data key readable.
    retired = Envelope(MasterKeyRing(added), store)
    for organization in ("org_before", "org_after"):
        assert await retired.device_digester(organization)


def test_master_keys_from_the_environment_are_read_once() -> None:
    calls: list[int] = []
    ring = MasterKeyRing(MasterKey.from_material(new_key_material()))

    def load() -> MasterKeyRing:
        calls.append(1)
        return ring

    source = MasterKeySource(load, lambda: None)
    assert source.ring() is ring and source.ring() is ring
    assert len(calls) == 1  # the version did not change: no reload


def test_master_key_usage_says_which_versions_can_be_retired() -> None:
    current, emptied, busy = (MasterKey.from_material(new_key_material()) for _ in range(3))
    ring = MasterKeyRing(current, (emptied, busy))
    usage = master_key_usage(
        ring,
        {current.key_id: 3, busy.key_id: 1, "mk_gone": 2},
        {current.key_id: 2, emptied.key_id: 0},
    )
    assert [(u.key_id, u.state, u.data_keys, u.signing_keys, u.safe_to_retire) for u in usage] == [
        (current.key_id, "current", 3, 2, False),
        (emptied.key_id, "retired", 0, 0, True),
        (busy.key_id, "retired", 1, 0, False),
        ("mk_gone", "missing", 2, 0, False),
    ]

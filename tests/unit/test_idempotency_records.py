"""A stored idempotent response opens only for its own organization, mode, key and
request (issue 10, item 9)."""

from __future__ import annotations

import dataclasses

import pytest

from fanfare_grpc.crypto import aead
from fanfare_grpc.crypto.envelope import Envelope
from fanfare_grpc.crypto.master_keys import MasterKey, MasterKeyRing, new_key_material
from fanfare_grpc.interceptors.idempotency import RecordPlace, open_response, seal_response
from tests.unit.test_crypto import DictDataKeys

PLACE = RecordPlace("org_a", "test", "digest-of-key", "fingerprint-of-request")


async def test_a_stored_response_opens_only_where_it_was_sealed() -> None:
    store = DictDataKeys()
    envelope = Envelope(MasterKeyRing(MasterKey.from_material(new_key_material())), store)
    for organization in ("org_a", "org_b"):
        store.add(envelope.new_data_key(organization))
    sealed = await seal_response(envelope, PLACE, b"response")
    assert await open_response(envelope, PLACE, sealed) == b"response"
    for elsewhere in (
        dataclasses.replace(PLACE, mode="live"),
        dataclasses.replace(PLACE, fingerprint="fingerprint-of-another-request"),
        dataclasses.replace(PLACE, key_digest="digest-of-another-key"),
        dataclasses.replace(PLACE, organization_id="org_b"),
    ):
        with pytest.raises(aead.DecryptionError):
            await open_response(envelope, elsewhere, sealed)

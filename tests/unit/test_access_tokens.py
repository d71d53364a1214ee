"""Access-token attacks at the token layer: every forgery is refused."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from fanfare_grpc.crypto.jwt_tokens import (
    ACCESS_TOKEN_TYPE,
    LEEWAY,
    AccessClaims,
    InvalidToken,
    SigningKey,
    jwks,
    sign_access_token,
    verify_access_token,
)

ISSUER = "https://fanfare.test"
ORG = "org_acme"
NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate(NOW)


def _claims(**changes: Any) -> AccessClaims:
    base = {
        "issuer": ISSUER,
        "organization_id": ORG,
        "consumer_id": "cons_1",
        "session_id": "sess_1",
        "device_hash": "d" * 64,
        "issued_at": NOW,
        "expires_at": NOW + dt.timedelta(minutes=15),
        "token_id": "jti_1",
    }
    base.update(changes)
    return AccessClaims(**base)


def _verify(token: str, key: SigningKey, **overrides: Any) -> AccessClaims:
    options = {"issuer": ISSUER, "organization_id": ORG, "now": NOW}
    options.update(overrides)
    return verify_access_token(token, {key.kid: key.public_key}, **options)


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    pad = lambda part: part + "=" * (-len(part) % 4)
    return (
        json.loads(base64.urlsafe_b64decode(pad(header))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
        signature,
    )


def _refused(token: str, key: SigningKey, **overrides: Any) -> str:
    with pytest.raises(InvalidToken) as refused:
        _verify(token, key, **overrides)
    return refused.value.reason


def test_a_valid_token_verifies(key: SigningKey) -> None:
    token = sign_access_token(key, _claims())
    header, payload, _ = _parts(token)
    assert header == {"alg": "EdDSA", "kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
    assert set(payload) == {"iss", "aud", "sub", "sid", "dfp", "exp", "nbf", "iat", "jti"}
    assert _verify(token, key) == _claims()


def test_alg_none_is_refused(key: SigningKey) -> None:
    _, payload, _ = _parts(sign_access_token(key, _claims()))
    token = f"{_b64({'alg': 'none', 'typ': ACCESS_TOKEN_TYPE, 'kid': key.kid})}.{_b64(payload)}."
    assert _refused(token, key) == "algorithm"


def test_hs256_signed_with_the_public_key_is_refused(key: SigningKey) -> None:
    _, payload, _ = _parts(sign_access_token(key, _claims()))
    public_pem = key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64({"alg": "HS256", "typ": ACCESS_TOKEN_TYPE, "kid": key.kid})
    signing_input = f"{header}.{_b64(payload)}".encode()
    signature = _b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
    assert _refused(f"{signing_input.decode()}.{signature}", key) == "algorithm"


def test_one_changed_payload_byte_is_refused(key: SigningKey) -> None:
    header, payload, signature = sign_access_token(key, _claims()).split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[raw.index(b"cons_1") + 5] = ord("2")  # sub: cons_1 -> cons_2
    _refused(f"{header}.{_b64(bytes(raw))}.{signature}", key)


def test_stripped_signature_is_refused(key: SigningKey) -> None:
    header, payload, _ = sign_access_token(key, _claims()).split(".")
    _refused(f"{header}.{payload}.", key)
    _refused(f"{header}.{payload}", key)


@pytest.mark.parametrize(
    "kid", ["ed_unknownkey123", "../../etc/passwd", "x' OR '1'='1", "short", "k" * 65, ""]
)
def test_unknown_or_malformed_kid_is_refused(key: SigningKey, kid: str) -> None:
    token = jwt.encode(
        _parts(sign_access_token(key, _claims()))[1],
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": kid, "typ": ACCESS_TOKEN_TYPE},
    )
    assert _refused(token, key) in {"kid", "unknown kid"}


def test_a_key_not_in_the_ring_is_refused(key: SigningKey) -> None:
    stranger = SigningKey(key.kid, SigningKey.generate(NOW).private_key, NOW)
    _refused(sign_access_token(stranger, _claims()), key)


def test_expiry_beyond_the_leeway_is_refused(key: SigningKey) -> None:
    token = sign_access_token(
        key,
        _claims(issued_at=NOW - dt.timedelta(hours=1), expires_at=NOW - dt.timedelta(minutes=1)),
    )
    assert _refused(token, key) == "expired"
    within = sign_access_token(
        key, _claims(issued_at=NOW - dt.timedelta(hours=1), expires_at=NOW - LEEWAY / 2)
    )
    _verify(within, key)


def test_not_yet_valid_tokens_are_refused(key: SigningKey) -> None:
    future = NOW + dt.timedelta(hours=1)
    token = sign_access_token(key, _claims(issued_at=future, expires_at=future + LEEWAY * 10))
    assert _refused(token, key) in {"not yet valid", "issued in the future"}


@pytest.mark.parametrize("missing", ["exp", "aud", "sub", "sid", "dfp", "jti", "iat", "nbf"])
def test_missing_claims_are_refused(key: SigningKey, missing: str) -> None:
    payload = _parts(sign_access_token(key, _claims()))[1]
    del payload[missing]
    token = jwt.encode(
        payload,
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYPE},
    )
    _refused(token, key)


def test_another_organizations_token_is_refused(key: SigningKey) -> None:
    token = sign_access_token(key, _claims(organization_id="org_globex"))
    _refused(token, key)


def test_other_token_types_are_refused(key: SigningKey) -> None:
    payload = _parts(sign_access_token(key, _claims()))[1]
    for typ in ("handoff+jwt", "JWT", None):
        headers: dict[str, Any] = {"kid": key.kid}
        if typ:
            headers["typ"] = typ
        token = jwt.encode(payload, key.private_key, algorithm="EdDSA", headers=headers)
        assert _refused(token, key) == "type"


def test_garbage_is_refused(key: SigningKey) -> None:
    for token in ("", "a.b.c", "not a token", "rt_" + "A" * 40, "x" * 5000):
        _refused(token, key)


def test_jwks_publishes_public_keys_only(key: SigningKey) -> None:
    document = jwks([key])
    (entry,) = document["keys"]
    assert entry["kid"] == key.kid and entry["kty"] == "OKP" and entry["crv"] == "Ed25519"
    assert "d" not in entry  # no private part
    # The JWK is enough to verify offline.
    public = jwt.PyJWK(entry).key
    assert (
        verify_access_token(
            sign_access_token(key, _claims()),
            {key.kid: public},
            issuer=ISSUER,
            organization_id=ORG,
            now=NOW,
        )
        == _claims()
    )

"""Consumer access tokens: EdDSA (Ed25519) JWTs with a ``kid``, verified strictly.

Verification allow-lists ``EdDSA`` only (never the token's own ``alg``), looks the
key up by a ``kid`` of a fixed shape, and requires ``typ``, ``iss``, ``aud``,
``sub``, ``sid``, ``dfp``, ``exp``, ``nbf``, ``iat`` and ``jti``. Server state (is the
session still live, does ``dfp`` match the device) is checked by the caller.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "EdDSA"
ACCESS_TOKEN_TYPE = "at+jwt"
LEEWAY = dt.timedelta(seconds=30)
_KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")
_REQUIRED_CLAIMS = ("iss", "aud", "sub", "sid", "dfp", "exp", "nbf", "iat", "jti")


class InvalidToken(Exception):
    """The token must be refused; ``reason`` is for logs and tests, never for callers."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """One Ed25519 signing key version."""

    kid: str
    private_key: Ed25519PrivateKey = dataclasses.field(repr=False)
    created_at: dt.datetime

    @classmethod
    def generate(cls, now: dt.datetime) -> SigningKey:
        """A new key with a random ``kid``."""
        return cls("ed_" + secrets.token_urlsafe(12), Ed25519PrivateKey.generate(), now)

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The verifying half."""
        return self.private_key.public_key()

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (RFC 8037)."""
        raw = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(raw),
            "kid": self.kid,
            "alg": ALGORITHM,
            "use": "sig",
        }


@dataclasses.dataclass(frozen=True)
class AccessClaims:
    """What an access token asserts."""

    issuer: str
    organization_id: str
    consumer_id: str
    session_id: str
    device_hash: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    token_id: str


def sign_access_token(key: SigningKey, claims: AccessClaims) -> str:
    """A compact JWS of ``claims`` signed with ``key``."""
    payload = {
        "iss": claims.issuer,
        "aud": claims.organization_id,
        "sub": claims.consumer_id,
        "sid": claims.session_id,
        "dfp": claims.device_hash,
        "iat": int(claims.issued_at.timestamp()),
        "nbf": int(claims.issued_at.timestamp()),
        "exp": int(claims.expires_at.timestamp()),
        "jti": claims.token_id,
    }
    return jwt.encode(
        payload,
        key.private_key,
        algorithm=ALGORITHM,
        headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYPE},
    )


def decode_verified(
    token: str,
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    token_type: str,
    issuer: str,
    audience: str,
    required: Iterable[str],
) -> dict[str, Any]:
    """The payload of a JWS of ``token_type`` signed by one of ``public_keys``.

    ``EdDSA`` only (never the token's own ``alg``), ``typ`` exact, ``kid`` of a fixed
    shape looked up in ``public_keys``, ``iss``/``aud`` exact, ``required`` claims
    present. Times are NOT checked: callers compare them with their own clock.

    Raises:
        InvalidToken: Anything wrong.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise InvalidToken("malformed") from None
    if header.get("alg") != ALGORITHM:
        raise InvalidToken("algorithm")
    if header.get("typ") != token_type:
        raise InvalidToken("type")
    kid = header.get("kid")
    if not isinstance(kid, str) or not _KID_PATTERN.fullmatch(kid):
        raise InvalidToken("kid")
    public_key = public_keys.get(kid)
    if public_key is None:
        raise InvalidToken("unknown kid")
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            options={
                "require": list(required),
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidTokenError as error:
        raise InvalidToken(type(error).__name__) from None
    return payload


def time_claim(payload: Mapping[str, Any], name: str) -> dt.datetime:
    """A NumericDate claim as an aware datetime.

    Raises:
        InvalidToken: Not a number, or out of range.
    """
    try:
        return dt.datetime.fromtimestamp(int(payload[name]), dt.UTC)
    except (TypeError, ValueError, OverflowError, KeyError):
        raise InvalidToken("time claims") from None


def verify_access_token(
    token: str,
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    issuer: str,
    organization_id: str,
    now: dt.datetime,
) -> AccessClaims:
    """The claims of a valid access token for ``organization_id``.

    Raises:
        InvalidToken: Anything wrong: shape, header, key, signature, claims, times.
    """
    payload = decode_verified(
        token,
        public_keys,
        token_type=ACCESS_TOKEN_TYPE,
        issuer=issuer,
        audience=organization_id,
        required=_REQUIRED_CLAIMS,
    )
    issued_at = time_claim(payload, "iat")
    not_before = time_claim(payload, "nbf")
    expires_at = time_claim(payload, "exp")
    if expires_at <= now - LEEWAY:
        raise InvalidToken("expired")
    if not_before > now + LEEWAY or issued_at > now + LEEWAY:
        raise InvalidToken("not yet valid")
    if any(not isinstance(payload[name], str) for name in ("sub", "sid", "dfp", "jti")):
        raise InvalidToken("claim types")
    return AccessClaims(
        issuer=payload["iss"],
        organization_id=organization_id,
        consumer_id=payload["sub"],
        session_id=payload["sid"],
        device_hash=payload["dfp"],
        issued_at=issued_at,
        expires_at=expires_at,
        token_id=payload["jti"],
    )


def jwks(keys: Iterable[SigningKey]) -> dict[str, list[dict[str, str]]]:
    """A JWKS document of the public halves of ``keys``."""
    return {"keys": [key.public_jwk() for key in keys]}

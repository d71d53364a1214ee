"""Handoff tokens: the admission grant, an EdDSA JWT verifiable offline via JWKS.

Header: ``alg`` EdDSA, ``typ`` ``handoff+jwt``, ``kid``. Claims: ``iss``, ``aud``
(organization id), ``sub`` (consumer id), ``sid`` (session id), ``qid`` (queue id),
``mode`` (``test``/``live``), ``jti`` (admission id: ``ht_`` + 128 CSPRNG bits, so a
token says nothing about how many were admitted before it),
``iat``/``nbf`` (admission time), ``exp`` (admission + the queue's ``handoff_ttl``).
A signature check proves the grant is genuine; only ``ValidateHandoffToken``
redeems it (once). The ``typ`` keeps access and handoff tokens from being swapped.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
from collections.abc import Mapping

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fanfare_grpc.crypto.jwt_tokens import (
    ALGORITHM,
    InvalidToken,
    SigningKey,
    decode_verified,
    time_claim,
)

HANDOFF_TOKEN_TYPE = "handoff+jwt"
HANDOFF_TOKEN_ID_PREFIX = "ht_"
# 128 bits: ids of different admissions never collide and cannot be guessed or ordered.
_TOKEN_ID_BYTES = 16
_KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")
_REQUIRED = ("iss", "aud", "sub", "sid", "qid", "mode", "jti", "iat", "nbf", "exp")


@dataclasses.dataclass(frozen=True)
class HandoffClaims:
    """What a handoff token grants."""

    issuer: str
    organization_id: str
    mode: str
    queue_id: str
    consumer_id: str
    session_id: str
    token_id: str
    issued_at: dt.datetime
    expires_at: dt.datetime


def new_handoff_token_id() -> str:
    """A fresh ``jti`` for one admission: random, never a counter (a sequential id
    would tell every token holder how many were admitted before them)."""
    return HANDOFF_TOKEN_ID_PREFIX + secrets.token_urlsafe(_TOKEN_ID_BYTES)


def sign_handoff_token(key: SigningKey, claims: HandoffClaims) -> str:
    """The compact JWS of ``claims``."""
    payload = {
        "iss": claims.issuer,
        "aud": claims.organization_id,
        "sub": claims.consumer_id,
        "sid": claims.session_id,
        "qid": claims.queue_id,
        "mode": claims.mode,
        "jti": claims.token_id,
        "iat": int(claims.issued_at.timestamp()),
        "nbf": int(claims.issued_at.timestamp()),
        "exp": int(claims.expires_at.timestamp()),
    }
    return jwt.encode(
        payload,
        key.private_key,
        algorithm=ALGORITHM,
        headers={"kid": key.kid, "typ": HANDOFF_TOKEN_TYPE},
    )


def handoff_token_kid(token: str) -> str | None:
    """The token's ``kid`` (unverified), None if unreadable or malformed."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        return None
    kid = header.get("kid")
    return kid if isinstance(kid, str) and _KID_PATTERN.fullmatch(kid) else None


def verify_handoff_token(
    token: str,
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    issuer: str,
    organization_id: str,
) -> HandoffClaims:
    """Claims of a genuine handoff token for ``organization_id`` (expiry NOT checked:
    the caller reports EXPIRED distinctly).

    Raises:
        InvalidToken: Malformed, wrong type/algorithm/key/signature/issuer/audience.
    """
    payload = decode_verified(
        token,
        public_keys,
        token_type=HANDOFF_TOKEN_TYPE,
        issuer=issuer,
        audience=organization_id,
        required=_REQUIRED,
    )
    if any(not isinstance(payload[name], str) for name in ("sub", "sid", "qid", "mode", "jti")):
        raise InvalidToken("claim types")
    return HandoffClaims(
        issuer=payload["iss"],
        organization_id=organization_id,
        mode=payload["mode"],
        queue_id=payload["qid"],
        consumer_id=payload["sub"],
        session_id=payload["sid"],
        token_id=payload["jti"],
        issued_at=time_claim(payload, "iat"),
        expires_at=time_claim(payload, "exp"),
    )

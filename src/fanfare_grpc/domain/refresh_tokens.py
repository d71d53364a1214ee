"""Refresh tokens: opaque ``rt_<lookup id><secret>``, single use, stored hashed.

16 base62 characters of non-secret lookup id, then 43 of secret (256 bits), from
the OS CSPRNG. Only a bcrypt hash of the whole token is stored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
import string

import bcrypt

from fanfare_grpc.domain.access import Mode

PREFIX = "rt_"
LOOKUP_ID_LENGTH = 16
SECRET_LENGTH = 43
TOKEN_LENGTH = len(PREFIX) + LOOKUP_ID_LENGTH + SECRET_LENGTH
_TOKEN_PATTERN = re.compile(
    rf"rt_([A-Za-z0-9]{{{LOOKUP_ID_LENGTH}}})[A-Za-z0-9]{{{SECRET_LENGTH}}}"
)
_BASE62 = string.ascii_letters + string.digits
# bcrypt's work factor slows guessing of low-entropy secrets. A 256-bit random secret
# cannot be guessed whatever the cost, so the hash only has to make a database leak
# useless; the minimum cost (4, ~1 ms) keeps RefreshSession fast.
BCRYPT_COST = 4
DEFAULT_LIFETIME = dt.timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class PresentedRefreshToken:
    """A presented token with the right shape (not yet verified)."""

    lookup_id: str
    plaintext: str = dataclasses.field(repr=False)


def parse_refresh_token(presented: str) -> PresentedRefreshToken | None:
    """Shape check only: None for anything that cannot be one of our tokens."""
    if len(presented) != TOKEN_LENGTH or not presented.isascii():
        return None
    match = _TOKEN_PATTERN.fullmatch(presented)
    return None if match is None else PresentedRefreshToken(match.group(1), presented)


def generate_refresh_token() -> PresentedRefreshToken:
    """A new token."""
    lookup_id = "".join(secrets.choice(_BASE62) for _ in range(LOOKUP_ID_LENGTH))
    secret = "".join(secrets.choice(_BASE62) for _ in range(SECRET_LENGTH))
    return PresentedRefreshToken(lookup_id, PREFIX + lookup_id + secret)


def hash_refresh_token(plaintext: str) -> str:
    """bcrypt hash (call off the event loop)."""
    return bcrypt.hashpw(plaintext.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


def refresh_token_matches(plaintext: str, hashed: str) -> bool:
    """Constant-time bcrypt check (call off the event loop)."""
    return bcrypt.checkpw(plaintext.encode(), hashed.encode())


@dataclasses.dataclass(frozen=True)
class RefreshTokenRecord:
    """A refresh token as stored (``secret_hash`` never leaves the service)."""

    lookup_id: str
    organization_id: str
    mode: Mode
    session_id: str
    secret_hash: str = dataclasses.field(repr=False)
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None = None

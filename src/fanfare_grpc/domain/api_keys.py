"""API keys: format, generation, hashing and lifecycle rules.

A key reads ``<kind>_<mode>_<lookup id><secret>``: 12 base62 characters of
non-secret lookup id (stored in clear, indexed) followed by 32 base62 characters
of secret (~190 bits) — 44 CSPRNG characters after the prefix. Only a bcrypt hash
of the whole key is stored. The whole key is 52 ASCII bytes, under bcrypt's
72-byte limit, so nothing is silently truncated.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
import string

import bcrypt

from fanfare_grpc.domain.access import KeyKind, Mode, Role

_BASE62 = string.ascii_letters + string.digits
LOOKUP_ID_LENGTH = 12
SECRET_LENGTH = 32
KEY_LENGTH = len("sk_test_") + LOOKUP_ID_LENGTH + SECRET_LENGTH
_KEY_PATTERN = re.compile(
    rf"(pk|sk)_(test|live)_([A-Za-z0-9]{{{LOOKUP_ID_LENGTH}}})[A-Za-z0-9]{{{SECRET_LENGTH}}}"
)
# Cost 10 is ~70 ms here: verified keys are cached, so only a miss pays it.
BCRYPT_COST = 10
MAX_GRACE_PERIOD = dt.timedelta(days=7)


@dataclasses.dataclass(frozen=True)
class ParsedKey:
    """A presented key that has the right shape (not yet verified)."""

    kind: KeyKind
    mode: Mode
    lookup_id: str
    plaintext: str = dataclasses.field(repr=False)


def parse_api_key(presented: str) -> ParsedKey | None:
    """Shape check only; None for anything that cannot be one of our keys.

    Cheap by design (length first, then one anchored regex on ASCII): garbage never
    reaches the database or bcrypt.
    """
    if len(presented) != KEY_LENGTH or not presented.isascii():
        return None
    match = _KEY_PATTERN.fullmatch(presented)
    if match is None:
        return None
    return ParsedKey(KeyKind(match.group(1)), Mode(match.group(2)), match.group(3), presented)


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def generate_api_key(kind: KeyKind, mode: Mode) -> ParsedKey:
    """A new key from the OS CSPRNG."""
    lookup_id = _random_base62(LOOKUP_ID_LENGTH)
    plaintext = f"{kind.value}_{mode.value}_{lookup_id}{_random_base62(SECRET_LENGTH)}"
    return ParsedKey(kind, mode, lookup_id, plaintext)


def hash_api_key(plaintext: str) -> str:
    """bcrypt hash (slow: call it off the event loop)."""
    return bcrypt.hashpw(plaintext.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


def api_key_matches(plaintext: str, hashed: str) -> bool:
    """Constant-time bcrypt check (slow: call it off the event loop)."""
    return bcrypt.checkpw(plaintext.encode(), hashed.encode())


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """Stored metadata of an API key; ``secret_hash`` never leaves the service."""

    key_id: str
    organization_id: str
    mode: Mode
    kind: KeyKind
    role: Role | None
    name: str
    lookup_id: str
    secret_hash: str = dataclasses.field(repr=False)
    prefix: str
    last4: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    replaced_by_key_id: str | None = None
    rotated_from_key_id: str | None = None

    def usable_at(self, now: dt.datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or now < self.expires_at


def display_prefix(plaintext: str) -> str:
    """What lists show to recognise a key: kind, mode and the start of the lookup id."""
    return plaintext[: len("sk_test_") + 4]

"""Opaque, random, type-prefixed resource ids (never sequential)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
# 22 base62 characters carry ~131 bits: unguessable, and short enough for logs.
_RANDOM_LENGTH = 22

ORGANIZATION = "org_"
API_KEY = "key_"
CONSUMER = "cons_"
SESSION = "sess_"
QUEUE = "q_"
WEBHOOK_ENDPOINT = "we_"
DELIVERY = "del_"
EVENT = "evt_"
AUDIT_EVENT = "aud_"


def new_id(prefix: str) -> str:
    """A fresh id such as ``org_4fZ...``."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LENGTH))


def has_id_shape(value: object, prefix: str) -> bool:
    """Whether ``value`` could be an id of this type (cheap pre-check, not a lookup).

    Takes any object: values parsed from caller-supplied JSON (page tokens) need not
    be strings.
    """
    if not isinstance(value, str):
        return False
    body = value[len(prefix) :]
    return (
        value.startswith(prefix)
        and 0 < len(body) <= 64
        and all(character in _ALPHABET for character in body)
    )

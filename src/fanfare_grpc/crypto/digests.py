"""Keyed digests: raw IPs and device fingerprints are never stored, only these."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def derive_key(root: bytes, purpose: str) -> bytes:
    """A 32-byte subkey of ``root`` for one purpose (HKDF-SHA256)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"fanfare:" + purpose.encode()
    ).derive(root)


class KeyedDigester:
    """HMAC-SHA256 digests under one derived key, hex encoded."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def digest(self, value: str) -> str:
        """Hex HMAC of the UTF-8 bytes of ``value``."""
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()


def ip_digester(root: bytes) -> KeyedDigester:
    """Digests of client IP addresses (``ip_hash`` in audit, IP rate-limit keys)."""
    return KeyedDigester(derive_key(root, "ip"))


def device_digester(root: bytes) -> KeyedDigester:
    """Digests of device fingerprints (``dfp`` claims, device dedupe)."""
    return KeyedDigester(derive_key(root, "device-fingerprint"))


def email_index_digester(root: bytes) -> KeyedDigester:
    """Blind index of normalized email addresses (lookup without decrypting)."""
    return KeyedDigester(derive_key(root, "email-index"))


def sha256_hex(value: str) -> str:
    """Unkeyed SHA-256, for cache keys of high-entropy secrets only."""
    return hashlib.sha256(value.encode()).hexdigest()

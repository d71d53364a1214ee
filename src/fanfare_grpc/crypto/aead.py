"""AES-256-GCM with a version header, for data keys and column values.

Layout: ``version (1 byte) | key version (4 bytes, big endian) | nonce (12) |
ciphertext+tag``. The associated data is never stored: the caller rebuilds it from
where the ciphertext lives (organization, table, column, row), so a ciphertext
moved anywhere else fails to decrypt.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 1
_HEADER = struct.Struct(">BI")
_NONCE_LENGTH = 12
KEY_LENGTH = 32


class DecryptionError(Exception):
    """The ciphertext is malformed, was tampered with, or belongs elsewhere."""


def seal(key: bytes, key_version: int, plaintext: bytes, associated_data: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` bound to ``associated_data``."""
    nonce = os.urandom(_NONCE_LENGTH)
    header = _HEADER.pack(FORMAT_VERSION, key_version)
    # The header is authenticated too: a swapped key version fails the tag check.
    body = AESGCM(key).encrypt(nonce, plaintext, header + associated_data)
    return header + nonce + body


def key_version_of(ciphertext: bytes) -> int:
    """The key version a ciphertext was sealed with.

    Raises:
        DecryptionError: Not a ciphertext of a known format.
    """
    if len(ciphertext) < _HEADER.size + _NONCE_LENGTH + 16:
        raise DecryptionError("ciphertext too short")
    format_version, key_version = _HEADER.unpack_from(ciphertext)
    if format_version != FORMAT_VERSION:
        raise DecryptionError("unknown ciphertext format")
    return int(key_version)


def open_sealed(key: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Decrypt what ``seal`` produced with the same key and associated data.

    Raises:
        DecryptionError: Wrong key, wrong associated data, or tampered bytes.
    """
    key_version_of(ciphertext)
    header = ciphertext[: _HEADER.size]
    nonce = ciphertext[_HEADER.size : _HEADER.size + _NONCE_LENGTH]
    body = ciphertext[_HEADER.size + _NONCE_LENGTH :]
    try:
        return AESGCM(key).decrypt(nonce, body, header + associated_data)
    except InvalidTag:
        raise DecryptionError("ciphertext does not authenticate") from None

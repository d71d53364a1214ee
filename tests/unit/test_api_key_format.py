"""API key format: prefixes, length, alphabet, CSPRNG, bcrypt."""

from __future__ import annotations

import re

import pytest

from fanfare_grpc.domain.access import KeyKind, Mode
from fanfare_grpc.domain.api_keys import (
    KEY_LENGTH,
    api_key_matches,
    generate_api_key,
    hash_api_key,
    parse_api_key,
)


@pytest.mark.parametrize("kind", list(KeyKind))
@pytest.mark.parametrize("mode", list(Mode))
def test_generated_keys_have_the_documented_shape(kind: KeyKind, mode: Mode) -> None:
    key = generate_api_key(kind, mode)
    assert re.fullmatch(rf"{kind.value}_{mode.value}_[A-Za-z0-9]{{44}}", key.plaintext)
    assert len(key.plaintext.encode()) == KEY_LENGTH < 72  # bcrypt truncates past 72 bytes
    parsed = parse_api_key(key.plaintext)
    assert parsed == key


def test_keys_are_unique() -> None:
    assert len({generate_api_key(KeyKind.SECRET, Mode.TEST).plaintext for _ in range(500)}) == 500


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "sk_test_",
        "sk_prod_" + "A" * 44,
        "rk_test_" + "A" * 44,
        "sk_test_" + "A" * 43,
        "sk_test_" + "A" * 45,
        "sk_test_" + "A" * 43 + "-",
        "sk_test_" + "A" * 43 + "é",
        "sk_test_" + "é" * 22,
        "sk_test_" + "A" * 10_000,
        "SK_TEST_" + "A" * 44,
        " sk_test_" + "A" * 43,
    ],
)
def test_malformed_keys_do_not_parse(presented: str) -> None:
    assert parse_api_key(presented) is None


def test_bcrypt_hash_matches_only_the_key() -> None:
    key = generate_api_key(KeyKind.SECRET, Mode.LIVE).plaintext
    hashed = hash_api_key(key)
    assert hashed.startswith("$2b$10$") and key not in hashed
    assert api_key_matches(key, hashed)
    assert not api_key_matches(key[:-1] + ("A" if key[-1] != "A" else "B"), hashed)

"""Refresh token and one-time code formats: shape, entropy source, hashing."""

from __future__ import annotations

import collections

from fanfare_grpc.domain.passwordless import code_matches, hash_code, new_code
from fanfare_grpc.domain.refresh_tokens import (
    TOKEN_LENGTH,
    generate_refresh_token,
    hash_refresh_token,
    parse_refresh_token,
    refresh_token_matches,
)


def test_generated_refresh_tokens_parse_and_differ() -> None:
    tokens = [generate_refresh_token() for _ in range(200)]
    assert len({token.plaintext for token in tokens}) == 200
    for token in tokens:
        assert token.plaintext.startswith("rt_") and len(token.plaintext) == TOKEN_LENGTH
        parsed = parse_refresh_token(token.plaintext)
        assert parsed is not None and parsed.lookup_id == token.lookup_id
    # 43 base62 characters of secret carry at least 256 bits.
    assert 62**43 >= 2**256


def test_malformed_refresh_tokens_are_refused_by_shape() -> None:
    good = generate_refresh_token().plaintext
    for bad in (
        "",
        "rt_",
        good[:-1],
        good + "A",
        "xx" + good[2:],
        good[:-1] + "é",
        good[:-1] + "-",
    ):
        assert parse_refresh_token(bad) is None, bad


def test_refresh_token_hash_checks_the_whole_token() -> None:
    token = generate_refresh_token().plaintext
    hashed = hash_refresh_token(token)
    assert token not in hashed and hashed.startswith("$2b$04$")
    assert refresh_token_matches(token, hashed)
    assert not refresh_token_matches(token[:-1] + ("a" if token[-1] != "a" else "b"), hashed)


def test_codes_are_six_digits_and_spread_over_every_digit() -> None:
    codes = [new_code() for _ in range(2000)]
    assert all(len(code) == 6 and code.isdigit() for code in codes)
    # Leading zeros are kept, and every digit appears in every position.
    for position in range(6):
        counts = collections.Counter(code[position] for code in codes)
        assert set(counts) == set("0123456789")


def test_code_hash_round_trip() -> None:
    hashed = hash_code("012345")
    assert "012345" not in hashed
    assert code_matches("012345", hashed)
    assert not code_matches("012346", hashed)

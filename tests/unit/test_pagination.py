"""Page tokens round-trip, and any forged token is INVALID_ARGUMENT naming page_token."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from fanfare_grpc import errors
from fanfare_grpc.domain import ids
from fanfare_grpc.domain.pagination import ListCursor, decode_cursor, encode_cursor


def _token(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def test_tokens_round_trip() -> None:
    cursor = ListCursor(dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC), ids.new_id(ids.QUEUE))
    assert decode_cursor(encode_cursor(cursor), ids.QUEUE) == cursor
    assert decode_cursor("", ids.QUEUE) is None


FORGED = {
    "not base64": "%%",
    "not json": _token(b"{"),
    "not utf-8": _token(b'"\xff\xfe"'),
    "key list": _token(json.dumps({"c": "2026-01-01T00:00:00+00:00", "k": ["q_a"]}).encode()),
    "key number": _token(json.dumps({"c": "2026-01-01T00:00:00+00:00", "k": 5}).encode()),
    "key object": _token(json.dumps({"c": "2026-01-01T00:00:00+00:00", "k": {}}).encode()),
    "time number": _token(json.dumps({"c": 1, "k": "q_a"}).encode()),
    "time missing": _token(json.dumps({"k": "q_a"}).encode()),
    "naive time": _token(json.dumps({"c": "2026-01-01T00:00:00", "k": "q_a"}).encode()),
    "other prefix": _token(json.dumps({"c": "2026-01-01T00:00:00+00:00", "k": "key_a"}).encode()),
    "list": _token(json.dumps(["2026-01-01T00:00:00+00:00", "q_a"]).encode()),
    "string": _token(b'"q_a"'),
    "null": _token(b"null"),
    "huge integer": _token(b'{"c": ' + b"9" * 5000 + b', "k": "q_a"}'),
    "deep nesting": _token(b"[" * 1500),
    "year 1 east of utc": _token(b'{"c": "0001-01-01T00:00:00+05:00", "k": "q_a"}'),
    "year 9999 west of utc": _token(b'{"c": "9999-12-31T23:59:59-05:00", "k": "q_a"}'),
}


@pytest.mark.parametrize("token", FORGED.values(), ids=FORGED.keys())
def test_forged_tokens_are_invalid_arguments_naming_page_token(token: str) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        decode_cursor(token, ids.QUEUE)
    assert [violation.field for violation in raised.value.violations] == ["page_token"]

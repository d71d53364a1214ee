"""Opaque page tokens for lists ordered newest first by (created_at, id)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json

from fanfare_grpc import errors
from fanfare_grpc.domain import ids

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class ListCursor:
    """Position after the last item of a page (newest first)."""

    created_at: dt.datetime
    item_id: str


def page_size(requested: int) -> int:
    """The page size to use for a request's ``page_size`` (0 = default)."""
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_cursor(cursor: ListCursor) -> str:
    """Opaque page token."""
    payload = json.dumps({"c": cursor.created_at.isoformat(), "k": cursor.item_id})
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(token: str, id_prefix: str) -> ListCursor | None:
    """The cursor in a page token ('' = first page).

    Page tokens come back from callers, so any bytes may arrive here: every shape
    that ``encode_cursor`` did not produce is refused the same way.

    Raises:
        InvalidArgument: The token was not produced by ``encode_cursor`` for this list.
    """
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        cursor = _cursor(json.loads(base64.urlsafe_b64decode(padded.encode())), id_prefix)
    except (ValueError, OverflowError, RecursionError):
        # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors; deep
        # nesting in a forged token makes the JSON parser recurse too far.
        cursor = None
    if cursor is None:
        raise errors.InvalidArgument(
            "invalid page token", (errors.FieldViolation("page_token", "not a valid page token"),)
        )
    return cursor


def _cursor(payload: object, id_prefix: str) -> ListCursor | None:
    """The cursor ``encode_cursor`` wrote, or None for any other JSON value."""
    if not isinstance(payload, dict):
        return None
    created_text, item_id = payload.get("c"), payload.get("k")
    if not isinstance(created_text, str) or not isinstance(item_id, str):
        return None
    created_at = dt.datetime.fromisoformat(created_text)
    if created_at.tzinfo is None or not ids.has_id_shape(item_id, id_prefix):
        return None
    # An offset can push a time near year 1 or 9999 out of range (OverflowError).
    return ListCursor(created_at.astimezone(dt.UTC), item_id)

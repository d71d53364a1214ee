"""Opaque page tokens for lists ordered newest first by (created_at, id)."""

from __future__ import annotations

import base64
import binascii
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

    Raises:
        InvalidArgument: The token was not produced by ``encode_cursor`` for this list.
    """
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        created_at = dt.datetime.fromisoformat(payload["c"])
        item_id = payload["k"]
        if created_at.tzinfo is None or not ids.has_id_shape(item_id, id_prefix):
            raise ValueError(item_id)
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise errors.InvalidArgument(
            "invalid page token", (errors.FieldViolation("page_token", "not a valid page token"),)
        ) from None
    return ListCursor(created_at, item_id)

"""Deterministic boundary sweep: every field of a request, one at a time, at each edge.

Random examples reach a bad value in one field among plausible others only now and
then; this sweep does so for every field and every edge value on every run, so
the default profile catches a whole class (a time no datetime holds, a forged page
token) for certain, and Hypothesis explores the combinations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tests.fuzz.strategies import (
    DURATION_SECONDS,
    INT32,
    INT64,
    MASK_PATHS,
    NANOS,
    SIGNED_32,
    SIGNED_64,
    TIME_SECONDS,
    UINT32,
    UINT64,
    UNSIGNED_32,
    Hints,
    build_message,
    forged_page_tokens,
    is_map,
    is_message,
    maskable_fields,
)

_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 1e308, 3.4028235e38)
# Fewer strings than Hypothesis draws from: one of each kind of trouble.
SWEEP_STRINGS = (
    "",
    "\x00",
    "\u202e\r\n\x1b[31m",
    "a" * 10_240,
    "😀" * 2_600,
    "' OR '1'='1 %s%n ${jndi:ldap://x}",
    "q_" + "A" * 65,
    "cons_" + "A" * 22,
    "rt_" + "A" * 59,
    "sk_test_" + "A" * 44,
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    "a@b",
)


def boundary_requests(message: Descriptor, hints: Hints, now: int) -> Iterator[tuple[str, Message]]:
    """``(label, request)``: a plausible request with one field at one edge value."""
    cls = message_factory.GetMessageClass(message)
    base = _baseline(message, hints)
    for field in message.fields:
        if is_map(field):
            continue
        for label, value in _edges(field, message, now):
            values = {**base, field.name: [value] if field.is_repeated else value}
            yield f"{field.name}={label[:40]!r}", build_message(cls, message, values)


def _baseline(message: Descriptor, hints: Hints) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in message.fields:
        if is_map(field) or field.is_repeated:
            continue
        kind = field.type
        if is_message(field):
            if field.message_type.full_name == "google.protobuf.FieldMask":
                cls = message_factory.GetMessageClass(field.message_type)
                values[field.name] = cls(paths=maskable_fields(message, field))
        elif kind == FieldDescriptor.TYPE_STRING:
            values[field.name] = (list(hints.get(field.name) or ()) or ["drop"])[0]
        elif kind == FieldDescriptor.TYPE_ENUM:
            values[field.name] = max(value.number for value in field.enum_type.values)
        elif kind not in (FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_BYTES):
            values[field.name] = 1
    return values


def _edges(field: FieldDescriptor, owner: Descriptor, now: int) -> Iterator[tuple[str, Any]]:
    kind = field.type
    if is_message(field):
        yield from _message_edges(field, owner, now)
    elif kind == FieldDescriptor.TYPE_STRING:
        strings = list(SWEEP_STRINGS)
        if field.name == "page_token":
            strings += forged_page_tokens()
        yield from ((repr(value), value) for value in strings)
    elif kind == FieldDescriptor.TYPE_BYTES:
        yield from (("empty", b""), ("10 KB", b"\xff" * 10_240))
    elif kind == FieldDescriptor.TYPE_BOOL:
        yield from (("true", True), ("false", False))
    elif kind == FieldDescriptor.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        for number in (*known, -1, max(known) + 1, 2**31 - 1, -(2**31)):
            yield str(number), number
    elif kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        yield from ((repr(value), value) for value in _FLOATS)
    else:
        extremes = (
            INT32
            if kind in SIGNED_32
            else INT64
            if kind in SIGNED_64
            else UINT32
            if kind in UNSIGNED_32
            else UINT64
        )
        yield from ((str(value), value) for value in extremes)


def _message_edges(
    field: FieldDescriptor, owner: Descriptor, now: int
) -> Iterator[tuple[str, Any]]:
    name = field.message_type.full_name
    cls = message_factory.GetMessageClass(field.message_type)
    if name == "google.protobuf.Timestamp":
        for seconds in (*TIME_SECONDS, now - 3_600):
            yield f"{seconds}s", cls(seconds=seconds)
        for nanos in NANOS:
            yield f"+1h {nanos}ns", cls(seconds=now + 3_600, nanos=nanos)
    elif name == "google.protobuf.Duration":
        for seconds in DURATION_SECONDS:
            yield f"{seconds}s", cls(seconds=seconds)
        for nanos in NANOS:
            yield f"60s {nanos}ns", cls(seconds=60, nanos=nanos)
    elif name == "google.protobuf.FieldMask":
        for path in MASK_PATHS:
            yield repr(path), cls(paths=[path])
        every = maskable_fields(owner, field)
        yield "every field twice", cls(paths=every + every)
        yield "no path", cls()
    else:
        yield "empty", cls()

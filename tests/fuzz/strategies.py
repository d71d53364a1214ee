"""Hypothesis strategies built from protobuf descriptors: hostile request messages.

Every field of a request message gets values chosen to break things: integer and
time extremes, NaN and infinities, empty, 10 KB and control-character strings,
unknown enum numbers, deep field-mask paths, forged page tokens. ``Hints`` add
values that are valid for a field name (a real queue id, a real refresh token), so
that some requests get past validation into the domain code.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import descriptor, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

Hints = Mapping[str, Sequence[str]]

INT32 = (0, 1, -1, 2**31 - 1, -(2**31), 1000, 1001, 10_000, 10_001, 1_000_000, 1_000_001)
INT64 = (*INT32, 2**63 - 1, -(2**63), 2**53, 2**62, -(2**62))
UINT32 = (0, 1, 2**31, 2**32 - 1)
UINT64 = (*UINT32, 2**63, 2**64 - 1)
# Seconds at and around the edges of what datetime, protobuf and the protos accept.
TIME_SECONDS = (
    0,
    1,
    -1,
    2**62,
    -(2**62),
    2**63 - 1,
    -(2**63),
    253_402_300_799,
    253_402_300_800,
    253_370_764_799,
    253_370_764_800,
    -62_135_596_800,
    -62_135_596_801,
    1_700_000_000,
    4_102_444_800,
)
NANOS = (0, -1, 1, 999_999_999, 10**9, -(10**9), 2**31 - 1, -(2**31))
DURATION_SECONDS = (0, 1, -1, 29, 30, 86_400, 86_401, 604_800, 604_801, 315_576_000_001, 2**62)
HOSTILE_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202e",
    "\r\n",
    "\t",
    "\x7f\x1b[31m",
    "é",
    "😀" * 10,
    "\ufeff",
    "\U0010ffff",
    "a" * 10_240,
    "😀" * 2_600,
    "../../etc/passwd",
    "' OR '1'='1",
    "%s%n%x",
    "${jndi:ldap://x}",
    "{{7*7}}",
    '{"c": "x"}',
    "null",
    "q_",
    "q_" + "A" * 64,
    "q_" + "A" * 65,
    "cons_" + "A" * 22,
    "sess_" + "A" * 22,
    "key_" + "A" * 22,
    "rt_" + "A" * 59,
    "sk_test_" + "A" * 44,
    "pk_test_" + "A" * 44,
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    "fan@example.com",
    "a@b",
    "A" * 64 + "@example.com",
)
END_TIMES = frozenset({"closes_at", "end_time", "expires_at"})
MASK_PATHS = (
    "",
    "*",
    "name",
    "name.x",
    "a.b.c.d",
    "opens_at.seconds",
    "update_mask",
    "queue_id",
    "status",
    ".",
    "..",
    "name.",
    "a" * 1_000,
    ".".join(["a"] * 100),
)


def forged_page_tokens() -> list[str]:
    """Well-formed base64 that ``encode_cursor`` never writes: each shape once."""
    payloads: list[object] = [
        {"c": "2026-01-01T00:00:00+00:00", "k": ["q_abc", 1]},
        {"c": "2026-01-01T00:00:00+00:00", "k": 7},
        {"c": 1767225600, "k": "q_abc"},
        {"c": "0001-01-01T00:00:00+05:00", "k": "q_abc"},
        {"c": "9999-12-31T23:59:59-05:00", "k": "q_abc"},
        {"c": "2026-01-01T00:00:00", "k": "q_abc"},
        ["2026-01-01T00:00:00+00:00", "q_abc"],
        None,
        "q_abc",
    ]
    tokens = [
        base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
        for payload in payloads
    ]
    return [*tokens, base64.urlsafe_b64encode(b"[" * 1_500).decode(), "%%", "=" * 2_048]


def _ints(extremes: Sequence[int], low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from(extremes), st.integers(max(low, 0), 100), st.integers(low, high)
    )


def hostile_strings() -> st.SearchStrategy[str]:
    """Any valid Unicode (lone surrogates cannot be encoded), with the classics."""
    return st.one_of(
        st.sampled_from(HOSTILE_STRINGS),
        st.text(max_size=40),
        st.text(st.characters(codec="ascii"), max_size=40),
    )


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        hostile_strings(),
        st.sampled_from(
            [
                "2026-01-01T00:00:00+00:00",
                "0001-01-01T00:00:00+14:00",
                "9999-12-31T23:59:59-14:00",
                "2026-01-01T00:00:00",
                "q_abc",
                "key_abc",
                "sess_abc",
            ]
        ),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(st.text(max_size=3), children)
        ),
        max_leaves=8,
    )


def page_tokens() -> st.SearchStrategy[str]:
    """Forged page tokens: random base64, base64 JSON of any shape, plain junk."""
    cursor_like = st.fixed_dictionaries({}, optional={"c": _json_values(), "k": _json_values()})
    encoded_json = st.one_of(cursor_like, _json_values()).map(
        lambda value: base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    )
    random_base64 = st.binary(max_size=200).map(
        lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("=")
    )
    nested = st.integers(1, 1_500).map(
        lambda depth: base64.urlsafe_b64encode(b"[" * depth).decode()
    )
    return st.one_of(encoded_json, random_base64, nested, hostile_strings())


def _timestamps(cls: type[Message], now: int) -> st.SearchStrategy[Message]:
    seconds = st.one_of(
        st.sampled_from((*TIME_SECONDS, now, now + 3_600, now - 3_600)),
        st.integers(-(2**63), 2**63 - 1),
    )
    nanos = st.one_of(st.sampled_from(NANOS), st.integers(-(2**31), 2**31 - 1))
    return st.builds(cls, seconds=seconds, nanos=nanos)


def _durations(cls: type[Message]) -> st.SearchStrategy[Message]:
    seconds = st.one_of(st.sampled_from(DURATION_SECONDS), st.integers(-(2**63), 2**63 - 1))
    nanos = st.one_of(st.sampled_from(NANOS), st.integers(-(2**31), 2**31 - 1))
    return st.builds(cls, seconds=seconds, nanos=nanos)


def _field_masks(cls: type[Message], owner: Descriptor) -> st.SearchStrategy[Message]:
    path = st.one_of(
        st.sampled_from(MASK_PATHS),
        st.sampled_from([field.name for field in owner.fields]),
        hostile_strings(),
        st.lists(st.sampled_from(("a", "b", "name", "x")), min_size=2, max_size=30).map(".".join),
    )
    return st.builds(cls, paths=st.lists(path, max_size=12))


class RequestStrategies:
    """Builds request strategies for any message descriptor, recursively.

    Half the messages have one hostile field among plausible ones (so the hostile
    value gets past the other fields' validation into the code that reads it), half
    have any subset of fields hostile.
    """

    def __init__(self, hints: Hints, now: int) -> None:
        self._hints = hints
        self._now = now

    def message(self, message: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """Hostile messages of type ``message``."""
        cls = message_factory.GetMessageClass(message)
        if message.full_name == "google.protobuf.Timestamp":
            return _timestamps(cls, self._now)
        if message.full_name == "google.protobuf.Duration":
            return _durations(cls)
        fields = _fields(message, depth)
        hostile = {field.name: self._field(field, message, depth, hostile=True) for field in fields}
        any_hostile = st.fixed_dictionaries({}, optional=hostile)
        if not fields:
            return any_hostile.map(lambda values: build_message(cls, message, values))

        def one_hostile(name: str) -> st.SearchStrategy[dict[str, Any]]:
            # Scalars plausible, other messages (times, masks) plausible or unset.
            scalars, messages = {}, {}
            for field in fields:
                if field.name != name:
                    target = messages if is_message(field) else scalars
                    target[field.name] = self._field(field, message, depth, hostile=False)
            return st.fixed_dictionaries({**scalars, name: hostile[name]}, optional=messages)

        one = st.sampled_from(sorted(hostile)).flatmap(one_hostile)
        return st.one_of(one, any_hostile).map(lambda values: build_message(cls, message, values))

    def plausible(self, message: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """Messages whose every field holds a value that could be valid."""
        cls = message_factory.GetMessageClass(message)
        fields = {
            field.name: self._field(field, message, depth, hostile=False)
            for field in _fields(message, depth)
        }
        return st.fixed_dictionaries(fields).map(lambda values: build_message(cls, message, values))

    def _field(
        self, field: FieldDescriptor, owner: Descriptor, depth: int, *, hostile: bool
    ) -> st.SearchStrategy[Any]:
        single = self._single(field, owner, depth) if hostile else self._valid(field, owner, depth)
        if field.is_repeated and not is_map(field):
            return st.lists(single, max_size=5 if hostile else 2)
        return single

    def _single(
        self, field: FieldDescriptor, owner: Descriptor, depth: int
    ) -> st.SearchStrategy[Any]:
        kind = field.type
        if is_map(field):
            entry = field.message_type
            return st.dictionaries(
                self._single(entry.fields_by_name["key"], entry, depth),
                self._single(entry.fields_by_name["value"], entry, depth),
                max_size=4,
            )
        if kind == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name == "google.protobuf.FieldMask":
                return _field_masks(message_factory.GetMessageClass(field.message_type), owner)
            return self.message(field.message_type, depth + 1)
        if kind == FieldDescriptor.TYPE_STRING:
            strings = hostile_strings()
            if field.name == "page_token":
                strings = st.one_of(strings, page_tokens())
            hints = self._hints.get(field.name)
            if hints:
                # Twice as likely as a hostile value: valid ids reach the domain code.
                valid = st.sampled_from(list(hints))
                strings = st.one_of(valid, valid, strings)
            return strings
        if kind == FieldDescriptor.TYPE_BYTES:
            return st.one_of(st.binary(max_size=64), st.just(b"\xff" * 10_240))
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind == FieldDescriptor.TYPE_ENUM:
            # Open enums: numbers the descriptor does not define go over the wire too.
            known = [value.number for value in field.enum_type.values]
            return st.one_of(st.sampled_from(known), _ints(INT32, -(2**31), 2**31 - 1))
        if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            width = 32 if kind == FieldDescriptor.TYPE_FLOAT else 64
            return st.floats(width=width, allow_nan=True, allow_infinity=True)
        if kind in SIGNED_32:
            return _ints(INT32, -(2**31), 2**31 - 1)
        if kind in SIGNED_64:
            return _ints(INT64, -(2**63), 2**63 - 1)
        if kind in UNSIGNED_32:
            return _ints(UINT32, 0, 2**32 - 1)
        if kind in UNSIGNED_64:
            return _ints(UINT64, 0, 2**64 - 1)
        raise AssertionError(f"no strategy for {field.full_name} (type {kind})")

    def _valid(
        self, field: FieldDescriptor, owner: Descriptor, depth: int
    ) -> st.SearchStrategy[Any]:
        kind = field.type
        if is_map(field):
            return st.just({})
        if kind == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name == "google.protobuf.FieldMask":
                names = maskable_fields(owner, field)
                cls = message_factory.GetMessageClass(field.message_type)
                return st.builds(
                    cls, paths=st.lists(st.sampled_from(names), min_size=1, max_size=3)
                )
            cls = message_factory.GetMessageClass(field.message_type)
            if field.message_type.full_name == "google.protobuf.Timestamp":
                # Later for ends than for starts, so that closes_at > opens_at holds.
                first, last = (2, 30) if field.name in END_TIMES else (0, 1)
                return st.builds(
                    cls,
                    seconds=st.integers(self._now + 60 + first * 86_400, self._now + last * 86_400),
                    nanos=st.integers(0, 999_999_999),
                )
            if field.message_type.full_name == "google.protobuf.Duration":
                return st.builds(cls, seconds=st.integers(30, 3_600))
            return self.plausible(field.message_type, depth + 1)
        if kind == FieldDescriptor.TYPE_STRING:
            return st.sampled_from(list(self._hints.get(field.name) or ("drop",)))
        if kind == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=16)
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind == FieldDescriptor.TYPE_ENUM:
            return st.sampled_from([value.number for value in field.enum_type.values])
        if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            return st.floats(0, 100)
        return st.integers(1, 100)


SIGNED_32 = (
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SFIXED32,
)
SIGNED_64 = (
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
)
UNSIGNED_32 = (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32)
UNSIGNED_64 = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)


def maskable_fields(owner: Descriptor, mask: FieldDescriptor) -> list[str]:
    """Fields an update mask may plausibly name: not the mask itself, not ids."""
    return sorted(
        field.name
        for field in owner.fields
        if field.name != mask.name and not field.name.endswith("_id")
    )


def _fields(message: Descriptor, depth: int) -> list[FieldDescriptor]:
    # Recursive messages stop nesting after a few levels.
    return [
        field for field in message.fields if depth < 4 or field.type != FieldDescriptor.TYPE_MESSAGE
    ]


def is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def build_message(
    cls: type[Message], message: descriptor.Descriptor, values: dict[str, Any]
) -> Message:
    built = cls()
    for name, value in values.items():
        field = message.fields_by_name[name]
        target = getattr(built, name) if field.is_repeated or is_message(field) else None
        if is_map(field):
            assert target is not None
            for key, item in value.items():
                if is_message(field.message_type.fields_by_name["value"]):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            assert target is not None
            if is_message(field):
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif is_message(field):
            assert target is not None
            target.CopyFrom(value)
        else:
            setattr(built, name, value)
    return built


def is_message(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE

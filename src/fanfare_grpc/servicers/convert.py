"""Proto ↔ domain conversions shared by the servicers."""

from __future__ import annotations

import datetime as dt

from fanfare.common.v1 import common_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from fanfare_grpc import errors
from fanfare_grpc.domain.access import KeyKind, Mode, Role

_MODES = {Mode.TEST: common_pb2.MODE_TEST, Mode.LIVE: common_pb2.MODE_LIVE}
_KINDS = {
    KeyKind.PUBLISHABLE: common_pb2.API_KEY_KIND_PUBLISHABLE,
    KeyKind.SECRET: common_pb2.API_KEY_KIND_SECRET,
}
_ROLES = {
    Role.ADMIN: common_pb2.ROLE_ADMIN,
    Role.OPERATOR: common_pb2.ROLE_OPERATOR,
    Role.AUDITOR: common_pb2.ROLE_AUDITOR,
    Role.READONLY: common_pb2.ROLE_READONLY,
    Role.CHECKOUT: common_pb2.ROLE_CHECKOUT,
}
_KINDS_FROM_PROTO: dict[int, KeyKind] = {int(value): kind for kind, value in _KINDS.items()}
_ROLES_FROM_PROTO: dict[int, Role] = {int(value): role for role, value in _ROLES.items()}
_NANOS_PER_SECOND = 1_000_000_000
# google.protobuf.Duration's documented range: about 10,000 years either way.
_MAX_DURATION_SECONDS = 315_576_000_000


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp, or None (leave the field unset)."""
    if value is None:
        return None
    converted = timestamp_pb2.Timestamp()
    converted.FromDatetime(value)
    return converted


def from_timestamp(value: timestamp_pb2.Timestamp, field: str) -> dt.datetime:
    """An aware UTC datetime.

    The protos bound request times, but a Timestamp's ``nanos`` cannot be checked
    there (CEL sees a normalized time), and a field that lacks a bound must not turn
    a caller's mistake into INTERNAL.

    Raises:
        InvalidArgument: ``nanos`` outside [0, 1e9) or a time no datetime holds
            (before year 1, after 9999); the violation names ``field``.
    """
    try:
        return value.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        raise _invalid(field, "not a valid timestamp") from None


def duration(value: dt.timedelta) -> duration_pb2.Duration:
    """A Duration."""
    converted = duration_pb2.Duration()
    converted.FromTimedelta(value)
    return converted


def from_duration(value: duration_pb2.Duration, field: str) -> dt.timedelta:
    """A timedelta.

    Raises:
        InvalidArgument: ``nanos`` outside (-1e9, 1e9) or of the other sign than
            ``seconds``, or more than the 10,000 years a Duration may span; the
            violation names ``field``.
    """
    seconds, nanos = value.seconds, value.nanos
    if (
        abs(seconds) > _MAX_DURATION_SECONDS
        or abs(nanos) >= _NANOS_PER_SECOND
        or (seconds > 0 and nanos < 0)
        or (seconds < 0 and nanos > 0)
    ):
        raise _invalid(field, "not a valid duration")
    return value.ToTimedelta()


def _invalid(field: str, description: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"invalid {field}", (errors.FieldViolation(field, description),))


def mode_to_proto(mode: Mode) -> common_pb2.Mode.ValueType:
    """``MODE_TEST`` / ``MODE_LIVE``."""
    return _MODES[mode]


def mode_from_text(value: str) -> Mode:
    """A stored mode (``test``/``live``)."""
    return Mode(value)


def kind_to_proto(kind: KeyKind) -> common_pb2.ApiKeyKind.ValueType:
    """``API_KEY_KIND_*``."""
    return _KINDS[kind]


def role_to_proto(role: Role | None) -> common_pb2.Role.ValueType:
    """``ROLE_*`` (``ROLE_UNSPECIFIED`` for publishable keys)."""
    return common_pb2.ROLE_UNSPECIFIED if role is None else _ROLES[role]


def kind_from_proto(value: int) -> KeyKind:
    """The key kind of a request (protovalidate already refused unknown values).

    Raises:
        InvalidArgument: Unspecified or unknown.
    """
    kind = _KINDS_FROM_PROTO.get(value)
    if kind is None:
        raise errors.InvalidArgument(
            "invalid api key kind", (errors.FieldViolation("kind", "must be set"),)
        )
    return kind


def role_from_proto(value: int) -> Role | None:
    """The role of a request; None when unspecified."""
    return _ROLES_FROM_PROTO.get(value)

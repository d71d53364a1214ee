"""Every Timestamp and Duration a request carries is bounded in the protos.

An unbounded time reaches the servicers' datetime conversion with values no
datetime holds; the bound makes protovalidate refuse it first, naming the field, in
every language's client and server alike.
"""

from __future__ import annotations

from collections.abc import Iterator

from buf.validate import validate_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tests.protos import all_methods

_BOUNDED = {"google.protobuf.Timestamp": "timestamp", "google.protobuf.Duration": "duration"}


def _request_fields(message: Descriptor, seen: set[str]) -> Iterator[FieldDescriptor]:
    if message.full_name in seen:
        return
    seen.add(message.full_name)
    for field in message.fields:
        yield field
        if field.message_type is not None and field.message_type.full_name not in _BOUNDED:
            yield from _request_fields(field.message_type, seen)


def _time_fields() -> list[FieldDescriptor]:
    seen: set[str] = set()
    fields = []
    for method in all_methods():
        for field in _request_fields(method.input_type, seen):
            if field.message_type and field.message_type.full_name in _BOUNDED:
                fields.append(field)
    return fields


def test_every_request_time_has_a_lower_and_an_upper_bound() -> None:
    fields = _time_fields()
    assert {field.full_name for field in fields} >= {
        "fanfare.queue.v1.CreateQueueRequest.opens_at",
        "fanfare.auth.v1.CreateApiKeyRequest.expires_at",
        "fanfare.auth.v1.RotateApiKeyRequest.grace_period",
    }
    unbounded = []
    for field in fields:
        rules = field.GetOptions().Extensions[validate_pb2.field]
        kind = _BOUNDED[field.message_type.full_name]
        typed = getattr(rules, kind)
        lower = typed.WhichOneof("greater_than")
        upper = typed.WhichOneof("less_than")
        if not rules.HasField(kind) or lower is None or upper is None:
            unbounded.append(field.full_name)
    assert unbounded == []

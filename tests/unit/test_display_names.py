"""The display-name rule: the server's check and the protos' rule refuse the same text."""

from __future__ import annotations

import protovalidate
import pytest
from buf.validate import validate_pb2
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.webhook.v1 import webhook_service_pb2 as webhooks
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from fanfare_grpc import errors
from fanfare_grpc.domain.names import DISPLAY_TEXT_PATTERN, check_display_text, normalized_name
from fanfare_grpc.interceptors.validation import field_path
from tests.display_names import INVISIBLE_ONLY_NAMES, SAFE_NAMES, UNSAFE_NAMES

VALIDATOR = protovalidate.Validator()
MASK = field_mask_pb2.FieldMask(paths=["name"])


def _requests(text: str) -> list[tuple[Message, str]]:
    """Every request field that holds display text, set to ``text``."""
    return [
        (auth.CreateOrganizationRequest(name=text), "name"),
        (auth.CreateApiKeyRequest(kind=1, name=text), "name"),
        (queues.CreateQueueRequest(name=text, admission_rate_per_minute=1), "name"),
        (queues.UpdateQueueRequest(queue_id="q_1", name=text, update_mask=MASK), "name"),
        (
            webhooks.CreateWebhookEndpointRequest(
                url="https://example.com/hook", event_types=["queue.opened"], description=text
            ),
            "description",
        ),
        (
            webhooks.UpdateWebhookEndpointRequest(
                endpoint_id="we_1",
                description=text,
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            "description",
        ),
    ]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_the_server_refuses_control_and_bidi_characters(name: str) -> None:
    with pytest.raises(errors.InvalidArgument) as refused:
        normalized_name(name, "queue")
    assert [v.field for v in refused.value.violations] == ["name"]
    assert refused.value.message == "invalid queue name"
    with pytest.raises(errors.InvalidArgument) as refused:
        check_display_text(name, "description", "description")
    assert [v.field for v in refused.value.violations] == ["description"]


@pytest.mark.parametrize("name", INVISIBLE_ONLY_NAMES)
def test_a_name_must_show_something(name: str) -> None:
    with pytest.raises(errors.InvalidArgument) as refused:
        normalized_name(name, "queue")
    assert refused.value.violations[0].description == "must contain a visible character"


@pytest.mark.parametrize("name", SAFE_NAMES)
def test_ordinary_unicode_is_accepted(name: str) -> None:
    assert normalized_name(f"  {name} ", "queue") == name
    for request, _ in _requests(name):
        assert VALIDATOR.collect_violations(request) == [], request


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_every_display_text_field_of_the_protos_refuses_them(name: str) -> None:
    for request, field in _requests(name):
        violations = VALIDATOR.collect_violations(request)
        assert [(field_path(v.proto.field), v.proto.rule_id) for v in violations] == [
            (field, "display_text")
        ], request


def test_the_protos_carry_the_servers_pattern() -> None:
    for request, field in _requests("x"):
        options = request.DESCRIPTOR.fields_by_name[field].GetOptions()
        rules = options.Extensions[validate_pb2.field]
        expressions = [rule.expression for rule in rules.cel if rule.id == "display_text"]
        assert expressions == [f"this.matches(r'{DISPLAY_TEXT_PATTERN}')"], request.DESCRIPTOR

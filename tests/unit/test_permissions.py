"""The permission table covers every RPC in the protos, and only those."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor

from fanfare_grpc import errors
from fanfare_grpc.domain.access import KeyKind, Mode, Principal, Role
from fanfare_grpc.interceptors.authorization import check_permission
from fanfare_grpc.interceptors.idempotency import SECRET_RESPONSE_FIELDS
from fanfare_grpc.permissions import PERMISSIONS
from tests.protos import SERVED_MODULES, all_methods, full_method_name


def _all_methods() -> set[str]:
    return {full_method_name(method) for method in all_methods(SERVED_MODULES)}


def test_every_rpc_has_exactly_one_entry() -> None:
    methods = _all_methods()
    assert methods - set(PERMISSIONS) == set(), "RPCs without a permission entry"
    assert set(PERMISSIONS) - methods == set(), "entries for RPCs that do not exist"


def test_only_health_and_reflection_are_public() -> None:
    public = {method for method, policy in PERMISSIONS.items() if policy.public}
    assert public == {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }


def _secret(role: Role) -> Principal:
    return Principal("org_a", Mode.TEST, KeyKind.SECRET, role, "key_a")


PUBLISHABLE = Principal("org_a", Mode.TEST, KeyKind.PUBLISHABLE, None, "key_p")
CONSUMER = Principal("org_a", Mode.TEST, KeyKind.PUBLISHABLE, None, "key_p", consumer_id="cons_a")
PLATFORM = Principal(platform_identity="spiffe://fanfare/ops")

KEY_MANAGEMENT = ("CreateApiKey", "ListApiKeys", "RotateApiKey", "RevokeApiKey")


@pytest.mark.parametrize("rpc", KEY_MANAGEMENT)
def test_key_management_is_admin_only(rpc: str) -> None:
    policy = PERMISSIONS[f"/fanfare.auth.v1.AuthService/{rpc}"]
    check_permission(policy, _secret(Role.ADMIN))
    for principal in (
        _secret(Role.OPERATOR),
        _secret(Role.AUDITOR),
        _secret(Role.READONLY),
        PUBLISHABLE,
        PLATFORM,
    ):
        with pytest.raises(errors.PermissionDenied):
            check_permission(policy, principal)


def test_create_organization_is_for_platform_principals_only() -> None:
    policy = PERMISSIONS["/fanfare.auth.v1.AuthService/CreateOrganization"]
    check_permission(policy, PLATFORM)
    for principal in (_secret(Role.ADMIN), PUBLISHABLE):
        with pytest.raises(errors.PermissionDenied):
            check_permission(policy, principal)


def test_consumer_rpcs_need_a_consumer_token_with_a_publishable_key() -> None:
    policy = PERMISSIONS["/fanfare.queue.v1.QueueService/EnterQueue"]
    with pytest.raises(errors.Unauthenticated):
        check_permission(policy, PUBLISHABLE)
    check_permission(policy, CONSUMER)
    with pytest.raises(errors.PermissionDenied):
        check_permission(policy, _secret(Role.ADMIN))


def test_audit_is_for_admins_and_auditors() -> None:
    policy = PERMISSIONS["/fanfare.audit.v1.AuditService/ListAuditEvents"]
    check_permission(policy, _secret(Role.ADMIN))
    check_permission(policy, _secret(Role.AUDITOR))
    for role in (Role.OPERATOR, Role.READONLY):
        with pytest.raises(errors.PermissionDenied):
            check_permission(policy, _secret(role))


def test_unknown_methods_and_anonymous_callers_are_denied() -> None:
    with pytest.raises(errors.PermissionDenied):
        check_permission(None, _secret(Role.ADMIN))
    with pytest.raises(errors.PermissionDenied):
        check_permission(PERMISSIONS["/fanfare.queue.v1.QueueService/ListQueues"], None)


@pytest.mark.parametrize(
    "method",
    [
        "/fanfare.session.v1.SessionService/ListSessions",
        "/fanfare.queue.v1.QueueService/ListQueues",
        "/fanfare.queue.v1.QueueService/GetQueue",
        "/fanfare.webhook.v1.WebhookService/ListWebhookEndpoints",
        "/fanfare.webhook.v1.WebhookService/GetWebhookEndpoint",
        "/fanfare.webhook.v1.WebhookService/ListDeliveries",
    ],
)
def test_operator_reads_follow_the_api_contract(method: str) -> None:
    # API.md: sk[OPERATOR] — ADMIN and OPERATOR keys only.
    policy = PERMISSIONS[method]
    for role in (Role.ADMIN, Role.OPERATOR):
        check_permission(policy, _secret(role))
    for role in (Role.AUDITOR, Role.READONLY):
        with pytest.raises(errors.PermissionDenied):
            check_permission(policy, _secret(role))


@pytest.mark.parametrize(
    "method",
    [
        "/fanfare.session.v1.SessionService/ValidateSession",
        "/fanfare.queue.v1.QueueService/GetQueueStats",
        "/fanfare.auth.v1.AuthService/GetJwks",
    ],
)
def test_plain_sk_rpcs_accept_every_role_but_checkout(method: str) -> None:
    for role in (Role.ADMIN, Role.OPERATOR, Role.AUDITOR, Role.READONLY):
        check_permission(PERMISSIONS[method], _secret(role))


def test_only_operators_and_checkout_backends_redeem_handoff_tokens() -> None:
    # Redeeming burns a shopper's grant: read-only roles must not be able to.
    policy = PERMISSIONS["/fanfare.queue.v1.QueueService/ValidateHandoffToken"]
    for role in (Role.ADMIN, Role.OPERATOR, Role.CHECKOUT):
        check_permission(policy, _secret(role))
    for role in (Role.AUDITOR, Role.READONLY):
        with pytest.raises(errors.PermissionDenied) as denied:
            check_permission(policy, _secret(role))
        assert (
            denied.value.message == "requires a secret key with role ADMIN or OPERATOR or CHECKOUT"
        )


def test_a_checkout_key_may_call_three_rpcs_and_nothing_else() -> None:
    allowed = set()
    for method, policy in PERMISSIONS.items():
        if policy.public:
            continue
        try:
            check_permission(policy, _secret(Role.CHECKOUT))
        except errors.PermissionDenied:
            continue
        allowed.add(method)
    assert allowed == {
        "/fanfare.queue.v1.QueueService/ValidateHandoffToken",
        "/fanfare.session.v1.SessionService/ValidateSession",
        "/fanfare.auth.v1.AuthService/GetJwks",
    }


def _response_fields(method: str) -> list[tuple[str, str, bool]]:
    """(path, name, top level) of every field of ``method``'s response, recursively."""
    [descriptor] = [
        candidate.output_type
        for candidate in all_methods(SERVED_MODULES)
        if full_method_name(candidate) == method
    ]
    found: list[tuple[str, str, bool]] = []

    def walk(message: Descriptor, prefix: str, depth: int) -> None:
        for field in message.fields:
            found.append((prefix + field.name, field.name, depth == 0))
            if field.message_type is not None and depth < 4:
                walk(field.message_type, f"{prefix}{field.name}.", depth + 1)

    walk(descriptor, "", 0)
    return found


def _grants_something(field_name: str) -> bool:
    return field_name == "valid" or (
        field_name != "next_page_token" and field_name.endswith(("token", "secret", "secret_key"))
    )


def test_no_idempotent_replay_can_hand_out_a_grant() -> None:
    # A replayed response must never grant anything again: verdicts (``valid``) are
    # never replayed; secrets and tokens, at any depth, are cleared from replays.
    for method, policy in PERMISSIONS.items():
        if not policy.mutating or not policy.secret_roles:
            continue
        for path, name, _ in _response_fields(method):
            if not _grants_something(name):
                continue
            if name == "valid":
                assert policy.redeems, f"{method} replays a verdict ({path})"
            else:
                assert name in SECRET_RESPONSE_FIELDS, f"{method}: a replay would return {path}"


def test_only_handoff_validation_redeems() -> None:
    redeeming = {method for method, policy in PERMISSIONS.items() if policy.redeems}
    assert redeeming == {"/fanfare.queue.v1.QueueService/ValidateHandoffToken"}

"""The permission table: one entry per RPC, keyed by full method name.

It follows API.md's "who" column exactly: ``sk[OPERATOR]`` means ADMIN or OPERATOR,
a bare ``sk`` any role, AuditService ADMIN or AUDITOR.

The authentication and authorization layers read only this table (Zitadel's
``AuthMethods``). A test fails if an RPC in the protos has no entry here.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from fanfare_grpc.domain.access import Role


class ConsumerToken(enum.Enum):
    """Whether a publishable-key call must also carry a consumer access token."""

    NOT_USED = "not_used"
    REQUIRED = "required"


ADMIN_ONLY = frozenset({Role.ADMIN})
OPERATORS = frozenset({Role.ADMIN, Role.OPERATOR})
AUDITORS = frozenset({Role.ADMIN, Role.AUDITOR})
# API.md's bare "sk": every role but CHECKOUT, a restricted key that gets only the
# three RPCs that name it.
ANY_ROLE = frozenset({Role.ADMIN, Role.OPERATOR, Role.AUDITOR, Role.READONLY})
CHECKOUT = frozenset({Role.CHECKOUT})
# Redeeming a shopper's grant: operators and checkout backends, never read-only roles.
REDEEMERS = OPERATORS | CHECKOUT
NO_ROLE: frozenset[Role] = frozenset()


@dataclasses.dataclass(frozen=True)
class MethodPolicy:
    """Who may call one RPC.

    Attributes:
        public: No credentials at all (health, reflection).
        platform: A platform principal (mTLS allow-list) may call it.
        publishable: A publishable key may call it.
        secret_roles: Roles of secret keys that may call it.
        consumer_token: With a publishable key, whether a consumer token is required.
        mutating: Changes state: ``idempotency-key`` applies (secret keys).
        redeems: Spends a single-use grant (a handoff token). Such a call keeps no
            record in the idempotency store: the key goes to the redemption, which
            stores it atomically with the grant, so a retry with the same key answers
            the same OK and any other repeat (another key, no key) ``ALREADY_USED``.
    """

    public: bool = False
    platform: bool = False
    publishable: bool = False
    secret_roles: frozenset[Role] = NO_ROLE
    consumer_token: ConsumerToken = ConsumerToken.NOT_USED
    mutating: bool = False
    redeems: bool = False


PUBLIC = MethodPolicy(public=True)


def _secret(roles: frozenset[Role], *, mutating: bool = False) -> MethodPolicy:
    return MethodPolicy(secret_roles=roles, mutating=mutating)


def _consumer(roles: frozenset[Role] = NO_ROLE, *, mutating: bool = False) -> MethodPolicy:
    return MethodPolicy(
        publishable=True,
        secret_roles=roles,
        consumer_token=ConsumerToken.REQUIRED,
        mutating=mutating,
    )


_AUTH = "/fanfare.auth.v1.AuthService/"
_SESSION = "/fanfare.session.v1.SessionService/"
_QUEUE = "/fanfare.queue.v1.QueueService/"
_WEBHOOK = "/fanfare.webhook.v1.WebhookService/"
_AUDIT = "/fanfare.audit.v1.AuditService/"

PERMISSIONS: Mapping[str, MethodPolicy] = {
    # AuthService
    _AUTH + "CreateOrganization": MethodPolicy(platform=True, mutating=True),
    _AUTH + "CreateApiKey": _secret(ADMIN_ONLY, mutating=True),
    _AUTH + "ListApiKeys": _secret(ADMIN_ONLY),
    _AUTH + "RotateApiKey": _secret(ADMIN_ONLY, mutating=True),
    _AUTH + "RevokeApiKey": _secret(ADMIN_ONLY, mutating=True),
    _AUTH + "StartPasswordlessLogin": MethodPolicy(publishable=True),
    _AUTH + "VerifyPasswordlessLogin": MethodPolicy(publishable=True),
    _AUTH + "GetJwks": MethodPolicy(publishable=True, secret_roles=ANY_ROLE | CHECKOUT),
    # SessionService
    _SESSION + "CreateGuestSession": MethodPolicy(publishable=True),
    _SESSION + "RefreshSession": MethodPolicy(publishable=True),
    _SESSION + "GetSession": _consumer(),
    _SESSION + "RevokeSession": _consumer(OPERATORS, mutating=True),
    _SESSION + "ValidateSession": _secret(ANY_ROLE | CHECKOUT),
    _SESSION + "ListSessions": _secret(OPERATORS),
    _SESSION + "EraseConsumer": _secret(ADMIN_ONLY, mutating=True),
    # QueueService
    _QUEUE + "CreateQueue": _secret(OPERATORS, mutating=True),
    _QUEUE + "GetQueue": MethodPolicy(publishable=True, secret_roles=OPERATORS),
    _QUEUE + "ListQueues": _secret(OPERATORS),
    _QUEUE + "UpdateQueue": _secret(OPERATORS, mutating=True),
    _QUEUE + "DeleteQueue": _secret(OPERATORS, mutating=True),
    _QUEUE + "OpenQueue": _secret(OPERATORS, mutating=True),
    _QUEUE + "PauseQueue": _secret(OPERATORS, mutating=True),
    _QUEUE + "CloseQueue": _secret(OPERATORS, mutating=True),
    _QUEUE + "EnterQueue": _consumer(),
    _QUEUE + "GetPosition": _consumer(),
    _QUEUE + "WatchPosition": _consumer(),
    _QUEUE + "LeaveQueue": _consumer(),
    _QUEUE + "AdmitConsumers": _secret(OPERATORS, mutating=True),
    _QUEUE + "DenyConsumer": _secret(OPERATORS, mutating=True),
    _QUEUE + "CompleteConsumer": _secret(OPERATORS, mutating=True),
    _QUEUE + "ValidateHandoffToken": MethodPolicy(
        secret_roles=REDEEMERS, mutating=True, redeems=True
    ),
    _QUEUE + "GetQueueStats": _secret(ANY_ROLE),
    # WebhookService
    _WEBHOOK + "CreateWebhookEndpoint": _secret(OPERATORS, mutating=True),
    _WEBHOOK + "ListWebhookEndpoints": _secret(OPERATORS),
    _WEBHOOK + "GetWebhookEndpoint": _secret(OPERATORS),
    _WEBHOOK + "UpdateWebhookEndpoint": _secret(OPERATORS, mutating=True),
    _WEBHOOK + "DeleteWebhookEndpoint": _secret(OPERATORS, mutating=True),
    _WEBHOOK + "RotateWebhookSecret": _secret(OPERATORS, mutating=True),
    _WEBHOOK + "SendTestEvent": _secret(OPERATORS, mutating=True),
    _WEBHOOK + "ListDeliveries": _secret(OPERATORS),
    _WEBHOOK + "RetryDelivery": _secret(OPERATORS, mutating=True),
    # AuditService
    _AUDIT + "ListAuditEvents": _secret(AUDITORS),
    _AUDIT + "GetAuditEvent": _secret(AUDITORS),
    _AUDIT + "ExportAuditEvents": _secret(AUDITORS),
    _AUDIT + "VerifyAuditChain": _secret(AUDITORS),
    # Health and discovery need no credentials (still rate limited by IP, later).
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.health.v1.Health/List": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": PUBLIC,
}

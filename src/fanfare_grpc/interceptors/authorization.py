"""Authorization: the permission table decides, nothing else.

A refusal says what the method needs (derived from its policy), never what the
caller's key is or has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grpc import aio

from fanfare_grpc import errors
from fanfare_grpc.domain.access import KeyKind, Principal, Role
from fanfare_grpc.interceptors.call_state import current_call_state
from fanfare_grpc.interceptors.wrapping import (
    BehaviourInterceptor,
)
from fanfare_grpc.permissions import ANY_ROLE, ConsumerToken, MethodPolicy

NOT_ALLOWED = "not allowed to call this method"
CONSUMER_SESSION_REQUIRED = "consumer session required: send x-fanfare-session and x-fanfare-device"
_ROLE_ORDER = (Role.ADMIN, Role.OPERATOR, Role.AUDITOR, Role.READONLY, Role.CHECKOUT)


def requirement(policy: MethodPolicy) -> str:
    """What a caller needs for a method with ``policy``, in words."""
    options: list[str] = []
    if policy.platform:
        options.append("a platform client certificate (mTLS)")
    if policy.secret_roles >= ANY_ROLE:
        options.append("a secret key")
    elif policy.secret_roles:
        roles = [role.name for role in _ROLE_ORDER if role in policy.secret_roles]
        options.append(f"a secret key with role {' or '.join(roles)}")
    if policy.publishable:
        options.append(
            "a publishable key and a consumer session"
            if policy.consumer_token is ConsumerToken.REQUIRED
            else "a publishable key"
        )
    if not options:
        return NOT_ALLOWED
    return "requires " + ", or ".join(options)


def check_permission(policy: MethodPolicy | None, principal: Principal | None) -> None:
    """Raise unless ``principal`` may call a method with ``policy``.

    Raises:
        PermissionDenied: Valid credential without the right (or unknown method).
        Unauthenticated: A publishable key without the consumer token the method needs.
    """
    if policy is not None and policy.public:
        return
    if policy is None:
        raise errors.PermissionDenied(NOT_ALLOWED)
    if principal is None:
        raise errors.PermissionDenied(requirement(policy))
    if policy.platform and principal.platform_identity is not None:
        return
    if principal.key_kind is KeyKind.SECRET and principal.role in policy.secret_roles:
        return
    if principal.key_kind is KeyKind.PUBLISHABLE and policy.publishable:
        if policy.consumer_token is ConsumerToken.REQUIRED and principal.consumer_id is None:
            raise errors.Unauthenticated(CONSUMER_SESSION_REQUIRED, reason="SESSION_REQUIRED")
        return
    raise errors.PermissionDenied(requirement(policy))


class AuthorizationInterceptor(BehaviourInterceptor):
    """Checks the caller against ``PERMISSIONS[method]``."""

    def __init__(self, permissions: Mapping[str, MethodPolicy]) -> None:
        self._permissions = permissions

    async def before_call(
        self, request: Any, context: aio.ServicerContext[Any, Any], method: str
    ) -> None:
        check_permission(self._permissions.get(method), current_call_state().principal)

"""Authorization: the permission table decides, nothing else."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grpc import aio

from fanfare_grpc import errors
from fanfare_grpc.domain.access import KeyKind, Principal
from fanfare_grpc.interceptors.call_state import current_call_state
from fanfare_grpc.interceptors.wrapping import (
    BehaviourInterceptor,
)
from fanfare_grpc.permissions import ConsumerToken, MethodPolicy

NOT_ALLOWED = "not allowed to call this method"
CONSUMER_SESSION_REQUIRED = "consumer session required"


def check_permission(policy: MethodPolicy | None, principal: Principal | None) -> None:
    """Raise unless ``principal`` may call a method with ``policy``.

    Raises:
        PermissionDenied: Valid credential without the right (or unknown method).
        Unauthenticated: A publishable key without the consumer token the method needs.
    """
    if policy is not None and policy.public:
        return
    if policy is None or principal is None:
        raise errors.PermissionDenied(NOT_ALLOWED)
    if policy.platform and principal.platform_identity is not None:
        return
    if principal.key_kind is KeyKind.SECRET and principal.role in policy.secret_roles:
        return
    if principal.key_kind is KeyKind.PUBLISHABLE and policy.publishable:
        if policy.consumer_token is ConsumerToken.REQUIRED and principal.consumer_id is None:
            raise errors.Unauthenticated(CONSUMER_SESSION_REQUIRED)
        return
    raise errors.PermissionDenied(NOT_ALLOWED)


class AuthorizationInterceptor(BehaviourInterceptor):
    """Checks the caller against ``PERMISSIONS[method]``."""

    def __init__(self, permissions: Mapping[str, MethodPolicy]) -> None:
        self._permissions = permissions

    async def before_call(
        self, request: Any, context: aio.ServicerContext[Any, Any], method: str
    ) -> None:
        check_permission(self._permissions.get(method), current_call_state().principal)

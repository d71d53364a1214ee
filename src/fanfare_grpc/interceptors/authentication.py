"""Authentication: transport identity, API key, consumer token → one ``Principal``.

``authorization: Bearer <key>`` or ``x-publishable-key: pk_…``; on mTLS, an
allow-listed client certificate identity is a platform principal. With
``x-fanfare-session`` (and ``x-fanfare-device``), the consumer access token must be
valid for the key's organization and mode, and adds the consumer and session.

A key that fails verification always gets the same UNAUTHENTICATED message, whatever
was wrong with it. Header problems the caller can fix say what is expected instead:
a missing ``Bearer``, a repeated credential header (a proxy and this server could
otherwise disagree about who is calling), a device header that is not printable ASCII.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from grpc import aio

from fanfare_grpc import errors
from fanfare_grpc.authentication.consumer_tokens import ConsumerTokenVerifier
from fanfare_grpc.authentication.key_verifier import INVALID_CREDENTIALS, KeyVerifier
from fanfare_grpc.authentication.usage import KeyUsageRecorder
from fanfare_grpc.crypto.digests import KeyedDigester
from fanfare_grpc.domain.access import KeyKind, Principal
from fanfare_grpc.domain.session_service import checked_device_fingerprint
from fanfare_grpc.interceptors.call_state import current_call_state
from fanfare_grpc.interceptors.wrapping import (
    BehaviourInterceptor,
)
from fanfare_grpc.permissions import ConsumerToken, MethodPolicy

_BEARER = "bearer "
AUTHORIZATION_HEADER = "authorization"
PUBLISHABLE_KEY_HEADER = "x-publishable-key"
SESSION_HEADER = "x-fanfare-session"
DEVICE_HEADER = "x-fanfare-device"
# Headers that say who is calling: each may appear at most once.
IDENTITY_HEADERS = frozenset(
    {AUTHORIZATION_HEADER, PUBLISHABLE_KEY_HEADER, SESSION_HEADER, DEVICE_HEADER}
)
BEARER_FORMAT = "authorization header must be 'Bearer <api key>'"
_IDENTITY_PROPERTIES = ("x509_subject_alternative_name", "x509_common_name", "peer_spiffe_id")


def presented_api_key(metadata: Mapping[str, str]) -> str | None:
    """The API key in the request metadata, None if there is none.

    Raises:
        Unauthenticated: Malformed header, or two different keys presented.
    """
    authorization = metadata.get(AUTHORIZATION_HEADER)
    alias = metadata.get(PUBLISHABLE_KEY_HEADER)
    for value in (authorization, alias):
        if value is not None and not is_printable_ascii(value):
            # Before any stripping: str.strip() would remove U+00A0/U+0085 (latin-1
            # bytes 0xA0/0x85), so a padded key would pass here while a proxy
            # matching the exact header value saw another one.
            raise errors.Unauthenticated(INVALID_CREDENTIALS)
    key = None
    if authorization is not None:
        if not authorization[: len(_BEARER)].lower() == _BEARER:
            raise errors.Unauthenticated(BEARER_FORMAT)
        key = authorization[len(_BEARER) :].strip(" ")
    if alias is not None:
        alias = alias.strip(" ")
        if not alias.startswith("pk_") or (key is not None and key != alias):
            raise errors.Unauthenticated(INVALID_CREDENTIALS)
        key = alias
    return key


def is_printable_ascii(value: str) -> bool:
    """Only these characters are ever part of a credential."""
    return value.isascii() and value.isprintable()


def peer_identities(auth_context: Mapping[str, Any]) -> set[str]:
    """Identities (SAN URI/DNS, CN, SPIFFE id) of a verified client certificate."""
    identities: set[str] = set()
    for name in _IDENTITY_PROPERTIES:
        for value in auth_context.get(name, ()):
            identities.add(value.decode() if isinstance(value, bytes) else str(value))
    return identities


def peer_host(peer: str) -> str:
    """The client a gRPC peer string counts as (``ipv4:1.2.3.4:5678`` → ``1.2.3.4``).

    Limits count clients by this value, so an IPv6 peer counts as its /64 network:
    one subscriber's allocation holds 2^64 addresses, and counting each would give
    every attacker as many "clients". An IPv4-mapped IPv6 address is its IPv4 address.
    """
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return client_network(rest.rpartition(":")[0].strip("[]"))
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


def client_network(host: str) -> str:
    """An IPv4 address as it is; an IPv6 address as its /64 (or mapped IPv4) network."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def identity_metadata(pairs: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """The text metadata of a call by lower-cased name.

    Raises:
        Unauthenticated: A header of ``IDENTITY_HEADERS`` appears more than once.
    """
    metadata: dict[str, str] = {}
    for key, value in pairs:
        name = key.lower()
        if name in IDENTITY_HEADERS and name in metadata:
            raise errors.Unauthenticated(f"duplicate {name} header: send it once")
        if isinstance(value, str):
            metadata[name] = value
    return metadata


class AuthenticationInterceptor(BehaviourInterceptor):
    """Resolves the caller into ``CallState.principal``."""

    def __init__(
        self,
        permissions: Mapping[str, MethodPolicy],
        verifier: KeyVerifier,
        usage: KeyUsageRecorder,
        platform_principals: frozenset[str],
        wall_clock: Callable[[], dt.datetime],
        client_digester: KeyedDigester,
        consumer_tokens: ConsumerTokenVerifier,
    ) -> None:
        self._consumer_tokens = consumer_tokens
        self._client_digester = client_digester
        self._permissions = permissions
        self._verifier = verifier
        self._usage = usage
        self._platform_principals = platform_principals
        self._now = wall_clock

    async def before_call(
        self, request: Any, context: aio.ServicerContext[Any, Any], method: str
    ) -> None:
        await self._authenticate(method, context)

    async def _authenticate(self, method: str, context: aio.ServicerContext[Any, Any]) -> None:
        policy = self._permissions.get(method)
        if policy is not None and policy.public:
            return
        state = current_call_state()
        state.client_host = peer_host(context.peer() or "")
        platform_identity = self._platform_identity(context)
        metadata = identity_metadata(context.invocation_metadata() or ())
        device = metadata.get(DEVICE_HEADER)
        # An empty header is no device (the methods that need one say it is missing).
        state.device_fingerprint = checked_device_fingerprint(device if device else None)
        presented = presented_api_key(metadata)
        if presented is None:
            if platform_identity is None:
                raise errors.Unauthenticated(INVALID_CREDENTIALS)
            state.principal = Principal(platform_identity=platform_identity)
            return
        key = await self._verifier.verify(
            presented, self._client_digester.digest(state.client_host)
        )
        self._usage.note(key.organization_id, key.key_id, self._now())
        principal = Principal(
            organization_id=key.organization_id,
            mode=key.mode,
            key_kind=key.kind,
            role=key.role if key.kind is KeyKind.SECRET else None,
            key_id=key.key_id,
            platform_identity=platform_identity,
        )
        token = metadata.get(SESSION_HEADER)
        # Only methods that act as a consumer read the token: SDKs attach it to every
        # call, and a stale one must not break e.g. the RefreshSession that renews it.
        if (
            token is not None
            and policy is not None
            and policy.consumer_token is not (ConsumerToken.NOT_USED)
        ):
            identity = await self._consumer_tokens.verify(
                token.strip(" "), state.device_fingerprint, key.organization_id, key.mode
            )
            principal = dataclasses.replace(
                principal,
                consumer_id=identity.consumer_id,
                session_id=identity.session_id,
                device_hash=identity.device_hash,
            )
        state.principal = principal

    def _platform_identity(self, context: aio.ServicerContext[Any, Any]) -> str | None:
        if not self._platform_principals:
            return None
        # Only present when the client certificate verified against the client CA.
        identities = peer_identities(context.auth_context() or {})
        allowed = sorted(identities & self._platform_principals)
        return allowed[0] if allowed else None

"""Who is calling: modes, key kinds, roles and the resolved ``Principal``."""

from __future__ import annotations

import dataclasses
import enum


class Mode(enum.StrEnum):
    """Test and live data never mix; every key and resource belongs to one mode."""

    TEST = "test"
    LIVE = "live"


class KeyKind(enum.StrEnum):
    """Publishable keys ship in client apps; secret keys stay on servers."""

    PUBLISHABLE = "pk"
    SECRET = "sk"


class Role(enum.StrEnum):
    """Rights of a secret key."""

    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    READONLY = "readonly"
    # A merchant's checkout backend: redeems handoff tokens, checks sessions, no more.
    CHECKOUT = "checkout"


@dataclasses.dataclass(frozen=True)
class Principal:
    """The authenticated caller of one RPC.

    Attributes:
        organization_id: Tenant of the API key (None for a bare platform principal).
        mode: Mode of the API key.
        key_kind: Publishable or secret (None without an API key).
        role: Role of a secret key.
        key_id: The API key's id (never the key itself).
        platform_identity: Certificate identity of an allow-listed internal backend.
        consumer_id: Consumer of a verified consumer token (consumer issue).
        session_id: Session of that token.
        device_hash: Keyed digest of the verified device fingerprint of that session.
    """

    organization_id: str | None = None
    mode: Mode | None = None
    key_kind: KeyKind | None = None
    role: Role | None = None
    key_id: str | None = None
    platform_identity: str | None = None
    consumer_id: str | None = None
    session_id: str | None = None
    device_hash: str | None = dataclasses.field(default=None, repr=False)

    @property
    def actor_id(self) -> str:
        """What audit logs name as the actor: never a secret."""
        return self.consumer_id or self.key_id or self.platform_identity or "anonymous"

    def tenant(self) -> tuple[str, Mode]:
        """Organization and mode of the API key.

        Raises:
            LookupError: The caller did not authenticate with an API key.
        """
        if self.organization_id is None or self.mode is None:
            raise LookupError("no API key")
        return self.organization_id, self.mode

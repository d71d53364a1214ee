"""Organizations: the tenants every other resource belongs to."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Protocol

from fanfare_grpc.crypto.envelope import Envelope, WrappedDataKey
from fanfare_grpc.domain import ids
from fanfare_grpc.domain.access import KeyKind, Mode, Role
from fanfare_grpc.domain.api_key_service import IssuedKey, issue_api_key
from fanfare_grpc.domain.api_keys import ApiKey
from fanfare_grpc.domain.names import normalized_name

FIRST_KEY_NAME = "First admin key"


@dataclasses.dataclass(frozen=True)
class Organization:
    """A tenant."""

    organization_id: str
    name: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class NewOrganization:
    """A created organization and its first ADMIN keys (plaintext shown once)."""

    organization: Organization
    test_admin_key: IssuedKey
    live_admin_key: IssuedKey


class OrganizationStore(Protocol):
    """Persistence of organizations."""

    async def add(
        self, organization: Organization, data_key: WrappedDataKey, first_keys: Sequence[ApiKey]
    ) -> None:
        """Store a new organization with its data key and first keys, atomically."""
        ...

    async def get(self, organization_id: str) -> Organization | None:
        """The organization, or None."""
        ...


async def create_organization(
    store: OrganizationStore, envelope: Envelope, name: str, now: dt.datetime
) -> NewOrganization:
    """Create an organization, its data key and one ADMIN secret key per mode."""
    organization = Organization(
        organization_id=ids.new_id(ids.ORGANIZATION),
        name=normalized_name(name, "organization"),
        created_at=now,
    )
    data_key = envelope.new_data_key(organization.organization_id)
    test_key, live_key = [
        await issue_api_key(
            organization.organization_id, mode, KeyKind.SECRET, Role.ADMIN, FIRST_KEY_NAME, now=now
        )
        for mode in (Mode.TEST, Mode.LIVE)
    ]
    await store.add(organization, data_key, (test_key.api_key, live_key.api_key))
    return NewOrganization(organization, test_key, live_key)

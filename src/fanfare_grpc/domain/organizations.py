"""Organizations: the tenants every other resource belongs to."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Protocol

from fanfare_grpc import errors
from fanfare_grpc.domain import ids

MAX_NAME_LENGTH = 200


@dataclasses.dataclass(frozen=True)
class Organization:
    """A tenant."""

    organization_id: str
    name: str
    created_at: dt.datetime


class OrganizationStore(Protocol):
    """Persistence of organizations."""

    async def add(self, organization: Organization) -> None:
        """Store a new organization."""
        ...

    async def get(self, organization_id: str) -> Organization | None:
        """The organization, or None."""
        ...


def normalized_name(name: str) -> str:
    """Trimmed name, checked for length.

    Raises:
        InvalidArgument: Empty or longer than ``MAX_NAME_LENGTH`` characters.
    """
    trimmed = name.strip()
    if not trimmed or len(trimmed) > MAX_NAME_LENGTH:
        raise errors.InvalidArgument(
            "invalid organization name",
            (errors.FieldViolation("name", f"must be 1 to {MAX_NAME_LENGTH} characters"),),
        )
    return trimmed


async def create_organization(store: OrganizationStore, name: str) -> Organization:
    """Create and store a new organization."""
    organization = Organization(
        organization_id=ids.new_id(ids.ORGANIZATION),
        name=normalized_name(name),
        created_at=dt.datetime.now(dt.UTC),
    )
    await store.add(organization)
    return organization

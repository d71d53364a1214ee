"""Consumer sessions: one per login or guest visit, bound to one device."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum

from fanfare_grpc.domain.access import Mode

# Each refresh extends a session by the refresh token lifetime, up to this age.
MAX_SESSION_AGE = dt.timedelta(days=90)


class RevokeReason(enum.StrEnum):
    """Why a session ended early (kept for support and audit)."""

    REVOKED = "revoked"
    REFRESH_TOKEN_REUSED = "refresh_token_reused"
    CONSUMER_ERASED = "consumer_erased"


@dataclasses.dataclass(frozen=True)
class ConsumerSession:
    """A session as stored. ``device_hash`` is a keyed digest, never the fingerprint."""

    session_id: str
    organization_id: str
    mode: Mode
    consumer_id: str
    guest: bool
    device_hash: str
    created_at: dt.datetime
    expires_at: dt.datetime
    last_seen_at: dt.datetime
    revoked_at: dt.datetime | None = None
    revoke_reason: RevokeReason | None = None

    def live_at(self, now: dt.datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and now < self.expires_at

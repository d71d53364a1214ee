"""SQL persistence of passwordless login challenges (scoped by org and mode)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, update

from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.passwordless import MAX_ATTEMPTS_PER_CHALLENGE, LoginChallenge
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.models import LoginChallengeRow


def _challenge(row: LoginChallengeRow) -> LoginChallenge:
    return LoginChallenge(
        challenge_id=row.challenge_id,
        organization_id=row.org_id,
        mode=Mode(row.mode),
        email_index=row.email_index or "",
        email_ciphertext=row.email_ciphertext or b"",
        device_hash=row.device_hash,
        code_hash=row.code_hash,
        created_at=row.created_at,
        expires_at=row.expires_at,
        attempts=row.attempts,
        consumed_at=row.consumed_at,
        voided_at=row.voided_at,
    )


def _identity(organization_id: str, mode: Mode, challenge_id: str) -> tuple[Any, ...]:
    return (
        LoginChallengeRow.org_id == organization_id,
        LoginChallengeRow.mode == mode.value,
        LoginChallengeRow.challenge_id == challenge_id,
    )


def _open(now: dt.datetime) -> tuple[Any, ...]:
    return (
        LoginChallengeRow.consumed_at.is_(None),
        LoginChallengeRow.voided_at.is_(None),
        LoginChallengeRow.expires_at > now,
        LoginChallengeRow.attempts < MAX_ATTEMPTS_PER_CHALLENGE,
    )


class SqlChallengeStore:
    """``ChallengeStore`` on ``login_challenges``."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def replace_challenge(self, challenge: LoginChallenge, now: dt.datetime) -> None:
        async with self._database.transaction(challenge.organization_id) as session:
            await session.execute(
                update(LoginChallengeRow)
                .where(
                    LoginChallengeRow.org_id == challenge.organization_id,
                    LoginChallengeRow.mode == challenge.mode.value,
                    LoginChallengeRow.email_index == challenge.email_index,
                    # Only the same device's: a start from anywhere else must not
                    # void a code its owner is about to type.
                    LoginChallengeRow.device_hash == challenge.device_hash,
                    LoginChallengeRow.consumed_at.is_(None),
                    LoginChallengeRow.voided_at.is_(None),
                )
                # A voided challenge needs no copy of the address any more.
                .values(voided_at=now, email_ciphertext=None)
            )
            session.add(
                LoginChallengeRow(
                    org_id=challenge.organization_id,
                    challenge_id=challenge.challenge_id,
                    mode=challenge.mode.value,
                    email_index=challenge.email_index,
                    email_ciphertext=challenge.email_ciphertext,
                    device_hash=challenge.device_hash,
                    code_hash=challenge.code_hash,
                    created_at=challenge.created_at,
                    expires_at=challenge.expires_at,
                    attempts=0,
                )
            )

    async def get_challenge(
        self, organization_id: str, mode: Mode, challenge_id: str
    ) -> LoginChallenge | None:
        async with self._database.transaction(organization_id) as session:
            row = await session.scalar(
                select(LoginChallengeRow).where(*_identity(organization_id, mode, challenge_id))
            )
            return None if row is None else _challenge(row)

    async def open_challenge(
        self,
        organization_id: str,
        mode: Mode,
        email_index: str,
        device_hash: str,
        now: dt.datetime,
    ) -> LoginChallenge | None:
        async with self._database.transaction(organization_id) as session:
            row = await session.scalar(
                select(LoginChallengeRow)
                .where(
                    LoginChallengeRow.org_id == organization_id,
                    LoginChallengeRow.mode == mode.value,
                    LoginChallengeRow.email_index == email_index,
                    LoginChallengeRow.device_hash == device_hash,
                    *_open(now),
                )
                .order_by(LoginChallengeRow.created_at.desc())
                .limit(1)
            )
            return None if row is None else _challenge(row)

    async def count_attempt(
        self, organization_id: str, mode: Mode, challenge_id: str, now: dt.datetime
    ) -> bool:
        async with self._database.transaction(organization_id) as session:
            counted = await session.execute(
                update(LoginChallengeRow)
                .where(*_identity(organization_id, mode, challenge_id), *_open(now))
                .values(attempts=LoginChallengeRow.attempts + 1)
            )
            return bool(counted.rowcount == 1)  # type: ignore[attr-defined]

    async def consume(
        self, organization_id: str, mode: Mode, challenge_id: str, now: dt.datetime
    ) -> bool:
        async with self._database.transaction(organization_id) as session:
            spent = await session.execute(
                update(LoginChallengeRow)
                .where(
                    *_identity(organization_id, mode, challenge_id),
                    LoginChallengeRow.consumed_at.is_(None),
                    LoginChallengeRow.voided_at.is_(None),
                    LoginChallengeRow.expires_at > now,
                    # This attempt was counted already: <= rather than <.
                    LoginChallengeRow.attempts <= MAX_ATTEMPTS_PER_CHALLENGE,
                )
                .values(consumed_at=now, email_ciphertext=None)
            )
            return bool(spent.rowcount == 1)  # type: ignore[attr-defined]

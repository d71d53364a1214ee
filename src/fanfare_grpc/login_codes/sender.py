"""What the login flow asks of a code delivery channel, and the dev log channel.

Two real channels exist: SMTP (``smtp``), and a dev channel that writes the code to
the server log. The dev channel is only ever used for test-mode keys (the login
service enforces that): live consumers must receive their code by email.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Protocol

from fanfare_grpc.domain.access import Mode


@dataclasses.dataclass(frozen=True)
class LoginCodeMessage:
    """One code to deliver. ``email`` and ``code`` are secrets: never logged by repr."""

    organization_id: str
    mode: Mode
    challenge_id: str
    email: str = dataclasses.field(repr=False)
    code: str = dataclasses.field(repr=False)
    expires_at: dt.datetime


class CodeSender(Protocol):
    """A delivery channel for login codes."""

    @property
    def delivers_to_inbox(self) -> bool:
        """Whether the code reaches the consumer's inbox (False: dev log only)."""
        ...

    async def send_login_code(self, message: LoginCodeMessage) -> None:
        """Deliver ``message``.

        Raises:
            CodeDeliveryError: The channel refused or could not be reached.
        """
        ...


class CodeDeliveryError(Exception):
    """The code could not be delivered (message is safe to log: no code, no email)."""


class LogCodeSender:
    """Dev channel: writes the code to the server log (test mode only)."""

    delivers_to_inbox = False

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    async def send_login_code(self, message: LoginCodeMessage) -> None:
        self._logger.info(
            "login code (test mode, dev log delivery)",
            extra={
                "organization_id": message.organization_id,
                "challenge_id": message.challenge_id,
                "login_code": message.code,
            },
        )

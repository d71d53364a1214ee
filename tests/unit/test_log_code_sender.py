"""LogCodeSender: the dev channel logs the code, never the consumer's email."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from fanfare_grpc.domain.access import Mode
from fanfare_grpc.login_codes.sender import LogCodeSender, LoginCodeMessage

LOGGER = "tests.log_code_sender"


async def test_code_is_logged_without_the_email(caplog: pytest.LogCaptureFixture) -> None:
    message = LoginCodeMessage(
        organization_id="org_1",
        mode=Mode.TEST,
        challenge_id="chl_1",
        email="fan@example.test",
        code="493817",
        expires_at=dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.UTC),
    )
    sender = LogCodeSender(logging.getLogger(LOGGER))

    with caplog.at_level(logging.INFO, logger=LOGGER):
        await sender.send_login_code(message)

    assert sender.delivers_to_inbox is False
    [record] = caplog.records
    assert record.__dict__["login_code"] == "493817"
    assert record.__dict__["challenge_id"] == "chl_1"
    assert record.__dict__["organization_id"] == "org_1"
    # Everything a log formatter could print: the message and every extra field.
    assert "fan@example.test" not in record.getMessage()
    assert "fan@example.test" not in repr(record.__dict__)

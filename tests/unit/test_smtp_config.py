"""SmtpConfig.from_url: schemes, default ports, credentials, and secret-free errors."""

from __future__ import annotations

import datetime as dt
import email.utils
from pathlib import Path

import pytest

from fanfare_grpc.domain.access import Mode
from fanfare_grpc.login_codes.sender import LoginCodeMessage
from fanfare_grpc.login_codes.smtp import (
    SmtpConfig,
    SmtpSecurity,
    _compose,
    parse_sender_address,
)

SENDER = "login@fanfare.test"
PASSWORD = "hunter2-secret"


def parse(url: str, ca_file: Path | None = None) -> SmtpConfig:
    return SmtpConfig.from_url(url, SENDER, ca_file)


@pytest.mark.parametrize(
    ("url", "security", "port"),
    [
        ("smtp://mail.example.test", SmtpSecurity.STARTTLS, 587),
        ("smtps://mail.example.test", SmtpSecurity.IMPLICIT_TLS, 465),
        ("smtp+insecure://mail.example.test", SmtpSecurity.PLAINTEXT, 25),
        ("smtp://mail.example.test:2525", SmtpSecurity.STARTTLS, 2525),
        ("smtps://mail.example.test:4650/", SmtpSecurity.IMPLICIT_TLS, 4650),
        ("SMTPS://Mail.Example.Test", SmtpSecurity.IMPLICIT_TLS, 465),
    ],
)
def test_scheme_sets_security_and_default_port(url: str, security: SmtpSecurity, port: int) -> None:
    config = parse(url)
    assert config.host == "mail.example.test"
    assert config.security is security
    assert config.port == port
    assert config.sender_address == SENDER
    assert config.username is None
    assert config.password is None


def test_ipv6_host() -> None:
    config = parse("smtp://[::1]:2525")
    assert (config.host, config.port) == ("::1", 2525)


def test_credentials_are_percent_decoded() -> None:
    config = parse("smtps://us%40er:p%40ss%3Aw%2Frd%25@mail.example.test")
    assert config.username == "us@er"
    assert config.password == "p@ss:w/rd%"


def test_user_without_password() -> None:
    config = parse("smtp://mailer@mail.example.test")
    assert config.username == "mailer"
    assert config.password is None


def test_ca_file_is_kept(tmp_path: Path) -> None:
    assert parse("smtp://mail.example.test", tmp_path / "ca.pem").ca_file == tmp_path / "ca.pem"


def test_repr_hides_password() -> None:
    config = parse(f"smtp://mailer:{PASSWORD}@mail.example.test")
    assert PASSWORD not in repr(config)
    assert "mailer" in repr(config)


@pytest.mark.parametrize(
    "url",
    [
        f"http://mailer:{PASSWORD}@mail.example.test",
        f"smtp+tls://mailer:{PASSWORD}@mail.example.test",
        f"mailer:{PASSWORD}@mail.example.test",
        f"smtp://mailer:{PASSWORD}@",
        f"smtp://mailer:{PASSWORD}@mail.example.test:port",
        f"smtp://mailer:{PASSWORD}@mail.example.test:70000",
        f"smtp://mailer:{PASSWORD}@mail.example.test:0",
        f"smtp://mailer:{PASSWORD}@mail.example.test/path",
        f"smtp://mailer:{PASSWORD}@mail.example.test?tls=off",
        f"smtp://:{PASSWORD}@mail.example.test",
        f"smtp+insecure://mailer:{PASSWORD}@localhost",
        # An unencoded "/" cuts the authority inside the password: urllib would then
        # read "hunter2-" as the port and quote it in its own error message.
        "smtp://mailer:hunter2-/secret@mail.example.test",
    ],
)
def test_bad_url_error_never_quotes_the_password(url: str) -> None:
    with pytest.raises(ValueError) as failure:
        parse(url)
    assert "hunter2" not in str(failure.value)
    assert "secret" not in str(failure.value)
    # A chained cause would be printed with the traceback.
    assert failure.value.__cause__ is None


def test_insecure_scheme_rejects_a_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CA file"):
        parse("smtp+insecure://localhost:1025", tmp_path / "ca.pem")


@pytest.mark.parametrize("sender", ["", "login", "@fanfare.test", "login@", "a b@x.test"])
def test_bad_sender_address(sender: str) -> None:
    with pytest.raises(ValueError, match="sender address"):
        SmtpConfig.from_url("smtp://mail.example.test", sender, None)


def test_injected_header_in_sender_is_rejected() -> None:
    with pytest.raises(ValueError, match="sender address"):
        SmtpConfig.from_url("smtp://mail.example.test", "a@x.test\r\nBcc: b@y.test", None)


@pytest.mark.parametrize(
    ("sender", "address"),
    [
        ("Fanfare <no-reply@localhost>", "no-reply@localhost"),
        ('"Box, Office" <box@fanfare.test>', "box@fanfare.test"),
        ("login@fanfare.test", "login@fanfare.test"),
    ],
)
def test_sender_with_a_display_name_is_accepted(sender: str, address: str) -> None:
    # The documented default has a display name; the old check refused its space.
    assert parse_sender_address(sender) == address
    config = SmtpConfig.from_url("smtp://mail.example.test", sender, None)
    mail = _compose(
        LoginCodeMessage(
            organization_id="org_1",
            mode=Mode.LIVE,
            challenge_id="chl_1",
            email="shopper@example.test",
            code="123456",
            expires_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        ),
        config.sender_address,
    )
    assert email.utils.parseaddr(str(mail["From"]))[1] == address
    assert str(mail["Message-ID"]).endswith(f"@{address.rpartition('@')[2]}>")


@pytest.mark.parametrize(
    "sender",
    [
        "a@x.test, b@y.test",
        "Fanfare <a@x.test>\nBcc: b@y.test",
        "Fanfare <a@x.test>\rBcc: b@y.test",
        "Fanfare <no-reply>",
    ],
)
def test_several_addresses_or_line_breaks_are_refused(sender: str) -> None:
    with pytest.raises(ValueError, match="sender address"):
        parse_sender_address(sender)

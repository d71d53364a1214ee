"""SmtpCodeSender against a real aiosmtpd server on 127.0.0.1, with real certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import urllib.parse
from pathlib import Path

import pytest

from fanfare_grpc.domain.access import Mode
from fanfare_grpc.login_codes.sender import CodeDeliveryError, LoginCodeMessage
from fanfare_grpc.login_codes.smtp import SmtpCodeSender, SmtpConfig
from tests.smtp_server import (
    Pki,
    Received,
    RecordingHandler,
    accept_only,
    make_pki,
    server_tls,
    smtp_server,
)

SENDER = "login@fanfare.test"
RECIPIENT = "fan@example.test"
CODE = "493817"
USER = "mailer"
# Characters that must be percent-encoded in a URL, to exercise the decoding too.
PASSWORD = "s3cr3t:p@ss/word%"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def login_code() -> LoginCodeMessage:
    return LoginCodeMessage(
        organization_id="org_1",
        mode=Mode.LIVE,
        challenge_id="chl_1",
        email=RECIPIENT,
        code=CODE,
        expires_at=dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.UTC),
    )


def sender_for(url: str, ca_file: Path | None) -> SmtpCodeSender:
    return SmtpCodeSender(SmtpConfig.from_url(url, SENDER, ca_file), timeout_seconds=5.0)


def assert_login_code_email(received: Received) -> None:
    assert received.mail_from == SENDER
    assert received.rcpt_tos == [RECIPIENT]
    assert received.message["From"] == SENDER
    assert received.message["To"] == RECIPIENT
    assert received.message["Subject"] == "Your login code"
    body = received.message.get_content()
    assert CODE in body
    assert "2030-01-02 03:04 UTC" in body


async def test_starttls_delivers_over_tls(pki: Pki) -> None:
    handler = RecordingHandler()
    async with smtp_server(handler, starttls=server_tls(pki.server)) as port:
        await sender_for(f"smtp://127.0.0.1:{port}", pki.ca.bundle).send_login_code(login_code())

    [received] = handler.received
    assert_login_code_email(received)
    assert received.tls_version in ("TLSv1.2", "TLSv1.3")


async def test_implicit_tls_delivers(pki: Pki) -> None:
    handler = RecordingHandler()
    async with smtp_server(handler, implicit_tls=server_tls(pki.server)) as port:
        await sender_for(f"smtps://127.0.0.1:{port}", pki.ca.bundle).send_login_code(login_code())

    [received] = handler.received
    assert_login_code_email(received)
    assert received.tls_version in ("TLSv1.2", "TLSv1.3")


async def test_insecure_scheme_delivers_in_clear() -> None:
    handler = RecordingHandler()
    async with smtp_server(handler) as port:
        await sender_for(f"smtp+insecure://127.0.0.1:{port}", None).send_login_code(login_code())

    [received] = handler.received
    assert_login_code_email(received)
    assert received.tls_version is None


async def test_server_without_starttls_gets_nothing(pki: Pki) -> None:
    handler = RecordingHandler()
    async with smtp_server(handler) as port:
        sender = sender_for(f"smtp://127.0.0.1:{port}", pki.ca.bundle)
        with pytest.raises(CodeDeliveryError, match=r"^smtp delivery failed: SMTPException$"):
            await sender.send_login_code(login_code())

    assert handler.received == []


async def test_untrusted_certificate_is_refused(pki: Pki) -> None:
    handler = RecordingHandler()
    async with smtp_server(handler, starttls=server_tls(pki.server)) as port:
        # Only the system roots: the test CA is unknown to them.
        sender = sender_for(f"smtp://127.0.0.1:{port}", None)
        with pytest.raises(CodeDeliveryError, match="SSLCertVerificationError"):
            await sender.send_login_code(login_code())

    assert handler.received == []


async def test_certificate_for_another_host_is_refused(pki: Pki) -> None:
    handler = RecordingHandler()
    async with smtp_server(handler, starttls=server_tls(pki.wrong_name)) as port:
        sender = sender_for(f"smtp://127.0.0.1:{port}", pki.ca.bundle)
        with pytest.raises(CodeDeliveryError, match="SSLCertVerificationError"):
            await sender.send_login_code(login_code())

    assert handler.received == []


async def test_authenticates_after_starttls(pki: Pki) -> None:
    handler = RecordingHandler()
    credentials = f"{USER}:{urllib.parse.quote(PASSWORD, safe='')}"
    async with smtp_server(
        handler, starttls=server_tls(pki.server), authenticator=accept_only(USER, PASSWORD)
    ) as port:
        sender = sender_for(f"smtp://{credentials}@127.0.0.1:{port}", pki.ca.bundle)
        await sender.send_login_code(login_code())

    [received] = handler.received
    assert_login_code_email(received)
    assert received.authenticated is True
    assert received.tls_version in ("TLSv1.2", "TLSv1.3")


async def test_wrong_password_fails_without_quoting_it(pki: Pki) -> None:
    handler = RecordingHandler()
    wrong_password = "not-the-password"
    async with smtp_server(
        handler, starttls=server_tls(pki.server), authenticator=accept_only(USER, PASSWORD)
    ) as port:
        sender = sender_for(f"smtp://{USER}:{wrong_password}@127.0.0.1:{port}", pki.ca.bundle)
        with pytest.raises(CodeDeliveryError, match="SMTPAuthenticationError") as failure:
            await sender.send_login_code(login_code())

    assert handler.received == []
    text = str(failure.value)
    assert wrong_password not in text
    assert RECIPIENT not in text
    assert CODE not in text
    # No chained exception either: a logged traceback would print its text.
    assert failure.value.__cause__ is None
    assert failure.value.__suppress_context__


async def test_nothing_listening_fails(pki: Pki) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The port was free a moment ago and nothing listens on it now.
    sender = sender_for(f"smtp://127.0.0.1:{port}", pki.ca.bundle)
    with pytest.raises(CodeDeliveryError, match="SMTPConnectError"):
        await sender.send_login_code(login_code())


async def test_silent_server_times_out(pki: Pki) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def never_greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read()  # until the client gives up and closes

    server = await asyncio.start_server(never_greet, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        config = SmtpConfig.from_url(f"smtp://127.0.0.1:{port}", SENDER, pki.ca.bundle)
        sender = SmtpCodeSender(config, timeout_seconds=0.5)
        with pytest.raises(CodeDeliveryError, match="TimeoutError"):
            await sender.send_login_code(login_code())
    finally:
        server.close()
        await server.wait_closed()
        # On Python 3.11 wait_closed() does not wait for open connections; the
        # server's end would otherwise be garbage-collected unclosed (ResourceWarning).
        for writer in connections:
            writer.close()
            await writer.wait_closed()

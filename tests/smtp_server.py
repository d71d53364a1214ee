"""A real SMTP server (aiosmtpd) on 127.0.0.1 for tests, with real certificates."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.message
import email.policy
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.tls_certs import CertificateAuthority, Issued


@dataclasses.dataclass(frozen=True)
class Received:
    """One message as the server saw it, with how its session was protected."""

    mail_from: str | None
    rcpt_tos: list[str]
    message: email.message.EmailMessage
    tls_version: str | None
    authenticated: bool | None


class RecordingHandler:
    """aiosmtpd handler that keeps every accepted message."""

    def __init__(self) -> None:
        self.received: list[Received] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # The transport, not session.ssl, tells whether the bytes were encrypted:
        # aiosmtpd sets session.ssl only after STARTTLS, not for implicit TLS.
        assert server.transport is not None
        ssl_object = server.transport.get_extra_info("ssl_object")
        assert isinstance(envelope.content, bytes)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        self.received.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                message=parsed,
                tls_version=None if ssl_object is None else ssl_object.version(),
                authenticated=session.authenticated,
            )
        )
        return "250 OK"


def accept_only(user: str, password: str) -> Any:
    """An aiosmtpd authenticator that accepts one user name and password."""

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        accepted = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        # handled=False makes aiosmtpd send the 535 reply itself; the default (True)
        # means "the authenticator already replied", and the client would hang.
        return AuthResult(success=accepted, handled=False)

    return authenticate


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: Issued
    wrong_name: Issued


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and one for another name."""
    ca = CertificateAuthority(directory)
    return Pki(
        ca=ca,
        server=ca.issue("smtp", "localhost", dns=("localhost",), ips=("127.0.0.1",), server=True),
        wrong_name=ca.issue("elsewhere", "elsewhere.test", dns=("elsewhere.test",), server=True),
    )


def server_tls(issued: Issued) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert, issued.key)
    return context


@contextlib.asynccontextmanager
async def smtp_server(
    handler: RecordingHandler,
    *,
    starttls: ssl.SSLContext | None = None,
    implicit_tls: ssl.SSLContext | None = None,
    authenticator: Any = None,
) -> AsyncIterator[int]:
    """Serve SMTP on 127.0.0.1, on a free port (yielded), in the test's own loop.

    aiosmtpd's Controller runs its own loop in a thread and cannot use port 0 (it
    connects to the port to start up), so the SMTP protocol is served directly.
    """
    loop = asyncio.get_running_loop()
    sessions: list[SMTP] = []

    def protocol() -> SMTP:
        session = SMTP(
            handler,
            # A fixed name: by default SMTP() calls socket.getfqdn(), a DNS lookup.
            hostname="mx.fanfare.test",
            tls_context=starttls,
            require_starttls=starttls is not None,
            authenticator=authenticator,
            auth_required=authenticator is not None,
            loop=loop,
        )
        sessions.append(session)
        return session

    server = await loop.create_server(protocol, "127.0.0.1", 0, ssl=implicit_tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        # On Python 3.11 wait_closed() does not wait for open connections: close the
        # ones a failed client left behind before the test's loop goes away.
        for session in sessions:
            if session.transport is not None:
                session.transport.close()
        await asyncio.sleep(0)

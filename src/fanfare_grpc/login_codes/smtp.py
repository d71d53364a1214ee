"""SMTP delivery of login codes, configured from one ``smtp[s]://`` URL.

Three connection modes, chosen by the URL scheme:

* ``smtp://`` (default port 587): plain connection upgraded with STARTTLS. The upgrade
  is required: a server that does not offer STARTTLS fails delivery, because a login
  code sent in clear is as good as a stolen session.
* ``smtps://`` (default port 465): TLS from the first byte (implicit TLS).
* ``smtp+insecure://`` (default port 25): no TLS at all, for a local dev mail catcher.

Certificates are always verified (system roots plus an optional extra CA file) and the
server name is checked against the URL host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email.message
import email.utils
import enum
import ssl
import urllib.parse
from pathlib import Path

import aiosmtplib

from fanfare_grpc.login_codes.sender import CodeDeliveryError, LoginCodeMessage


class SmtpSecurity(enum.Enum):
    """How the connection to the SMTP server is protected."""

    STARTTLS = "smtp"
    IMPLICIT_TLS = "smtps"
    PLAINTEXT = "smtp+insecure"


_DEFAULT_PORTS = {
    SmtpSecurity.STARTTLS: 587,
    SmtpSecurity.IMPLICIT_TLS: 465,
    SmtpSecurity.PLAINTEXT: 25,
}


@dataclasses.dataclass(frozen=True)
class SmtpConfig:
    """Where and how to submit login code emails."""

    host: str
    port: int
    security: SmtpSecurity
    sender_address: str
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ca_file: Path | None = None

    @classmethod
    def from_url(cls, url: str, sender_address: str, ca_file: Path | None) -> SmtpConfig:
        """Parse ``scheme://[user[:password]@]host[:port]``.

        Args:
            url: The server URL; user and password are percent-decoded.
            sender_address: The From address of every login code email.
            ca_file: Extra CA certificates (PEM) trusted besides the system roots.

        Raises:
            ValueError: The URL or sender address is unusable. The message never
                quotes the URL, which may hold a password.
        """
        try:
            parts = urllib.parse.urlsplit(url)
            # A password holding an unencoded "/" or "?" ends the authority early,
            # and part of it lands where the port is parsed: the port error would
            # then quote the password, so its text is dropped below.
            explicit_port = parts.port
        except ValueError:
            raise ValueError("SMTP URL is malformed (is the password percent-encoded?)") from None
        try:
            security = SmtpSecurity(parts.scheme.lower())
        except ValueError:
            schemes = ", ".join(f"{mode.value}://" for mode in SmtpSecurity)
            raise ValueError(f"SMTP URL scheme must be one of {schemes}") from None
        if not parts.hostname:
            raise ValueError("SMTP URL has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("SMTP URL must not have a path, query or fragment")
        if explicit_port == 0:
            raise ValueError("SMTP URL port must be between 1 and 65535")
        username = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password is not None else None
        if password is not None and not username:
            raise ValueError("SMTP URL has a password but no user name")
        if security is SmtpSecurity.PLAINTEXT and username is not None:
            raise ValueError("smtp+insecure:// takes no credentials: they would travel in clear")
        if security is SmtpSecurity.PLAINTEXT and ca_file is not None:
            raise ValueError("smtp+insecure:// uses no TLS, so a CA file would be ignored")
        parse_sender_address(sender_address)
        return cls(
            host=parts.hostname,
            port=explicit_port or _DEFAULT_PORTS[security],
            security=security,
            sender_address=sender_address,
            username=username,
            password=password,
            ca_file=ca_file,
        )


def parse_sender_address(sender: str) -> str:
    """The bare ``name@domain`` of a From value such as ``Fanfare <no-reply@localhost>``.

    Raises:
        ValueError: It is not one address: line breaks (header injection), several
            addresses, or no ``name@domain``.
    """
    # Line breaks or control characters in the From value would let configuration inject
    # headers; anything without an "@" is a typo that every server would reject later.
    if any(not char.isprintable() for char in sender):
        raise ValueError("SMTP sender address must be one line of printable characters")
    addresses = email.utils.getaddresses([sender])
    if len(addresses) != 1:
        raise ValueError("SMTP sender address must be one address like name@domain")
    _, address = addresses[0]
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(char.isspace() for char in address):
        raise ValueError(
            "SMTP sender address must look like name@domain or Display Name <name@domain>"
        )
    return address


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    # create_default_context(cafile=...) would trust *only* that file; a private CA is
    # added to the system roots instead, so a relay with a public certificate still works.
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


class SmtpCodeSender:
    """Submits each login code as a plain-text email through one SMTP server."""

    delivers_to_inbox = True

    def __init__(self, config: SmtpConfig, timeout_seconds: float = 10.0) -> None:
        """Prepare the sender (reads ``config.ca_file`` now, so a bad file fails at start).

        Args:
            config: The server and sender address.
            timeout_seconds: Bound on one whole delivery, connection to QUIT.
        """
        self._config = config
        self._timeout_seconds = timeout_seconds
        self._tls = (
            None if config.security is SmtpSecurity.PLAINTEXT else _tls_context(config.ca_file)
        )

    async def send_login_code(self, message: LoginCodeMessage) -> None:
        """Deliver ``message`` to ``message.email``.

        Raises:
            CodeDeliveryError: Connection, TLS, authentication or the server's reply
                failed. The error names only the exception class: no address, code or
                password reaches the logs.
        """
        config = self._config
        try:
            # aiosmtplib's timeout bounds each step; this bounds the whole exchange, so
            # a server that answers slowly at every step cannot hold a login request.
            async with asyncio.timeout(self._timeout_seconds):
                await aiosmtplib.send(
                    _compose(message, config.sender_address),
                    hostname=config.host,
                    port=config.port,
                    username=config.username,
                    password=config.password,
                    timeout=self._timeout_seconds,
                    use_tls=config.security is SmtpSecurity.IMPLICIT_TLS,
                    # True, not None: None means "upgrade if offered" and would fall
                    # back to clear text when an attacker strips the STARTTLS offer.
                    start_tls=config.security is SmtpSecurity.STARTTLS,
                    tls_context=self._tls,
                )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            # ssl.SSLError is an OSError. The original exception is not chained: its
            # text can quote the recipient or the server's echo of the command.
            raise CodeDeliveryError(f"smtp delivery failed: {type(error).__name__}") from None


def _compose(message: LoginCodeMessage, sender_address: str) -> email.message.EmailMessage:
    expires_at = message.expires_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mail = email.message.EmailMessage()
    mail["Subject"] = "Your login code"
    mail["From"] = sender_address
    mail["To"] = message.email
    mail["Date"] = email.utils.format_datetime(dt.datetime.now(dt.UTC))
    # Without an explicit domain make_msgid calls socket.getfqdn(), a blocking DNS
    # lookup on the event loop.
    mail["Message-ID"] = email.utils.make_msgid(
        domain=parse_sender_address(sender_address).rpartition("@")[2]
    )
    mail.set_content(
        f"Your login code is {message.code}\n"
        "\n"
        f"It expires at {expires_at}. If you did not try to log in, ignore this email.\n"
    )
    return mail

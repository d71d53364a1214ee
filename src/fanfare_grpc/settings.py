"""One frozen settings object, read once from ``FANFARE_*`` environment variables.

The variable names and defaults are part of the operator contract (API.md); every
command line option of ``fanfare-grpc`` maps onto one of them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from fanfare_grpc.domain.queues import MAX_ADMISSION_RATE_PER_MINUTE
from fanfare_grpc.login_codes.smtp import SmtpConfig

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_LOG_LEVELS = {"debug", "info", "warning", "error", "critical"}


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the composition root needs to build the service.

    Attributes:
        listen: gRPC listen address ``host:port``; port 0 picks a free port.
        data_dir: Directory for the embedded defaults (SQLite file, dev master key).
        database_url: SQLAlchemy URL; ``None`` means SQLite in ``data_dir``.
        database_owner_url: URL of the tables' owner, for ``migrate`` and
            ``master-key rotate`` only; ``None`` means ``database_url``.
        redis_url: Redis URL; ``None`` means the in-process cache.
        redis_key_prefix: Prefix of every Redis key of this deployment.
        redis_allow_eviction: Start even when Redis may evict keys (its
            ``maxmemory-policy`` is not ``noeviction``, or cannot be read). Evicted queue
            entries are skipped, but evicted revocation markers and limits fail open.
        redis_ephemeral_ok: Start even when Redis does not persist its data (neither
            ``appendonly`` nor ``save`` snapshots, or it will not say): for development
            only, since a restart then loses every queue's entries.
        master_key: Base64 master key (secret; never printed).
        master_keys_old: Retired master key versions, still accepted for reading.
        tls_cert: Server certificate (PEM file); ``None`` serves plaintext.
        tls_key: Server private key (PEM file).
        tls_client_ca: CA bundle; when set, client certificates are required.
        platform_principals: Certificate identities treated as platform principals.
        allow_private_webhooks: Allow webhook targets on loopback/private networks.
        webhook_ca_file: Extra CA bundle trusted for webhook HTTPS.
        log_level: Minimum level of the JSON logs on stderr.
        shutdown_grace_seconds: How long in-flight calls may run after SIGTERM.
        health_check_interval_seconds: How often the database is probed for health.
        health_check_timeout_seconds: A probe slower than this counts as a failure.
        token_issuer: ``iss`` of the tokens this deployment issues.
        access_token_ttl_seconds: Lifetime of consumer access tokens.
        signing_key_rotation_seconds: A token signing key signs for this long.
        refresh_token_ttl_seconds: Lifetime of refresh tokens (each refresh extends the
            session by this much, up to 90 days).
        smtp_url: Where login codes are emailed (``smtp://`` requires STARTTLS,
            ``smtps://`` implicit TLS, ``smtp+insecure://`` plaintext for local dev);
            ``None``: test mode writes codes to the server log, live mode refuses logins.
        smtp_from: Sender address of login code emails.
        smtp_ca_file: Extra CA bundle trusted for the SMTP server's certificate.
        watch_streams_per_session: Open ``WatchPosition`` streams one consumer session
            may hold on one replica; more are refused with RESOURCE_EXHAUSTED.
        watch_streams_per_client: Open ``WatchPosition`` streams one client IP address
            may hold on one replica (all its sessions); room for shoppers behind NAT.
        public_streams_per_client: Open streams of the methods that need no credential
            (``Health/Watch``, server reflection) one client IP address may hold on
            one replica.
        max_concurrent_streams: HTTP/2 streams (calls in flight) one client connection
            may have open; further calls on that connection wait for a free one.
        max_admission_rate_per_organization: Admissions per minute that one
            organization's SCHEDULED, OPEN and PAUSED queues of one mode may add up to;
            beyond it, creating, opening or speeding up a queue is refused with
            RESOURCE_EXHAUSTED. The default is one queue at the per-queue maximum.
    """

    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path(".fanfare")
    database_url: str | None = None
    database_owner_url: str | None = None
    redis_url: str | None = None
    redis_key_prefix: str = "ff"
    redis_allow_eviction: bool = False
    redis_ephemeral_ok: bool = False
    master_key: str | None = dataclasses.field(default=None, repr=False)
    master_keys_old: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    platform_principals: tuple[str, ...] = ()
    allow_private_webhooks: bool = False
    webhook_ca_file: Path | None = None
    log_level: str = "info"
    shutdown_grace_seconds: float = 10.0
    health_check_interval_seconds: float = 2.0
    health_check_timeout_seconds: float = 2.0
    token_issuer: str = "fanfare-grpc"
    access_token_ttl_seconds: float = 15 * 60.0
    signing_key_rotation_seconds: float = 7 * 24 * 3600.0
    refresh_token_ttl_seconds: float = 30 * 24 * 3600.0
    smtp_url: str | None = dataclasses.field(default=None, repr=False)
    smtp_from: str = "Fanfare <no-reply@localhost>"
    smtp_ca_file: Path | None = None
    watch_streams_per_session: int = 4
    watch_streams_per_client: int = 64
    public_streams_per_client: int = 16
    max_concurrent_streams: int = 100
    max_admission_rate_per_organization: int = MAX_ADMISSION_RATE_PER_MINUTE

    @property
    def effective_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'fanfare.sqlite3').resolve()}"

    @property
    def effective_owner_database_url(self) -> str:
        """Where schema changes and key re-wrapping connect (the tables' owner)."""
        return self.database_owner_url or self.effective_database_url

    @property
    def database_setting(self) -> str:
        """The variable that chose ``effective_database_url`` (named in errors)."""
        return "FANFARE_DATABASE_URL" if self.database_url else "FANFARE_DATA_DIR"

    @property
    def owner_database_setting(self) -> str:
        """The variable that chose ``effective_owner_database_url`` (named in errors)."""
        return "FANFARE_DATABASE_OWNER_URL" if self.database_owner_url else self.database_setting

    @property
    def uses_data_dir(self) -> bool:
        """Whether the embedded SQLite file or the dev master key live in ``data_dir``."""
        return self.database_url is None or self.master_key is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``FANFARE_*`` variables (``os.environ`` by default).

        Raises:
            SettingsError: A value cannot be parsed; the message names the variable.
        """
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def path(name: str) -> Path | None:
            value = text(name)
            return Path(value) if value else None

        def flag(name: str, default: bool) -> bool:
            value = env.get(name)
            if value is None:
                return default
            lowered = value.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise SettingsError(f"{name} must be true or false")

        def seconds(name: str, default: float) -> float:
            value = text(name)
            if value is None:
                return default
            try:
                parsed = float(value)
            except ValueError:
                raise SettingsError(f"{name} must be a number of seconds") from None
            if parsed <= 0:
                raise SettingsError(f"{name} must be positive")
            return parsed

        def count(name: str, default: int) -> int:
            value = text(name)
            if value is None:
                return default
            try:
                parsed = int(value)
            except ValueError:
                raise SettingsError(f"{name} must be a whole number") from None
            if parsed <= 0:
                raise SettingsError(f"{name} must be positive")
            return parsed

        def items(name: str) -> tuple[str, ...]:
            return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())

        defaults = cls()
        listen = text("FANFARE_LISTEN") or defaults.listen
        _check_listen_address(listen)
        log_level = (text("FANFARE_LOG_LEVEL") or defaults.log_level).lower()
        if log_level not in _LOG_LEVELS:
            raise SettingsError(f"FANFARE_LOG_LEVEL must be one of {sorted(_LOG_LEVELS)}")
        settings = cls(
            listen=listen,
            data_dir=path("FANFARE_DATA_DIR") or defaults.data_dir,
            database_url=text("FANFARE_DATABASE_URL"),
            database_owner_url=text("FANFARE_DATABASE_OWNER_URL"),
            redis_url=text("FANFARE_REDIS_URL"),
            redis_key_prefix=text("FANFARE_REDIS_PREFIX") or defaults.redis_key_prefix,
            redis_allow_eviction=flag("FANFARE_REDIS_ALLOW_EVICTION", False),
            redis_ephemeral_ok=flag("FANFARE_REDIS_EPHEMERAL_OK", False),
            master_key=text("FANFARE_MASTER_KEY"),
            master_keys_old=items("FANFARE_MASTER_KEYS_OLD"),
            tls_cert=path("FANFARE_TLS_CERT"),
            tls_key=path("FANFARE_TLS_KEY"),
            tls_client_ca=path("FANFARE_TLS_CLIENT_CA"),
            platform_principals=items("FANFARE_PLATFORM_PRINCIPALS"),
            allow_private_webhooks=flag("FANFARE_ALLOW_PRIVATE_WEBHOOKS", False),
            webhook_ca_file=path("FANFARE_WEBHOOK_CA_FILE"),
            log_level=log_level,
            shutdown_grace_seconds=seconds(
                "FANFARE_SHUTDOWN_GRACE_SECONDS", defaults.shutdown_grace_seconds
            ),
            health_check_interval_seconds=seconds(
                "FANFARE_HEALTH_CHECK_INTERVAL_SECONDS", defaults.health_check_interval_seconds
            ),
            health_check_timeout_seconds=seconds(
                "FANFARE_HEALTH_CHECK_TIMEOUT_SECONDS", defaults.health_check_timeout_seconds
            ),
            token_issuer=text("FANFARE_TOKEN_ISSUER") or defaults.token_issuer,
            access_token_ttl_seconds=seconds(
                "FANFARE_ACCESS_TOKEN_TTL_SECONDS", defaults.access_token_ttl_seconds
            ),
            signing_key_rotation_seconds=seconds(
                "FANFARE_SIGNING_KEY_ROTATION_SECONDS", defaults.signing_key_rotation_seconds
            ),
            refresh_token_ttl_seconds=seconds(
                "FANFARE_REFRESH_TOKEN_TTL_SECONDS", defaults.refresh_token_ttl_seconds
            ),
            smtp_url=text("FANFARE_SMTP_URL"),
            smtp_from=text("FANFARE_SMTP_FROM") or defaults.smtp_from,
            smtp_ca_file=path("FANFARE_SMTP_CA_FILE"),
            watch_streams_per_session=count(
                "FANFARE_WATCH_STREAMS_PER_SESSION", defaults.watch_streams_per_session
            ),
            watch_streams_per_client=count(
                "FANFARE_WATCH_STREAMS_PER_CLIENT", defaults.watch_streams_per_client
            ),
            public_streams_per_client=count(
                "FANFARE_PUBLIC_STREAMS_PER_CLIENT", defaults.public_streams_per_client
            ),
            max_concurrent_streams=count(
                "FANFARE_MAX_CONCURRENT_STREAMS", defaults.max_concurrent_streams
            ),
            max_admission_rate_per_organization=count(
                "FANFARE_MAX_ADMISSION_RATE_PER_ORGANIZATION",
                defaults.max_admission_rate_per_organization,
            ),
        )
        if settings.smtp_url is not None:
            try:
                SmtpConfig.from_url(settings.smtp_url, settings.smtp_from, settings.smtp_ca_file)
            except ValueError as error:
                raise SettingsError(f"FANFARE_SMTP_URL/FANFARE_SMTP_FROM: {error}") from None
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise SettingsError("FANFARE_TLS_CERT and FANFARE_TLS_KEY must be set together")
        if settings.tls_client_ca is not None and settings.tls_cert is None:
            raise SettingsError("FANFARE_TLS_CLIENT_CA needs FANFARE_TLS_CERT and FANFARE_TLS_KEY")
        return settings


def _check_listen_address(listen: str) -> None:
    host, separator, port = listen.rpartition(":")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError("FANFARE_LISTEN must look like host:port (port 0 picks a free one)")

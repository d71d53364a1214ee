"""Composition root: builds every long-lived dependency from one ``Settings``.

Nothing else creates engines, clients, keys or validators; everything receives
them through constructors, so tests can build as many independent instances
(replicas) as they need.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import urllib.parse
from collections.abc import Callable, Mapping

import protovalidate
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from fanfare_grpc.authentication.consumer_tokens import ConsumerTokenVerifier
from fanfare_grpc.authentication.invalidation import (
    KeyInvalidationListener,
    PubSubKeyInvalidations,
)
from fanfare_grpc.authentication.key_verifier import KeyVerifier
from fanfare_grpc.authentication.session_revocations import SessionRevocations
from fanfare_grpc.authentication.usage import KeyUsageRecorder
from fanfare_grpc.cache.factory import open_cache
from fanfare_grpc.cache.protocols import Cache
from fanfare_grpc.crypto.canary import verify_master_keys
from fanfare_grpc.crypto.consumer_emails import ConsumerEmailVault
from fanfare_grpc.crypto.envelope import Envelope
from fanfare_grpc.crypto.jwt_tokens import LEEWAY
from fanfare_grpc.crypto.master_key_alarm import MasterKeyAlarm
from fanfare_grpc.crypto.master_keys import MasterKeySource
from fanfare_grpc.crypto.signing_keys import SigningKeyRing
from fanfare_grpc.domain.api_key_service import ApiKeyService
from fanfare_grpc.domain.events import RecordingEventPublisher
from fanfare_grpc.domain.passwordless import CodeSenders, PasswordlessLogin
from fanfare_grpc.domain.position_feed import PositionFeed
from fanfare_grpc.domain.queue_admission import QueueWorker, TickClock
from fanfare_grpc.domain.queue_config import QueueConfigService
from fanfare_grpc.domain.queue_entries import QueueEntries, QueueStateDropper
from fanfare_grpc.domain.queues import MAX_HANDOFF_TTL
from fanfare_grpc.domain.session_service import SessionService, TokenLifetimes
from fanfare_grpc.domain.stream_slots import StreamLimits, StreamSlots
from fanfare_grpc.login_codes.sender import LogCodeSender
from fanfare_grpc.login_codes.smtp import SmtpCodeSender, SmtpConfig
from fanfare_grpc.outages import DependencyOutages, RetriedFailureLog
from fanfare_grpc.permissions import PERMISSIONS, MethodPolicy
from fanfare_grpc.private_files import prepare_data_dir
from fanfare_grpc.settings import Settings
from fanfare_grpc.storage import migrate
from fanfare_grpc.storage.api_keys import SqlApiKeyStore
from fanfare_grpc.storage.consumer_sessions import SqlSessionStore
from fanfare_grpc.storage.consumers import SqlConsumerStore
from fanfare_grpc.storage.data_keys import SqlDataKeyStore
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.idempotency_commits import SqlIdempotencyClaims
from fanfare_grpc.storage.login_challenges import SqlChallengeStore
from fanfare_grpc.storage.master_key_canary import SqlCanaryStore
from fanfare_grpc.storage.organizations import SqlOrganizationStore
from fanfare_grpc.storage.queues import SqlQueueStore
from fanfare_grpc.storage.signing_keys import SqlSigningKeyStore

LOGGER_NAME = "fanfare_grpc"
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """The wall clock, timezone-aware."""
    return dt.datetime.now(dt.UTC)


class SchemaOutOfDate(RuntimeError):
    """The database is reachable but not migrated to this version's schema."""


class UnsharedCache(RuntimeError):
    """A shared database with the in-process cache: replicas would not see each other."""


class CacheUnreachable(RuntimeError):
    """Redis does not answer; the message says where (no credentials) and what to check."""


class CacheMayEvict(RuntimeError):
    """Redis may delete keys when full; the message says where and what to change."""


class CacheNotPersistent(RuntimeError):
    """Redis keeps nothing across a restart; the message says where and what to change."""


def redis_location(url: str) -> str:
    """``host:port/db`` of a Redis URL (a socket path for ``unix://``), no credentials."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    database = parts.path.lstrip("/") or "0"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}/{database}"


def may_create_dev_master_key(settings: Settings) -> bool:
    """Only for an embedded (SQLite) database: a shared one holds data under a key
    the operator must supply, and a fresh key would open none of it."""
    return make_url(settings.effective_database_url).get_backend_name() == "sqlite"


def shared_tick_clock(cache: Cache, clock: Clock) -> TickClock:
    """The cache's clock (one for every worker of the deployment), else ``clock``."""

    async def now() -> float:
        shared = await cache.shared_time()
        return clock().timestamp() if shared is None else shared

    return now


@dataclasses.dataclass
class Application:
    """The dependencies one process shares between its servicers and workers."""

    settings: Settings
    logger: logging.Logger
    clock: Clock
    # Every component reports backend failures here: one outage story per dependency.
    outages: DependencyOutages
    database: Database
    cache: Cache
    validator: protovalidate.Validator
    envelope: Envelope
    master_key_alarm: MasterKeyAlarm
    idempotency_claims: SqlIdempotencyClaims
    permissions: Mapping[str, MethodPolicy]
    organizations: SqlOrganizationStore
    api_keys: SqlApiKeyStore
    key_service: ApiKeyService
    key_verifier: KeyVerifier
    key_usage: KeyUsageRecorder
    key_invalidation_listener: KeyInvalidationListener
    key_invalidations: PubSubKeyInvalidations
    signing_keys: SigningKeyRing
    consumers: SqlConsumerStore
    sessions: SessionService
    session_revocations: SessionRevocations
    consumer_tokens: ConsumerTokenVerifier
    passwordless: PasswordlessLogin
    events: RecordingEventPublisher
    queue_config: QueueConfigService
    queue_entries: QueueEntries
    position_feed: PositionFeed
    queue_worker: QueueWorker
    # Set by the start checks, logged by log_startup_warnings once all of them passed.
    startup_warnings: list[tuple[str, dict[str, str]]] = dataclasses.field(default_factory=list)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        permissions: Mapping[str, MethodPolicy] = PERMISSIONS,
        clock: Clock = utc_now,
        cache: Cache | None = None,
        tick_clock: TickClock | None = None,
        outages: DependencyOutages | None = None,
    ) -> Application:
        """Create (but do not yet connect) every dependency.

        ``cache`` replaces the one the settings name (tests wrap it to inject faults).
        ``tick_clock`` numbers the admission ticks; by default the cache's shared clock
        (Redis ``TIME``), or ``clock`` with the in-process cache. ``outages`` replaces
        the process's outage tracker (tests give it a clock they move).

        Raises:
            MasterKeyError: The master key configuration is unusable.
        """
        logger = logging.getLogger(LOGGER_NAME)
        if settings.uses_data_dir:
            prepare_data_dir(settings.data_dir, logger)
        database = Database.from_url(
            settings.effective_database_url, setting=settings.database_setting
        )
        cache = cache or open_cache(settings)
        master_keys = MasterKeySource.configured(
            settings.master_key,
            settings.master_keys_old,
            settings.data_dir,
            may_create_dev_key=may_create_dev_master_key(settings),
        )
        master_key_alarm = MasterKeyAlarm(logger)
        api_keys = SqlApiKeyStore(database)
        verifier = KeyVerifier(api_keys, cache.counters, wall_clock=clock)
        outages = outages or DependencyOutages(logger)
        key_invalidations = PubSubKeyInvalidations(cache.pubsub, logger, verifier, outages=outages)
        envelope = Envelope(master_keys, SqlDataKeyStore(database), master_key_alarm)
        signing_keys = SigningKeyRing(
            SqlSigningKeyStore(database),
            # New signing keys are sealed under the newest master key, like data keys.
            master_keys.ring,
            rotation=dt.timedelta(seconds=settings.signing_key_rotation_seconds),
            # Keys sign access tokens and handoff tokens: published for the longer.
            token_lifetime=max(
                dt.timedelta(seconds=settings.access_token_ttl_seconds), MAX_HANDOFF_TTL
            ),
            logger=logger,
        )
        lifetimes = TokenLifetimes(
            access=dt.timedelta(seconds=settings.access_token_ttl_seconds),
            refresh=dt.timedelta(seconds=settings.refresh_token_ttl_seconds),
        )
        consumers = SqlConsumerStore(database)
        session_store = SqlSessionStore(database)
        session_revocations = SessionRevocations(
            cache.values,
            session_store,
            # A marker lasts as long as any access token of the session may.
            marker_lifetime=lifetimes.access + LEEWAY,
            logger=logger,
            outages=outages,
            server_id=cache.server_id,
        )
        consumer_tokens = ConsumerTokenVerifier(
            signing_keys,
            session_store,
            envelope,
            session_revocations,
            issuer=settings.token_issuer,
            clock=clock,
        )
        sessions = SessionService(
            consumers,
            session_store,
            signing_keys,
            envelope,
            session_revocations,
            issuer=settings.token_issuer,
            lifetimes=lifetimes,
            clock=clock,
            logger=logger,
        )
        smtp = (
            SmtpCodeSender(
                SmtpConfig.from_url(settings.smtp_url, settings.smtp_from, settings.smtp_ca_file)
            )
            if settings.smtp_url
            else None
        )
        events = RecordingEventPublisher(logger)
        queue_store = SqlQueueStore(database)
        queue_config = QueueConfigService(
            queue_store,
            QueueStateDropper(cache.queue_states),
            events,
            clock=clock,
            logger=logger,
            max_admission_rate_per_organization=settings.max_admission_rate_per_organization,
        )
        queue_entries = QueueEntries(
            queue_config,
            cache.queue_states,
            signing_keys,
            events,
            session_store,
            issuer=settings.token_issuer,
            clock=clock,
            logger=logger,
        )
        return cls(
            settings=settings,
            logger=logger,
            clock=clock,
            outages=outages,
            database=database,
            cache=cache,
            validator=protovalidate.Validator(),
            envelope=envelope,
            master_key_alarm=master_key_alarm,
            idempotency_claims=SqlIdempotencyClaims(database),
            permissions=permissions,
            organizations=SqlOrganizationStore(database),
            api_keys=api_keys,
            key_service=ApiKeyService(api_keys, key_invalidations, clock),
            key_verifier=verifier,
            key_usage=KeyUsageRecorder(api_keys, logger, outages=outages),
            key_invalidation_listener=KeyInvalidationListener(
                cache.pubsub, verifier, logger, outages=outages
            ),
            key_invalidations=key_invalidations,
            signing_keys=signing_keys,
            consumers=consumers,
            sessions=sessions,
            session_revocations=session_revocations,
            consumer_tokens=consumer_tokens,
            passwordless=PasswordlessLogin(
                SqlChallengeStore(database),
                consumers,
                sessions,
                ConsumerEmailVault(envelope),
                envelope,
                CodeSenders(smtp, LogCodeSender(logger)),
                cache.counters,
                clock=clock,
                logger=logger,
            ),
            events=events,
            queue_config=queue_config,
            queue_entries=queue_entries,
            position_feed=PositionFeed(
                queue_entries,
                StreamSlots(
                    StreamLimits(
                        per_session=settings.watch_streams_per_session,
                        per_client=settings.watch_streams_per_client,
                    ),
                    # Keys in-memory counts only: a change at master-key rotation is harmless.
                    envelope.deployment_ip_digester().digest,
                ),
                RetriedFailureLog(
                    logger,
                    "position refresh",
                    meanwhile="streams keep their last position",
                    outages=outages,
                ),
            ),
            queue_worker=QueueWorker(
                queue_store,
                queue_config,
                queue_entries,
                cache.values,
                clock=clock,
                tick_clock=tick_clock or shared_tick_clock(cache, clock),
                logger=logger,
            ),
        )

    async def check_schema(self) -> None:
        """Refuse a database that cannot be reached or is behind this version.

        Raises:
            DatabaseUnreachable: The message names the database and what to check.
            SchemaOutOfDate: ``fanfare-grpc migrate`` has not been run.
        """
        location = self.database.location
        out_of_date = SchemaOutOfDate(
            f"schema of {location} is not up to date: run `fanfare-grpc migrate`"
        )
        try:
            current = await migrate.current_revision(self.database)
        except (OperationalError, OSError, TimeoutError) as error:
            raise self.database.unreachable(error) from error
        except DBAPIError as error:
            # e.g. the service role does not exist yet: never migrated.
            raise out_of_date from error
        if current != migrate.head_revision():
            raise out_of_date

    async def check_master_keys(self) -> None:
        """Refuse master keys that do not open the deployment's canary (written if absent).

        Raises:
            MasterKeyMismatch: One line naming the configured and the stored key ids.
            DatabaseUnreachable: The database cannot be reached.
        """
        try:
            await verify_master_keys(self.envelope.ring, SqlCanaryStore(self.database, self.clock))
        except (OperationalError, OSError, TimeoutError) as error:
            raise self.database.unreachable(error) from error

    def log_startup_warnings(self) -> None:
        """Log what the start checks let through (overrides): once every check passed,
        so that a warning never precedes a refusal line."""
        for message, fields in self.startup_warnings:
            self.logger.warning(message, extra=fields)
        self.startup_warnings.clear()

    async def check_cache(self) -> None:
        """Refuse to start without the shared cache, or with one that may evict keys or
        keeps nothing across a restart.

        Queue state lives only in Redis and Lua scripts do not roll back; revocation
        markers and limits that vanish fail open. So Redis must refuse writes when
        full (``noeviction``), not delete keys, unless the operator says otherwise.

        Raises:
            CacheUnreachable: Redis did not answer a PING.
            CacheMayEvict: Its ``maxmemory-policy`` is not ``noeviction`` or cannot be
                read, and ``FANFARE_REDIS_ALLOW_EVICTION`` is not set.
            CacheNotPersistent: It keeps no AOF nor snapshots (or will not say), and
                ``FANFARE_REDIS_EPHEMERAL_OK`` is not set.
        """
        url = self.settings.redis_url
        if not url:
            return
        location = redis_location(url)
        if not await self.cache.ping():
            raise CacheUnreachable(
                f"cannot reach Redis at {location}: check "
                "that Redis is running there and FANFARE_REDIS_URL (host, port, password)"
            )
        policy = await self.cache.eviction_policy()
        if policy != "noeviction":
            self._allow_eviction(location, policy)
        await self._check_persistence(location)

    def _allow_eviction(self, location: str, policy: str | None) -> None:
        """Warn if the operator allows eviction; refuse otherwise.

        Raises:
            CacheMayEvict: ``FANFARE_REDIS_ALLOW_EVICTION`` is not set.
        """
        if self.settings.redis_allow_eviction:
            self.startup_warnings.append(
                (
                    "Redis may evict keys (FANFARE_REDIS_ALLOW_EVICTION is set)",
                    {"redis": location, "maxmemory_policy": policy or "unknown"},
                )
            )
            return
        if policy is None:
            raise CacheMayEvict(
                f"cannot read the maxmemory-policy of Redis at {location} (CONFIG GET and "
                "INFO refused): make sure it is noeviction, then set "
                "FANFARE_REDIS_ALLOW_EVICTION=true"
            )
        raise CacheMayEvict(
            f"Redis at {location} may evict keys (maxmemory-policy {policy}): set "
            "maxmemory-policy noeviction there, or FANFARE_REDIS_ALLOW_EVICTION=true "
            "to start anyway"
        )

    async def _check_persistence(self, location: str) -> None:
        """Refuse a Redis that keeps nothing across a restart, unless the operator
        says it is fine (development): queue entries live only there, and a restart
        without persistence loses them all (detected and reported, see
        ``queue_state``, but every consumer must enter again).

        Raises:
            CacheNotPersistent: Neither ``appendonly`` nor ``save`` snapshots, or it
                cannot be read, and ``FANFARE_REDIS_EPHEMERAL_OK`` is not set.
        """
        persistent = await self.cache.persistence()
        if persistent:
            return
        if self.settings.redis_ephemeral_ok:
            self.startup_warnings.append(
                (
                    (
                        "Redis does not persist its data (FANFARE_REDIS_EPHEMERAL_OK is "
                        "set): a restart loses every queue's entries"
                    ),
                    {
                        "redis": location,
                        "persistence": "unknown" if persistent is None else "none",
                    },
                )
            )
            return
        if persistent is None:
            raise CacheNotPersistent(
                f"cannot tell whether Redis at {location} persists its data (CONFIG GET "
                "refused and INFO shows no appendonly): make sure it keeps an AOF or "
                "snapshots, then set FANFARE_REDIS_EPHEMERAL_OK=true"
            )
        raise CacheNotPersistent(
            f"Redis at {location} does not persist its data (appendonly no, no save "
            "snapshots): a restart would lose every queue's entries; set appendonly yes "
            "(or save snapshots) there, or FANFARE_REDIS_EPHEMERAL_OK=true to start "
            "anyway (development)"
        )

    def check_shared_state(self) -> None:
        """Refuse the in-process cache when the database is shared by replicas.

        PostgreSQL means several replicas may run; revocations, idempotency records,
        limits and queue positions must then live in Redis.

        Raises:
            UnsharedCache: PostgreSQL without ``FANFARE_REDIS_URL``.
        """
        if self.database.dialect == "postgresql" and not self.cache.shared_between_processes:
            raise UnsharedCache(
                "FANFARE_DATABASE_URL is PostgreSQL (shared by replicas): "
                "set FANFARE_REDIS_URL too; the in-process cache cannot be shared"
            )

    async def close(self) -> None:
        """Release connections."""
        await self.cache.close()
        await self.database.dispose()

"""Passwordless email login: one-time codes, bound to a challenge and a device.

- ``start``: a 6-digit code from the OS CSPRNG, stored only as a bcrypt hash, valid
  10 minutes, single use. A challenge belongs to the device that asked: a new start
  from the same device for the same address voids that device's previous challenge
  (the "resend code" flow), a start from any other device never does. The work done
  does not depend on whether the address belongs to a consumer (a first login creates
  the consumer), so neither the answer nor its latency tells.
- ``verify``: attempts are counted before the code is checked (5 per challenge burn
  it; limits per (address, device) and per client across challenges), the code is
  compared by bcrypt (constant time), and spending the challenge is one conditional
  update, so two correct guesses racing cannot both log in.

No limit can be spent by a stranger on someone else's behalf: starts and guesses are
counted per (address, client) and per (address, device), never per address alone.
The one per-address count, the mailbox ceiling, only decides whether a code is
mailed; it never refuses a start or a verification.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hmac
import logging
import secrets
from collections.abc import Callable
from typing import Protocol

import bcrypt

from fanfare_grpc import errors
from fanfare_grpc.cache.protocols import CounterStore
from fanfare_grpc.crypto.consumer_emails import ConsumerEmailVault
from fanfare_grpc.crypto.envelope import Envelope
from fanfare_grpc.domain import ids
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.consumers import Consumer, normalize_email
from fanfare_grpc.domain.session_service import (
    ConsumerStore,
    IssuedSession,
    SessionService,
    device_fingerprint_required,
)
from fanfare_grpc.login_codes.sender import CodeDeliveryError, CodeSender, LoginCodeMessage

CHALLENGE_PREFIX = "chl_"
CODE_DIGITS = 6
CODE_LIFETIME = dt.timedelta(minutes=10)
MAX_ATTEMPTS_PER_CHALLENGE = 5
# bcrypt makes an offline guess of a leaked hash cost as much as 70 ms, for codes
# that only live 10 minutes.
CODE_BCRYPT_COST = 10
INVALID_CODE = "invalid or expired code"
NO_DELIVERY_CHANNEL = "email delivery is not configured for live mode"


@dataclasses.dataclass(frozen=True)
class Limit:
    """At most ``count`` events per ``window``."""

    count: int
    window: dt.timedelta


@dataclasses.dataclass(frozen=True)
class LoginLimits:
    """Attempt limits of the login flow (per organization and mode).

    A client is the keyed digest of the caller's IP, a device that of its
    ``x-fanfare-device``, an address its blind index.
    """

    starts_per_client: Limit = Limit(30, dt.timedelta(minutes=15))
    starts_per_email_and_client: Limit = Limit(5, dt.timedelta(minutes=15))
    starts_per_email_and_device: Limit = Limit(5, dt.timedelta(minutes=15))
    # Past it a start is still answered as usual, but its code is not mailed: an
    # address receives at most this many codes, however many clients ask. Devices
    # that logged in to the address before are not held by it (a stranger filling
    # the mailbox cannot keep its owner's phone from logging in again).
    mails_per_email: Limit = Limit(20, dt.timedelta(hours=1))
    # How long a device that logged in to an address stays recognized for it.
    recognized_device: dt.timedelta = dt.timedelta(days=90)
    verifications_per_client: Limit = Limit(50, dt.timedelta(minutes=15))
    verifications_per_email_and_device: Limit = Limit(10, dt.timedelta(minutes=15))


@dataclasses.dataclass(frozen=True)
class LoginChallenge:
    """A challenge as stored: never the code, only its hash."""

    challenge_id: str
    organization_id: str
    mode: Mode
    email_index: str = dataclasses.field(repr=False)
    email_ciphertext: bytes = dataclasses.field(repr=False)
    device_hash: str = dataclasses.field(repr=False)
    code_hash: str = dataclasses.field(repr=False)
    created_at: dt.datetime
    expires_at: dt.datetime
    attempts: int = 0
    consumed_at: dt.datetime | None = None
    voided_at: dt.datetime | None = None

    def open_at(self, now: dt.datetime) -> bool:
        """Can still be answered: unspent, not voided, not expired, not burnt."""
        return (
            self.consumed_at is None
            and self.voided_at is None
            and now < self.expires_at
            and self.attempts < MAX_ATTEMPTS_PER_CHALLENGE
        )


@dataclasses.dataclass(frozen=True)
class StartedLogin:
    """What ``StartPasswordlessLogin`` answers (identical for every address)."""

    challenge_id: str
    expires_at: dt.datetime


class ChallengeStore(Protocol):
    """Persistence of login challenges, scoped by organization and mode."""

    async def replace_challenge(self, challenge: LoginChallenge, now: dt.datetime) -> None:
        """Atomically void the open challenges of this address and device, store ``challenge``.

        Other devices' challenges for the address stay open.
        """
        ...

    async def open_challenge(
        self,
        organization_id: str,
        mode: Mode,
        email_index: str,
        device_hash: str,
        now: dt.datetime,
    ) -> LoginChallenge | None:
        """The newest open challenge of this address and device, if any."""
        ...

    async def get_challenge(
        self, organization_id: str, mode: Mode, challenge_id: str
    ) -> LoginChallenge | None:
        """One challenge."""
        ...

    async def count_attempt(
        self, organization_id: str, mode: Mode, challenge_id: str, now: dt.datetime
    ) -> bool:
        """Add one attempt if the challenge is still open; False if it is not."""
        ...

    async def consume(
        self, organization_id: str, mode: Mode, challenge_id: str, now: dt.datetime
    ) -> bool:
        """Spend an open challenge (and drop its copy of the address); False if not open."""
        ...


def new_code() -> str:
    """Six uniformly random digits from the OS CSPRNG."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def hash_code(code: str) -> str:
    """bcrypt hash (call off the event loop)."""
    return bcrypt.hashpw(code.encode(), bcrypt.gensalt(CODE_BCRYPT_COST)).decode()


def code_matches(code: str, hashed: str) -> bool:
    """Constant-time check (call off the event loop)."""
    return bcrypt.checkpw(code.encode(), hashed.encode())


class CodeSenders:
    """Picks the delivery channel: SMTP when configured, else the dev log (test mode)."""

    def __init__(self, smtp: CodeSender | None, dev_log: CodeSender) -> None:
        self._smtp = smtp
        self._dev_log = dev_log

    def for_mode(self, mode: Mode) -> CodeSender:
        """The channel for ``mode``.

        Raises:
            FailedPrecondition: Live mode without SMTP (codes never go to a log there).
        """
        if self._smtp is not None:
            return self._smtp
        if mode is Mode.TEST:
            return self._dev_log
        raise errors.FailedPrecondition(NO_DELIVERY_CHANNEL)


def _recognized_key(scope: str, email_index: str, device_hash: str) -> str:
    """Counter whose presence says: this device logged in to this address before."""
    return f"{scope}:recognized-device:{email_index}:{device_hash}"


class PasswordlessLogin:
    """``StartPasswordlessLogin`` and ``VerifyPasswordlessLogin``."""

    def __init__(
        self,
        challenges: ChallengeStore,
        consumers: ConsumerStore,
        sessions: SessionService,
        vault: ConsumerEmailVault,
        envelope: Envelope,
        senders: CodeSenders,
        counters: CounterStore,
        *,
        clock: Callable[[], dt.datetime],
        logger: logging.Logger,
        limits: LoginLimits = LoginLimits(),
    ) -> None:
        self._challenges = challenges
        self._consumers = consumers
        self._sessions = sessions
        self._vault = vault
        self._envelope = envelope
        self._senders = senders
        self._counters = counters
        self._clock = clock
        self._logger = logger
        self._limits = limits
        self._deliveries: set[asyncio.Task[None]] = set()

    async def start(
        self,
        organization_id: str,
        mode: Mode,
        email: str,
        device: str | None,
        client_host: str,
    ) -> StartedLogin:
        """Create a challenge and send its code (whether or not the address is known).

        Past the address's mailbox ceiling nothing is mailed and nothing is voided
        (unless the device logged in to this address before): the device gets its open
        challenge back (whose code it already has), or a challenge that no code
        answers. The answer looks the same either way.

        Args:
            client_host: The caller's IP (only its keyed digest keys the limits).

        Raises:
            InvalidArgument: No device fingerprint.
            ResourceExhausted: Too many codes from this client, or for this address from
                this client or this device.
            FailedPrecondition: No delivery channel for this mode.
        """
        fingerprint = device_fingerprint_required(device)
        sender = self._senders.for_mode(mode)
        normalized = normalize_email(email)
        email_index = await self._vault.blind_index(organization_id, normalized)
        device_hash = await self._sessions.device_hash(organization_id, fingerprint)
        scope = f"login:{organization_id}:{mode.value}"
        client = await self._client_digest(organization_id, client_host)
        limits = self._limits
        await self._within(f"{scope}:start:client:{client}", limits.starts_per_client)
        await self._within(
            f"{scope}:start:email-client:{email_index}:{client}",
            limits.starts_per_email_and_client,
        )
        await self._within(
            f"{scope}:start:email-device:{email_index}:{device_hash}",
            limits.starts_per_email_and_device,
        )
        now = self._clock()
        # Read for every start (known address or not): the same work either way.
        recognized = await self._counters.get(_recognized_key(scope, email_index, device_hash))
        # Counted only for starts that passed the limits above, so refused starts
        # cannot fill the mailbox.
        within_ceiling = await self._below(
            f"{scope}:mail:email:{email_index}", limits.mails_per_email
        )
        if not within_ceiling and not recognized:
            return await self._unmailed(organization_id, mode, email_index, device_hash, now)
        code = new_code()
        challenge_id = ids.new_id(CHALLENGE_PREFIX)
        challenge = LoginChallenge(
            challenge_id=challenge_id,
            organization_id=organization_id,
            mode=mode,
            email_index=email_index,
            email_ciphertext=await self._vault.seal_for_challenge(
                organization_id, challenge_id, normalized
            ),
            device_hash=device_hash,
            code_hash=await asyncio.to_thread(hash_code, code),
            created_at=now,
            expires_at=now + CODE_LIFETIME,
        )
        await self._challenges.replace_challenge(challenge, now)
        self._deliver(
            sender,
            LoginCodeMessage(
                organization_id=organization_id,
                mode=mode,
                challenge_id=challenge_id,
                email=normalized,
                code=code,
                expires_at=challenge.expires_at,
            ),
        )
        return StartedLogin(challenge_id, challenge.expires_at)

    async def _unmailed(
        self,
        organization_id: str,
        mode: Mode,
        email_index: str,
        device_hash: str,
        now: dt.datetime,
    ) -> StartedLogin:
        # The ceiling only bounds mails: refusing the start (or voiding anything)
        # would let whoever fills a mailbox lock its owner out. A "resend" from a
        # device holding a delivered code keeps that challenge, so the code still
        # works; a new challenge would have no code at all, so none is stored.
        self._logger.warning(
            "login code not mailed: the address reached its mailbox ceiling",
            extra={"organization_id": organization_id},
        )
        mine = await self._challenges.open_challenge(
            organization_id, mode, email_index, device_hash, now
        )
        if mine is not None:
            return StartedLogin(mine.challenge_id, mine.expires_at)
        return StartedLogin(ids.new_id(CHALLENGE_PREFIX), now + CODE_LIFETIME)

    def _deliver(self, sender: CodeSender, message: LoginCodeMessage) -> None:
        # Delivery runs after the answer: its latency (SMTP) and its failures must
        # not differ between addresses, nor hold the caller.
        task = asyncio.create_task(self._send(sender, message))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _send(self, sender: CodeSender, message: LoginCodeMessage) -> None:
        try:
            await sender.send_login_code(message)
        except CodeDeliveryError as error:
            self._logger.warning(
                "login code delivery failed",
                extra={"challenge_id": message.challenge_id, "error": str(error)},
            )
        except Exception:
            self._logger.exception(
                "login code delivery failed", extra={"challenge_id": message.challenge_id}
            )

    async def drain_deliveries(self) -> None:
        """Wait for codes still being sent (shutdown)."""
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)

    async def verify(
        self,
        organization_id: str,
        mode: Mode,
        challenge_id: str,
        code: str,
        device: str | None,
        client_host: str,
    ) -> IssuedSession:
        """Log in: find or create the consumer of the challenge's address, new session.

        Raises:
            Unauthenticated: Unknown, expired, spent, voided or burnt challenge, wrong
                code, or another device (one message for all).
            ResourceExhausted: Too many attempts from this client, or for this address
                from this device.
            InvalidArgument: No device fingerprint.
        """
        fingerprint = device_fingerprint_required(device)
        scope = f"login:{organization_id}:{mode.value}"
        client = await self._client_digest(organization_id, client_host)
        await self._within(f"{scope}:verify:client:{client}", self._limits.verifications_per_client)
        challenge = await self._challenges.get_challenge(organization_id, mode, challenge_id)
        now = self._clock()
        if challenge is None or not challenge.open_at(now):
            raise errors.Unauthenticated(INVALID_CODE)
        device_hash = await self._sessions.device_hash(organization_id, fingerprint)
        await self._within(
            f"{scope}:verify:email-device:{challenge.email_index}:{device_hash}",
            self._limits.verifications_per_email_and_device,
        )
        # Another device can never answer this challenge, so its guesses must not
        # burn it either.
        if not hmac.compare_digest(device_hash, challenge.device_hash):
            raise errors.Unauthenticated(INVALID_CODE)
        # Counted before the comparison, so concurrent guesses cannot exceed 5.
        if not await self._challenges.count_attempt(organization_id, mode, challenge_id, now):
            raise errors.Unauthenticated(INVALID_CODE)
        if not await asyncio.to_thread(code_matches, code, challenge.code_hash):
            raise errors.Unauthenticated(INVALID_CODE)
        if not await self._challenges.consume(organization_id, mode, challenge_id, now):
            raise errors.Unauthenticated(INVALID_CODE)
        # Only the mailbox's owner could answer: this device is theirs from now on.
        await self._counters.increment(
            _recognized_key(scope, challenge.email_index, device_hash),
            1,
            self._limits.recognized_device.total_seconds(),
        )
        email = await self._vault.open_from_challenge(
            organization_id, challenge_id, challenge.email_ciphertext
        )
        consumer = await self._consumers.find_consumer_by_email(
            organization_id, mode, challenge.email_index
        )
        if consumer is None:
            consumer_id = ids.new_id(ids.CONSUMER)
            consumer = await self._consumers.add_consumer(
                Consumer(consumer_id, organization_id, mode, guest=False, created_at=now),
                await self._vault.seal(organization_id, consumer_id, email),
            )
        return await self._sessions.start_session(consumer, device_hash)

    async def _client_digest(self, organization_id: str, client_host: str) -> str:
        digester = await self._envelope.ip_digester(organization_id)
        return digester.digest(client_host)

    async def _within(self, key: str, limit: Limit) -> None:
        counted = await self._counters.increment(key, 1, limit.window.total_seconds())
        if counted.value > limit.count:
            raise errors.ResourceExhausted(
                "too many attempts, try again later",
                retry_after_seconds=max(1, int(counted.ttl_seconds + 0.999)),
            )

    async def _below(self, key: str, limit: Limit) -> bool:
        """Count one event; False once the window holds more than ``limit.count``."""
        counted = await self._counters.increment(key, 1, limit.window.total_seconds())
        return counted.value <= limit.count

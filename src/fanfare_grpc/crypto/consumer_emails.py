"""Consumer email addresses at rest: per-consumer keys under the organization's key.

The address is sealed under a random per-consumer key; that key is sealed under the
organization's data key (envelope), bound to the consumer's row. Destroying the
per-consumer key (erasure) makes every copy of the ciphertext unreadable.
"""

from __future__ import annotations

from fanfare_grpc.crypto import aead
from fanfare_grpc.crypto.envelope import Envelope, value_context
from fanfare_grpc.crypto.master_keys import new_key_material
from fanfare_grpc.domain.consumers import SealedEmail

_CONSUMER_KEY_VERSION = 1


class ConsumerEmailVault:
    """Seals, opens and indexes consumer email addresses of any organization."""

    def __init__(self, envelope: Envelope) -> None:
        self._envelope = envelope

    async def blind_index(self, organization_id: str, normalized_email: str) -> str:
        """Keyed HMAC of the address: equal addresses give equal indexes, per organization."""
        digester = await self._envelope.email_index_digester(organization_id)
        return digester.digest(normalized_email)

    async def seal(
        self, organization_id: str, consumer_id: str, normalized_email: str
    ) -> SealedEmail:
        """A fresh per-consumer key, the address sealed under it, and its index."""
        consumer_key = new_key_material()
        wrapped_key = await self._envelope.encrypt(
            organization_id, "consumers", "wrapped_key", consumer_id, consumer_key
        )
        ciphertext = aead.seal(
            consumer_key,
            _CONSUMER_KEY_VERSION,
            normalized_email.encode(),
            value_context(organization_id, "consumers", "email", consumer_id),
        )
        return SealedEmail(
            wrapped_key, ciphertext, await self.blind_index(organization_id, normalized_email)
        )

    async def open(self, organization_id: str, consumer_id: str, sealed: SealedEmail) -> str:
        """The address.

        Raises:
            aead.DecryptionError: Tampered, or sealed for another consumer/organization.
        """
        consumer_key = await self._envelope.decrypt(
            organization_id, "consumers", "wrapped_key", consumer_id, sealed.wrapped_key
        )
        return aead.open_sealed(
            consumer_key,
            sealed.ciphertext,
            value_context(organization_id, "consumers", "email", consumer_id),
        ).decode()

    async def seal_for_challenge(
        self, organization_id: str, challenge_id: str, normalized_email: str
    ) -> bytes:
        """The address kept with a pending login challenge (cleared once it is used)."""
        return await self._envelope.encrypt(
            organization_id, "login_challenges", "email", challenge_id, normalized_email.encode()
        )

    async def open_from_challenge(
        self, organization_id: str, challenge_id: str, ciphertext: bytes
    ) -> str:
        """The address of a pending challenge."""
        plaintext = await self._envelope.decrypt(
            organization_id, "login_challenges", "email", challenge_id, ciphertext
        )
        return plaintext.decode()

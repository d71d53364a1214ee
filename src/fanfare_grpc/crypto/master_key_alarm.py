"""Run-time evidence of a wrong master key: a data key this process cannot unwrap.

The canary is checked at start, but a key wrapped by another version can still turn
up later (a replica with a stray key wrote it, or a version was retired too early).
Calls that need it cannot succeed here, so the process reports NOT_SERVING (load
balancers prefer replicas that can) and says once which key ids are involved.
"""

from __future__ import annotations

import logging

from fanfare_grpc.crypto.master_keys import MasterKeyRing


class MasterKeyAlarm:
    """Raised once a stored key cannot be opened; stays raised until the process restarts.

    Restarting with the right keys is the remedy (keys from the environment only
    change with a restart), so the status does not flap back on its own.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._reported: set[str] = set()

    @property
    def raised(self) -> bool:
        """Whether some stored key could not be opened."""
        return bool(self._reported)

    def report(self, wrapped_by: str, ring: MasterKeyRing) -> None:
        """A key wrapped by ``wrapped_by`` did not open with ``ring`` (logged once per id)."""
        if wrapped_by in self._reported:
            return
        self._reported.add(wrapped_by)
        # Ids only: they are fingerprints, never key material.
        self._logger.error(
            f"master key {ring.current.key_id} does not open data wrapped by {wrapped_by}: "
            "NOT_SERVING",
            extra={
                "wrapped_by": wrapped_by,
                "master_key_id": ring.current.key_id,
                "retired_master_key_ids": [key.key_id for key in ring.retired],
            },
        )

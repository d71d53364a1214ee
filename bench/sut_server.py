"""The system under test: ``fanfare-grpc serve --no-worker`` plus the bench echo RPCs.

The echoes are registered through the same embedding hooks the product offers
(``extra_handlers`` + permission entries), so they pass through every interceptor
exactly like product RPCs: ``Echo`` takes a secret key of any role, ``ConsumerEcho``
a publishable key with a consumer access token (like ``GetPosition``).

Run: ``python -m bench.sut_server`` (settings from ``FANFARE_*`` variables).
"""

from __future__ import annotations

import asyncio

from bench.echo import CONSUMER_ECHO_METHOD, ECHO_METHOD, echo_handler
from fanfare_grpc.logs import configure_logging
from fanfare_grpc.permissions import ANY_ROLE, PERMISSIONS, ConsumerToken, MethodPolicy
from fanfare_grpc.server import serve
from fanfare_grpc.settings import Settings


def main() -> int:
    """Entry point."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    permissions = {
        **PERMISSIONS,
        ECHO_METHOD: MethodPolicy(secret_roles=ANY_ROLE),
        CONSUMER_ECHO_METHOD: MethodPolicy(publishable=True, consumer_token=ConsumerToken.REQUIRED),
    }
    asyncio.run(
        serve(settings, run_worker=False, extra_handlers=[echo_handler()], permissions=permissions)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The system under test: ``fanfare-grpc serve --no-worker`` plus the bench echo RPC.

The echo is registered through the same embedding hooks the product offers
(``extra_handlers`` + a permission entry: secret key, any role), so it passes
through every interceptor exactly like a product RPC.

Run: ``python -m bench.sut_server`` (settings from ``FANFARE_*`` variables).
"""

from __future__ import annotations

import asyncio

from bench.echo import ECHO_METHOD, echo_handler
from fanfare_grpc.logs import configure_logging
from fanfare_grpc.permissions import ANY_ROLE, PERMISSIONS, MethodPolicy
from fanfare_grpc.server import serve
from fanfare_grpc.settings import Settings


def main() -> int:
    """Entry point."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    permissions = {**PERMISSIONS, ECHO_METHOD: MethodPolicy(secret_roles=ANY_ROLE)}
    asyncio.run(
        serve(settings, run_worker=False, extra_handlers=[echo_handler()], permissions=permissions)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

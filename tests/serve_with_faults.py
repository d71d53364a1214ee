"""Run the real ``serve`` entry point with the fault service added (shutdown tests).

Usage: python -m tests.serve_with_faults   (settings from FANFARE_* variables)
"""

from __future__ import annotations

import asyncio

from fanfare_grpc.logs import configure_logging
from fanfare_grpc.server import serve
from fanfare_grpc.settings import Settings
from tests.fault_service import FAULT_PERMISSIONS, fault_handler


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings, extra_handlers=[fault_handler()], permissions=FAULT_PERMISSIONS))


if __name__ == "__main__":
    main()

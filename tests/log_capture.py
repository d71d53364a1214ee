"""Capturing what the server logs, and putting the test runner's logging back after."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import TypeVar

from fanfare_grpc.app import LOGGER_NAME
from fanfare_grpc.logs import QUIET_LOGGERS, configure_logging

HandlerT = TypeVar("HandlerT", bound=logging.Handler)


@contextlib.contextmanager
def service_log_handler(handler: HandlerT, level: int = logging.DEBUG) -> Iterator[HandlerT]:
    """``handler`` on the service logger, which logs at ``level`` meanwhile."""
    logger = logging.getLogger(LOGGER_NAME)
    previous = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@contextlib.contextmanager
def server_log(level: str) -> Iterator[io.StringIO]:
    """The server's own log configuration (``FANFARE_LOG_LEVEL=level``) into a buffer."""
    stream = io.StringIO()
    root = logging.getLogger()
    previous_handlers, previous_level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    configure_logging(level, stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in previous_handlers:
            root.addHandler(handler)
        root.setLevel(previous_level)
        for name, quiet_level in quiet.items():
            logging.getLogger(name).setLevel(quiet_level)

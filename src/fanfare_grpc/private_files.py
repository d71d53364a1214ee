"""Files and directories at rest that only this service's user may read.

The data dir holds the dev master key and the SQLite database (bcrypt hashes of
login codes and API keys, sealed data keys): nobody else on the host has any
business listing or reading it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path

PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# SQLite gives its journal, WAL and shared-memory files the database file's mode,
# but files left by an older version keep theirs: tighten them too.
SQLITE_COMPANION_SUFFIXES = ("-journal", "-wal", "-shm")


def _permission_bits(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class DataDirError(RuntimeError):
    """The data dir cannot be created or used; the message names it and what to check."""


def make_private_directory(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; an existing one is left as is."""
    path.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)


def prepare_data_dir(path: Path, logger: logging.Logger) -> None:
    """Create the data dir 0700, or tighten an existing one that others may enter.

    Tightening (rather than only warning) is safe: the data dir is this service's
    own by definition. When we do not own it, chmod fails and we warn instead.

    Raises:
        DataDirError: It cannot be created or written (a file is in the way, no
            permission, a read-only mount).
    """
    try:
        make_private_directory(path)
        mode = _permission_bits(path)
    except OSError as error:
        raise DataDirError(
            f"cannot create the data dir {path} ({error.strerror or error}): check "
            "FANFARE_DATA_DIR and that this user may create and write it"
        ) from error
    try:
        # Writing, not os.access: that answers yes to root on a read-only mount, and
        # the SQLite file or the dev master key would then fail with a traceback.
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        raise DataDirError(
            f"cannot write in the data dir {path} ({error.strerror or error}): check "
            "FANFARE_DATA_DIR and that this user may create and write it"
        ) from error
    if not mode & 0o077:
        return
    try:
        path.chmod(mode & PRIVATE_DIRECTORY_MODE)
    except PermissionError:
        logger.warning(
            f"data dir {path} is accessible to other users ({mode:04o}) and cannot be "
            "tightened: make it 0700",
            extra={"data_dir": str(path)},
        )
        return
    logger.warning(
        f"data dir {path} was accessible to other users: mode {mode:04o} tightened to "
        f"{mode & PRIVATE_DIRECTORY_MODE:04o}",
        extra={"data_dir": str(path)},
    )


def _tighten_file(path: Path) -> None:
    try:
        mode = _permission_bits(path)
    except FileNotFoundError:
        return
    if mode & 0o077:
        # Not ours to change (another user's file we may write): SQLite works on.
        with contextlib.suppress(PermissionError):
            path.chmod(mode & PRIVATE_FILE_MODE)


def prepare_sqlite_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would use 0644).

    SQLite then creates the ``-wal`` and ``-shm`` files with the same mode. Files
    made by an older version are tightened.
    """
    make_private_directory(path.parent)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        _tighten_file(path)
    else:
        os.close(descriptor)
    for suffix in SQLITE_COMPANION_SUFFIXES:
        _tighten_file(path.with_name(path.name + suffix))

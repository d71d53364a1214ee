"""Versioned master keys: the current one wraps data keys, retired ones still unwrap.

Production passes keys in ``FANFARE_MASTER_KEY`` (and ``FANFARE_MASTER_KEYS_OLD``).
The embedded dev mode keeps them in ``<data dir>/master_keys`` (mode 0600), one
base64 key per line, newest last; ``fanfare-grpc master-key rotate`` appends one.
Running processes notice the append through ``MasterKeySource`` (one ``stat`` before
each use), so they wrap new keys under the new version at once.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
from collections.abc import Callable, Hashable
from pathlib import Path

from fanfare_grpc.crypto.aead import KEY_LENGTH
from fanfare_grpc.private_files import make_private_directory

DEV_KEY_FILE = "master_keys"


class MasterKeyError(ValueError):
    """A master key is missing or malformed (the message never contains key material)."""


@dataclasses.dataclass(frozen=True)
class MasterKey:
    """One master key version; ``key_id`` is a non-secret fingerprint of it."""

    key_id: str
    material: bytes = dataclasses.field(repr=False)

    @classmethod
    def from_material(cls, material: bytes) -> MasterKey:
        if len(material) != KEY_LENGTH:
            raise MasterKeyError("a master key must be 32 bytes (base64-encoded)")
        fingerprint = hashlib.sha256(b"fanfare-master-key-id\x00" + material).hexdigest()[:16]
        return cls(key_id="mk_" + fingerprint, material=material)

    @classmethod
    def from_base64(cls, encoded: str, source: str) -> MasterKey:
        try:
            material = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError(f"{source} is not valid base64") from None
        try:
            return cls.from_material(material)
        except MasterKeyError:
            raise MasterKeyError(f"{source} must be base64 of 32 bytes") from None


@dataclasses.dataclass(frozen=True)
class MasterKeyRing:
    """The current master key and every retired version still accepted."""

    current: MasterKey
    retired: tuple[MasterKey, ...] = ()

    def find(self, key_id: str) -> MasterKey | None:
        """The key with this id, current or retired."""
        for key in (self.current, *self.retired):
            if key.key_id == key_id:
                return key
        return None


def new_key_material() -> bytes:
    """32 random bytes from the OS CSPRNG."""
    return os.urandom(KEY_LENGTH)


# A fresh key opens nothing a shared database already holds: with PostgreSQL the
# operator must say which key the deployment uses.
DEV_KEY_REFUSED = (
    "FANFARE_MASTER_KEY is required with PostgreSQL (no dev key is generated for a shared database)"
)


def load_master_key_ring(
    master_key: str | None,
    master_keys_old: tuple[str, ...],
    data_dir: Path,
    *,
    may_create_dev_key: bool = True,
) -> MasterKeyRing:
    """The ring from the environment, or from (and created in) the dev data dir.

    ``may_create_dev_key`` is False with PostgreSQL: a dev key file that exists is
    still read (``master-key rotate`` appends to it), but none is generated.

    Raises:
        MasterKeyError: Malformed keys, or no key where none may be generated.
    """
    if master_key:
        current = MasterKey.from_base64(master_key, "FANFARE_MASTER_KEY")
        retired = tuple(
            MasterKey.from_base64(value, "FANFARE_MASTER_KEYS_OLD") for value in master_keys_old
        )
        return MasterKeyRing(current, retired)
    keys = _read_or_create_dev_keys(data_dir / DEV_KEY_FILE, may_create=may_create_dev_key)
    extra = tuple(
        MasterKey.from_base64(value, "FANFARE_MASTER_KEYS_OLD") for value in master_keys_old
    )
    return MasterKeyRing(keys[-1], tuple(reversed(keys[:-1])) + extra)


def master_key_ring_version(master_key: str | None, data_dir: Path) -> Hashable:
    """What changes when ``load_master_key_ring`` would answer differently (cheap).

    Keys from the environment only change with a restart; the dev key file changes
    under running processes when ``master-key rotate`` appends a version (an append
    always changes its size, any rewrite its modification time).
    """
    if master_key:
        return None
    try:
        info = (data_dir / DEV_KEY_FILE).stat()
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


class MasterKeySource:
    """The master keys as the deployment has them now, re-read when they change.

    A process that kept the ring it started with would go on wrapping new data keys
    and signing keys under a version ``master-key rotate`` has since replaced, and
    retiring that version would make them unreadable. Every ``ring()`` call compares
    the cheap version first and reloads only when it changed.
    """

    def __init__(self, load: Callable[[], MasterKeyRing], version: Callable[[], Hashable]) -> None:
        self._load = load
        self._version_of = version
        # Version first, then keys: a change in between only causes one extra reload.
        self._version = version()
        self._ring = load()

    @classmethod
    def fixed(cls, ring: MasterKeyRing) -> MasterKeySource:
        """A ring that never changes (tests, one-off commands)."""
        return cls(lambda: ring, lambda: None)

    @classmethod
    def configured(
        cls,
        master_key: str | None,
        master_keys_old: tuple[str, ...],
        data_dir: Path,
        *,
        may_create_dev_key: bool = True,
    ) -> MasterKeySource:
        """The keys of the environment, or of the dev data dir (followed as it changes).

        Raises:
            MasterKeyError: The configuration is unusable.
        """
        return cls(
            lambda: load_master_key_ring(
                master_key, master_keys_old, data_dir, may_create_dev_key=may_create_dev_key
            ),
            lambda: master_key_ring_version(master_key, data_dir),
        )

    def ring(self) -> MasterKeyRing:
        """The newest ring: re-read first if its version changed since the last read."""
        version = self._version_of()
        if version != self._version:
            try:
                self._ring = self._load()
            except MasterKeyError:
                # Caught mid-write or mangled: the keys we have still open everything
                # they opened before; the next call reads the file again.
                return self._ring
            self._version = version
        return self._ring


def add_dev_master_key(data_dir: Path, *, may_create_dev_key: bool = True) -> MasterKey:
    """Append a new dev master key version (it becomes current).

    Raises:
        MasterKeyError: No key file yet and ``may_create_dev_key`` is False.
    """
    path = data_dir / DEV_KEY_FILE
    _read_or_create_dev_keys(path, may_create=may_create_dev_key)
    key = MasterKey.from_material(new_key_material())
    with path.open("a", encoding="ascii") as file:
        file.write(base64.b64encode(key.material).decode() + "\n")
    return key


def _read_or_create_dev_keys(path: Path, *, may_create: bool) -> list[MasterKey]:
    if not path.exists() and not may_create:
        raise MasterKeyError(DEV_KEY_REFUSED)
    if not path.exists():
        make_private_directory(path.parent)
        # O_EXCL + 0600: never readable by others, never clobbered by a second process.
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "w", encoding="ascii") as file:
                file.write(base64.b64encode(new_key_material()).decode() + "\n")
    lines = [line for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
    if not lines:
        raise MasterKeyError(f"{path} holds no master key")
    return [MasterKey.from_base64(line, str(path)) for line in lines]

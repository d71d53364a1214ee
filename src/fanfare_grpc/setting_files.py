"""Load the PEM files the settings name, at start, so a bad one is a one-line error.

Left to gRPC or ``ssl``, a missing file, a directory or a file of garbage surfaces
late (first TLS handshake, first email) or as a long traceback.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from fanfare_grpc.settings import Settings, SettingsError

_PUBLIC_DER = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_setting_files(settings: Settings, *, tls: bool) -> None:
    """Read and parse every certificate, CA bundle and key file the settings name.

    Args:
        settings: The parsed settings.
        tls: Also the server's certificate, key and client CA (only ``serve`` uses them).

    Raises:
        SettingsError: A file cannot be read, is a directory, holds no PEM of the kind
            expected, or the key does not belong to the certificate. The message names
            the variable and the path, never the file's contents.
    """
    if tls and settings.tls_cert is not None and settings.tls_key is not None:
        [leaf, *_] = _certificates("FANFARE_TLS_CERT", settings.tls_cert)
        key = _private_key("FANFARE_TLS_KEY", settings.tls_key)
        if leaf.public_key().public_bytes(*_PUBLIC_DER) != key.public_key().public_bytes(
            *_PUBLIC_DER
        ):
            raise SettingsError(
                f"FANFARE_TLS_KEY: {settings.tls_key} is not the key of the certificate "
                f"in {settings.tls_cert} (FANFARE_TLS_CERT)"
            )
    if tls and settings.tls_client_ca is not None:
        _certificates("FANFARE_TLS_CLIENT_CA", settings.tls_client_ca)
    if settings.webhook_ca_file is not None:
        _certificates("FANFARE_WEBHOOK_CA_FILE", settings.webhook_ca_file)
    if settings.smtp_ca_file is not None:
        _certificates("FANFARE_SMTP_CA_FILE", settings.smtp_ca_file)


def _read(variable: str, path: Path) -> bytes:
    if path.is_dir():
        raise SettingsError(f"{variable}: {path} is a directory, not a PEM file")
    try:
        return path.read_bytes()
    except OSError as error:
        raise SettingsError(
            f"{variable}: cannot read {path} ({error.strerror or type(error).__name__})"
        ) from None


def _certificates(variable: str, path: Path) -> list[x509.Certificate]:
    data = _read(variable, path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise SettingsError(f"{variable}: {path} holds no PEM certificate")
    return certificates


def _private_key(variable: str, path: Path) -> PrivateKeyTypes:
    data = _read(variable, path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # TypeError: encrypted with a passphrase, which gRPC cannot use either.
        raise SettingsError(f"{variable}: {path} holds no unencrypted PEM private key") from None

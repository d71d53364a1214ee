"""Settings come from FANFARE_* variables with documented defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from fanfare_grpc.settings import Settings, SettingsError


def test_defaults_are_the_embedded_dev_setup() -> None:
    settings = Settings.from_env({})
    assert settings.listen == "127.0.0.1:50051"
    assert settings.data_dir == Path(".fanfare")
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.tls_cert is None
    assert not settings.allow_private_webhooks
    assert not settings.redis_allow_eviction
    assert settings.log_level == "info"
    assert settings.effective_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.effective_database_url.endswith(".fanfare/fanfare.sqlite3")


def test_every_documented_variable_is_read(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "FANFARE_LISTEN": "0.0.0.0:0",
            "FANFARE_DATA_DIR": str(tmp_path),
            "FANFARE_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:5432/db",
            "FANFARE_REDIS_URL": "redis://127.0.0.1:6379/0",
            "FANFARE_MASTER_KEY": "bWFzdGVy",
            "FANFARE_MASTER_KEYS_OLD": "b2xkMQ==, b2xkMg==",
            "FANFARE_TLS_CERT": "/certs/server.pem",
            "FANFARE_TLS_KEY": "/certs/server.key",
            "FANFARE_TLS_CLIENT_CA": "/certs/ca.pem",
            "FANFARE_PLATFORM_PRINCIPALS": "spiffe://fanfare/admin, ops.internal",
            "FANFARE_ALLOW_PRIVATE_WEBHOOKS": "true",
            "FANFARE_REDIS_ALLOW_EVICTION": "yes",
            "FANFARE_WEBHOOK_CA_FILE": "/certs/webhooks.pem",
            "FANFARE_LOG_LEVEL": "DEBUG",
        }
    )
    assert settings.listen == "0.0.0.0:0"
    assert settings.data_dir == tmp_path
    assert settings.effective_database_url == "postgresql+psycopg://u@127.0.0.1:5432/db"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.master_key == "bWFzdGVy"
    assert settings.master_keys_old == ("b2xkMQ==", "b2xkMg==")
    assert settings.tls_cert == Path("/certs/server.pem")
    assert settings.tls_client_ca == Path("/certs/ca.pem")
    assert settings.platform_principals == ("spiffe://fanfare/admin", "ops.internal")
    assert settings.allow_private_webhooks
    assert settings.redis_allow_eviction
    assert settings.webhook_ca_file == Path("/certs/webhooks.pem")
    assert settings.log_level == "debug"


def test_secrets_never_appear_in_repr() -> None:
    settings = Settings.from_env(
        {
            "FANFARE_MASTER_KEY": "c2VjcmV0LW1hc3Rlcg==",
            "FANFARE_MASTER_KEYS_OLD": "b2xkLXNlY3JldA==",
        }
    )
    assert "c2VjcmV0LW1hc3Rlcg==" not in repr(settings)
    assert "b2xkLXNlY3JldA==" not in repr(settings)


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.listen = "0.0.0.0:1"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"FANFARE_LISTEN": "localhost"}, "FANFARE_LISTEN"),
        ({"FANFARE_LISTEN": ":50051"}, "FANFARE_LISTEN"),
        ({"FANFARE_LISTEN": "127.0.0.1:99999"}, "FANFARE_LISTEN"),
        ({"FANFARE_ALLOW_PRIVATE_WEBHOOKS": "maybe"}, "FANFARE_ALLOW_PRIVATE_WEBHOOKS"),
        ({"FANFARE_REDIS_ALLOW_EVICTION": "maybe"}, "FANFARE_REDIS_ALLOW_EVICTION"),
        ({"FANFARE_LOG_LEVEL": "loud"}, "FANFARE_LOG_LEVEL"),
        ({"FANFARE_TLS_CERT": "/c.pem"}, "FANFARE_TLS_KEY"),
        ({"FANFARE_TLS_CLIENT_CA": "/ca.pem"}, "FANFARE_TLS_CLIENT_CA"),
        ({"FANFARE_SHUTDOWN_GRACE_SECONDS": "soon"}, "FANFARE_SHUTDOWN_GRACE_SECONDS"),
        ({"FANFARE_SHUTDOWN_GRACE_SECONDS": "-1"}, "FANFARE_SHUTDOWN_GRACE_SECONDS"),
    ],
)
def test_malformed_values_name_their_variable(environment: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(environment)


def test_admission_rate_ceiling_per_organization() -> None:
    # Default: one queue at the per-queue maximum (the protos' 1,000,000 per minute).
    assert Settings.from_env({}).max_admission_rate_per_organization == 1_000_000
    settings = Settings.from_env({"FANFARE_MAX_ADMISSION_RATE_PER_ORGANIZATION": " 2500000 "})
    assert settings.max_admission_rate_per_organization == 2_500_000
    for value in ("0", "-1", "1.5", "lots"):
        with pytest.raises(SettingsError, match="FANFARE_MAX_ADMISSION_RATE_PER_ORGANIZATION"):
            Settings.from_env({"FANFARE_MAX_ADMISSION_RATE_PER_ORGANIZATION": value})

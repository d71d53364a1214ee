"""Settings come from FANFARE_* variables with documented defaults."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from fanfare_grpc.settings import (
    NUMERIC_BOUNDS,
    SETTING_VARIABLES,
    Settings,
    SettingsError,
    configuration_warnings,
    redact_url,
)


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


_OUT_OF_BOUNDS = [
    ("FANFARE_HEALTH_CHECK_INTERVAL_SECONDS", "nan", "from 0.1 to 3600"),
    ("FANFARE_HEALTH_CHECK_INTERVAL_SECONDS", "1e-9", "from 0.1 to 3600"),
    ("FANFARE_HEALTH_CHECK_INTERVAL_SECONDS", "inf", "from 0.1 to 3600"),
    ("FANFARE_HEALTH_CHECK_TIMEOUT_SECONDS", "-inf", "from 0.1 to 600"),
    ("FANFARE_HEALTH_CHECK_TIMEOUT_SECONDS", "NaN", "from 0.1 to 600"),
    ("FANFARE_SHUTDOWN_GRACE_SECONDS", "1e300", "from 0.1 to 3600"),
    ("FANFARE_SHUTDOWN_GRACE_SECONDS", "-5", "from 0.1 to 3600"),
    ("FANFARE_ACCESS_TOKEN_TTL_SECONDS", "1e12", "from 10 to 86400"),
    ("FANFARE_ACCESS_TOKEN_TTL_SECONDS", "inf", "from 10 to 86400"),
    ("FANFARE_ACCESS_TOKEN_TTL_SECONDS", "1e-9", "from 10 to 86400"),
    ("FANFARE_REFRESH_TOKEN_TTL_SECONDS", "inf", "from 60 to 7776000"),
    ("FANFARE_REFRESH_TOKEN_TTL_SECONDS", "1e12", "from 60 to 7776000"),
    ("FANFARE_SIGNING_KEY_ROTATION_SECONDS", "nan", "from 3600 to 31536000"),
    ("FANFARE_SIGNING_KEY_ROTATION_SECONDS", "0.001", "from 3600 to 31536000"),
    ("FANFARE_WATCH_STREAMS_PER_SESSION", "1e300", "from 1 to 10000"),
    ("FANFARE_WATCH_STREAMS_PER_SESSION", "100000", "from 1 to 10000"),
    ("FANFARE_WATCH_STREAMS_PER_CLIENT", "10" * 20, "from 1 to 1000000"),
    ("FANFARE_PUBLIC_STREAMS_PER_CLIENT", "nan", "from 1 to 1000000"),
    ("FANFARE_MAX_CONCURRENT_STREAMS", "-1", "from 1 to 100000"),
    ("FANFARE_MAX_CONCURRENT_STREAMS", "2147483648", "from 1 to 100000"),
    ("FANFARE_MAX_ADMISSION_RATE_PER_ORGANIZATION", "1e300", "from 1 to 1000000000"),
]


@pytest.mark.parametrize(("variable", "value", "bound"), _OUT_OF_BOUNDS)
def test_non_finite_and_absurd_numbers_are_refused_naming_variable_and_bound(
    variable: str, value: str, bound: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: value})
    assert variable in str(raised.value)
    assert bound in str(raised.value)


def test_every_numeric_setting_has_finite_bounds_around_its_default() -> None:
    defaults = Settings()
    numeric = [
        field
        for field in dataclasses.fields(Settings)
        if type(getattr(defaults, field.name)) in (int, float)
    ]
    assert {SETTING_VARIABLES[field.name] for field in numeric} == set(NUMERIC_BOUNDS)
    for field in numeric:
        variable = SETTING_VARIABLES[field.name]
        low, high = NUMERIC_BOUNDS[variable]
        assert math.isfinite(low) and math.isfinite(high) and 0 < low <= high
        assert low <= getattr(defaults, field.name) <= high
        # Both ends are allowed.
        for edge in (low, high):
            text = str(int(edge)) if float(edge).is_integer() else str(edge)
            assert getattr(Settings.from_env({variable: text}), field.name) == edge


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"FANFARE_DATABASE_URL": "not a url"}, "FANFARE_DATABASE_URL"),
        ({"FANFARE_DATABASE_URL": "mysql://u:s3cretpw@h/db"}, "FANFARE_DATABASE_URL"),
        ({"FANFARE_DATABASE_URL": "postgresql://u:s3cretpw@h:0/db"}, "FANFARE_DATABASE_URL"),
        ({"FANFARE_DATABASE_URL": "postgresql://u:s3cretpw@h/"}, "FANFARE_DATABASE_URL"),
        (
            {"FANFARE_DATABASE_OWNER_URL": "postgresql://u:s3cretpw@h:port/db"},
            "FANFARE_DATABASE_OWNER_URL",
        ),
        ({"FANFARE_REDIS_URL": "http://:s3cretpw@h:6379/0"}, "FANFARE_REDIS_URL"),
        ({"FANFARE_REDIS_URL": "redis://:s3cretpw@h:x/0"}, "FANFARE_REDIS_URL"),
        ({"FANFARE_REDIS_URL": "redis://:s3cretpw@h:6379/db"}, "FANFARE_REDIS_URL"),
        ({"FANFARE_REDIS_URL": "redis://:s3cretpw@/0"}, "FANFARE_REDIS_URL"),
        ({"FANFARE_REDIS_PREFIX": "ff{tenant}"}, "FANFARE_REDIS_PREFIX"),
        ({"FANFARE_REDIS_PREFIX": "ff}"}, "FANFARE_REDIS_PREFIX"),
        ({"FANFARE_REDIS_PREFIX": "f f"}, "FANFARE_REDIS_PREFIX"),
        ({"FANFARE_TOKEN_ISSUER": "fanfare\x00"}, "FANFARE_TOKEN_ISSUER"),
        ({"FANFARE_TOKEN_ISSUER": "i" * 257}, "FANFARE_TOKEN_ISSUER"),
        ({"FANFARE_SMTP_FROM": "no-reply"}, "FANFARE_SMTP_FROM"),
        ({"FANFARE_SMTP_FROM": "a@x.test, b@y.test"}, "FANFARE_SMTP_FROM"),
        ({"FANFARE_SMTP_FROM": "Fanfare <a@x.test>\r\nBcc: b@y.test"}, "FANFARE_SMTP_FROM"),
    ],
)
def test_urls_prefix_and_sender_are_parsed_at_start(
    environment: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named) as raised:
        Settings.from_env(environment)
    assert "s3cretpw" not in str(raised.value)


def test_valid_urls_and_prefix_are_accepted() -> None:
    settings = Settings.from_env(
        {
            "FANFARE_DATABASE_URL": "postgresql://u:p%40ss@db.internal/fanfare",
            "FANFARE_DATABASE_OWNER_URL": "sqlite:////var/lib/fanfare/x.sqlite3",
            "FANFARE_REDIS_URL": "rediss://:pw@cache.internal:6380/3",
            "FANFARE_REDIS_PREFIX": "ff:prod-eu_1",
        }
    )
    assert settings.redis_key_prefix == "ff:prod-eu_1"
    assert Settings.from_env({"FANFARE_REDIS_URL": "unix:///run/redis.sock"}).redis_url


def test_the_documented_default_sender_is_accepted() -> None:
    # The README's default, "Fanfare <no-reply@localhost>", used to fail this check.
    settings = Settings.from_env({"FANFARE_SMTP_URL": "smtp://mail.example.test"})
    assert settings.smtp_from == "Fanfare <no-reply@localhost>"
    named = Settings.from_env(
        {
            "FANFARE_SMTP_URL": "smtps://mail.example.test",
            "FANFARE_SMTP_FROM": '"Box, Office" <b@x.test>',
        }
    )
    assert named.smtp_from == '"Box, Office" <b@x.test>'


def test_unknown_fanfare_variables_are_warned_with_a_close_match() -> None:
    warnings = configuration_warnings({"FANFARE_LOGLEVEL": "debug", "HOME": "/root"})
    assert warnings == [
        (
            "FANFARE_LOGLEVEL is not a fanfare-grpc setting and is ignored "
            "(did you mean FANFARE_LOG_LEVEL?)"
        )
    ]
    [far] = configuration_warnings({"FANFARE_COLOUR": "blue"})
    assert far == "FANFARE_COLOUR is not a fanfare-grpc setting and is ignored"


def test_every_settings_field_is_a_known_variable() -> None:
    # Derived from the dataclass: a field added later is known without a list to edit.
    environment = {variable: "x" for variable in SETTING_VARIABLES.values()}
    environment |= {"FANFARE_TEST_POSTGRES_URL": "x", "FANFARE_FUZZ_PROFILE": "long"}
    assert not [w for w in configuration_warnings(environment) if "not a fanfare-grpc" in w]
    assert SETTING_VARIABLES["redis_key_prefix"] == "FANFARE_REDIS_PREFIX"
    assert SETTING_VARIABLES["log_level"] == "FANFARE_LOG_LEVEL"


def test_every_variable_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert [v for v in SETTING_VARIABLES.values() if f"`{v}`" not in readme] == []


def test_settings_without_effect_are_warned() -> None:
    warnings = configuration_warnings(
        {
            "FANFARE_PLATFORM_PRINCIPALS": "spiffe://fanfare/admin",
            "FANFARE_TLS_CERT": "/c.pem",
            "FANFARE_TLS_KEY": "/k.pem",
            "FANFARE_SMTP_CA_FILE": "/ca.pem",
        }
    )
    assert warnings == [
        (
            "FANFARE_PLATFORM_PRINCIPALS is ignored without FANFARE_TLS_CLIENT_CA: no client "
            "certificate is asked for, so no caller is a platform principal"
        ),
        "FANFARE_SMTP_CA_FILE is ignored without FANFARE_SMTP_URL: no login code is emailed",
    ]
    assert not configuration_warnings(
        {"FANFARE_PLATFORM_PRINCIPALS": "ops", "FANFARE_TLS_CLIENT_CA": "/ca.pem"}
    )


_SECRETS = {
    "FANFARE_DATABASE_URL": "postgresql+psycopg://fanfare:db-s3cret@127.0.0.1:5432/db",
    "FANFARE_DATABASE_OWNER_URL": "postgresql://owner@127.0.0.1/db?password=owner-s3cret",
    "FANFARE_REDIS_URL": "redis://:redis-s3cret@127.0.0.1:6379/2",
    "FANFARE_SMTP_URL": "smtps://mailer:smtp-s3cret@mail.example.test",
    "FANFARE_MASTER_KEY": "bWFzdGVyLXMzY3JldA==",
    "FANFARE_MASTER_KEYS_OLD": "b2xkLXMzY3JldA==",
}


def test_repr_and_description_redact_secrets_and_url_passwords() -> None:
    settings = Settings.from_env(_SECRETS)
    described = dict(settings.described())
    for text in (repr(settings), str(described)):
        for secret in ("s3cret", "bWFzdGVy", "b2xkLXMz"):
            assert secret not in text
    assert described["FANFARE_DATABASE_URL"] == (
        "postgresql+psycopg://fanfare:***@127.0.0.1:5432/db"
    )
    assert described["FANFARE_DATABASE_OWNER_URL"] == (
        "postgresql://owner@127.0.0.1/db?password=***"
    )
    assert described["FANFARE_REDIS_URL"] == "redis://:***@127.0.0.1:6379/2"
    assert described["FANFARE_SMTP_URL"] == "smtps://mailer:***@mail.example.test"
    assert described["FANFARE_MASTER_KEY"] == "<redacted>"
    assert described["FANFARE_MASTER_KEYS_OLD"] == "<redacted>"
    assert described["FANFARE_ACCESS_TOKEN_TTL_SECONDS"] == "900"
    assert described["FANFARE_TLS_CERT"] is None
    assert "database_url='postgresql+psycopg://fanfare:***@127.0.0.1:5432/db'" in repr(settings)


def test_a_password_that_breaks_the_url_apart_is_still_redacted() -> None:
    # An unencoded "/" ends the authority: the password's tail lands in the path.
    assert redact_url("redis://:pa/ss-s3cret@cache.internal:6379/0") == "redis://<redacted>"
    assert redact_url("smtp://mail.example.test") == "smtp://mail.example.test"

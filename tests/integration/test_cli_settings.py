"""Bad settings end in one line and exit 2; odd ones are warned; `config show` redacts."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.processes import process_env, run_cli
from tests.tls_certs import CertificateAuthority


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FANFARE_DATABASE_URL", "postgresql://fanfare:s3cretpw@127.0.0.1:port/db"),
        ("FANFARE_DATABASE_URL", "mysql://fanfare:s3cretpw@127.0.0.1/db"),
        ("FANFARE_DATABASE_OWNER_URL", "postgres ql://fanfare:s3cretpw@/"),
        ("FANFARE_REDIS_URL", "http://:s3cretpw@127.0.0.1:6379/0"),
        ("FANFARE_HEALTH_CHECK_INTERVAL_SECONDS", "nan"),
        ("FANFARE_REFRESH_TOKEN_TTL_SECONDS", "inf"),
    ],
)
async def test_a_bad_url_or_number_is_one_line_and_exit_2(
    tmp_path: Path, variable: str, value: str
) -> None:
    for command in (("migrate",), ("serve",)):
        code, stdout, stderr = await run_cli(*command, env=process_env(tmp_path, {variable: value}))
        assert code == 2
        assert stdout == ""
        line = _one_line(stderr)
        assert line.startswith(f"fanfare-grpc: {variable} ")
        assert "s3cretpw" not in line


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


async def _serve_refusal(tmp_path: Path, extra: dict[str, str]) -> str:
    env = process_env(tmp_path / "data", extra)
    code, stdout, stderr = await run_cli("serve", env=env)
    assert code == 2, stderr
    assert stdout == ""
    return _one_line(stderr)


async def test_a_missing_certificate_is_one_line(
    tmp_path: Path, authority: CertificateAuthority
) -> None:
    server = authority.issue("server", "localhost", dns=("localhost",), server=True)
    missing = tmp_path / "nowhere.pem"
    line = await _serve_refusal(
        tmp_path, {"FANFARE_TLS_CERT": str(missing), "FANFARE_TLS_KEY": str(server.key)}
    )
    assert line == (
        f"fanfare-grpc: FANFARE_TLS_CERT: cannot read {missing} (No such file or directory)"
    )


async def test_a_garbage_certificate_is_one_line(
    tmp_path: Path, authority: CertificateAuthority
) -> None:
    server = authority.issue("server", "localhost", dns=("localhost",), server=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    line = await _serve_refusal(
        tmp_path, {"FANFARE_TLS_CERT": str(garbage), "FANFARE_TLS_KEY": str(server.key)}
    )
    assert line == f"fanfare-grpc: FANFARE_TLS_CERT: {garbage} holds no PEM certificate"


async def test_a_directory_as_key_file_is_one_line(
    tmp_path: Path, authority: CertificateAuthority
) -> None:
    server = authority.issue("server", "localhost", dns=("localhost",), server=True)
    line = await _serve_refusal(
        tmp_path, {"FANFARE_TLS_CERT": str(server.cert), "FANFARE_TLS_KEY": str(tmp_path)}
    )
    assert line == f"fanfare-grpc: FANFARE_TLS_KEY: {tmp_path} is a directory, not a PEM file"


async def test_a_key_of_another_certificate_and_a_bad_client_ca_are_one_line(
    tmp_path: Path, authority: CertificateAuthority
) -> None:
    server = authority.issue("server", "localhost", dns=("localhost",), server=True)
    other = authority.issue("other", "localhost", dns=("localhost",), server=True)
    line = await _serve_refusal(
        tmp_path, {"FANFARE_TLS_CERT": str(server.cert), "FANFARE_TLS_KEY": str(other.key)}
    )
    assert line.startswith("fanfare-grpc: FANFARE_TLS_KEY: ")
    assert "is not the key of the certificate" in line
    line = await _serve_refusal(
        tmp_path,
        {
            "FANFARE_TLS_CERT": str(server.cert),
            "FANFARE_TLS_KEY": str(server.key),
            # A private key where a CA bundle belongs: no certificate in it.
            "FANFARE_TLS_CLIENT_CA": str(server.key),
        },
    )
    assert line == f"fanfare-grpc: FANFARE_TLS_CLIENT_CA: {server.key} holds no PEM certificate"


async def test_a_garbage_ca_file_stops_the_worker_too(tmp_path: Path) -> None:
    garbage = tmp_path / "webhooks.pem"
    garbage.write_bytes(b"\x00\x01garbage")
    env = process_env(tmp_path / "data", {"FANFARE_WEBHOOK_CA_FILE": str(garbage)})
    code, _, stderr = await run_cli("worker", env=env)
    assert code == 2
    assert _one_line(stderr) == (
        f"fanfare-grpc: FANFARE_WEBHOOK_CA_FILE: {garbage} holds no PEM certificate"
    )


async def test_an_unwritable_data_dir_is_one_line(tmp_path: Path) -> None:
    # An existing directory nobody may create files in. Tests run as root, for whom
    # mode bits change nothing: /proc refuses new files to root as well.
    data_dir = Path("/proc/self/fdinfo")
    for command in (("migrate",), ("serve",), ("orgs", "create", "--name", "Acme")):
        code, _, stderr = await run_cli(*command, env=process_env(data_dir))
        # Exit 1 like every refusal of the environment (README "Command line").
        assert code == 1
        line = _one_line(stderr)
        assert line.startswith(f"fanfare-grpc: cannot write in the data dir {data_dir} (")
        assert line.endswith("check FANFARE_DATA_DIR and that this user may create and write it")


async def test_an_unreachable_database_at_migrate_is_one_line(tmp_path: Path) -> None:
    port = _closed_port()
    env = process_env(
        tmp_path,
        {"FANFARE_DATABASE_OWNER_URL": f"postgresql://owner:s3cretpw@127.0.0.1:{port}/db"},
    )
    code, stdout, stderr = await run_cli("migrate", env=env)
    assert code == 1
    assert stdout == ""
    line = _one_line(stderr)
    assert f"127.0.0.1:{port}/db (Connection refused)" in line
    assert "FANFARE_DATABASE_OWNER_URL" in line and "s3cretpw" not in line


def _warnings(stderr: str) -> list[str]:
    entries = [json.loads(line) for line in stderr.splitlines()]
    return [entry["message"] for entry in entries if entry["level"] == "warning"]


async def test_an_unknown_variable_is_one_warning_naming_it(tmp_path: Path) -> None:
    env = process_env(tmp_path, {"FANFARE_LOGLEVEL": "debug"})
    code, _, stderr = await run_cli("migrate", env=env)
    assert code == 0, stderr
    assert [line for line in stderr.splitlines() if "FANFARE_LOGLEVEL" in line] != []
    assert _warnings(stderr) == [
        (
            "FANFARE_LOGLEVEL is not a fanfare-grpc setting and is ignored "
            "(did you mean FANFARE_LOG_LEVEL?)"
        )
    ]


async def test_platform_principals_without_a_client_ca_are_warned(tmp_path: Path) -> None:
    env = process_env(tmp_path, {"FANFARE_PLATFORM_PRINCIPALS": "spiffe://fanfare/admin"})
    code, _, stderr = await run_cli("config", "show", env=env)
    assert code == 0, stderr
    assert _warnings(stderr) == [
        (
            "FANFARE_PLATFORM_PRINCIPALS is ignored without FANFARE_TLS_CLIENT_CA: no client "
            "certificate is asked for, so no caller is a platform principal"
        )
    ]


_SECRET_ENV = {
    "FANFARE_DATABASE_URL": "postgresql+psycopg://fanfare:db-s3cret@127.0.0.1:5432/db",
    "FANFARE_REDIS_URL": "redis://:redis-s3cret@127.0.0.1:6379/2",
    "FANFARE_SMTP_URL": "smtps://mailer:smtp-s3cret@mail.example.test",
    "FANFARE_MASTER_KEY": "bWFzdGVyLXMzY3JldA==",
    "FANFARE_MASTER_KEYS_OLD": "b2xkLXMzY3JldA==",
}


async def test_config_show_prints_the_effective_settings_redacted(tmp_path: Path) -> None:
    env = process_env(tmp_path, _SECRET_ENV)
    code, stdout, stderr = await run_cli("config", "show", "--listen", "127.0.0.1:7000", env=env)
    assert code == 0, stderr
    for secret in ("s3cret", "bWFzdGVy", "b2xkLXMz"):
        assert secret not in stdout + stderr
    lines = stdout.splitlines()
    assert "FANFARE_LISTEN=127.0.0.1:7000" in lines
    assert f"FANFARE_DATA_DIR={tmp_path}" in lines
    assert "FANFARE_DATABASE_URL=postgresql+psycopg://fanfare:***@127.0.0.1:5432/db" in lines
    assert "FANFARE_REDIS_URL=redis://:***@127.0.0.1:6379/2" in lines
    assert "FANFARE_SMTP_URL=smtps://mailer:***@mail.example.test" in lines
    assert "FANFARE_SMTP_FROM=Fanfare <no-reply@localhost>" in lines
    assert "FANFARE_MASTER_KEY=<redacted>" in lines
    assert "FANFARE_ACCESS_TOKEN_TTL_SECONDS=900" in lines
    assert "FANFARE_TLS_CERT=" in lines

    code, stdout, _ = await run_cli("config", "show", "--json", env=env)
    assert code == 0
    shown = json.loads(stdout)
    assert shown["FANFARE_MASTER_KEYS_OLD"] == "<redacted>"
    assert shown["FANFARE_REDIS_PREFIX"] == "ff"
    assert shown["FANFARE_TLS_CERT"] is None
    assert "s3cret" not in stdout

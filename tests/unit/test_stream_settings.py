"""Stream caps and the HTTP/2 stream limit come from FANFARE_* variables."""

from __future__ import annotations

import pytest

from fanfare_grpc.server import server_options
from fanfare_grpc.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.watch_streams_per_session == 4
    assert settings.watch_streams_per_client == 64
    assert settings.public_streams_per_client == 16
    assert settings.max_concurrent_streams == 100


def test_variables_are_read() -> None:
    settings = Settings.from_env(
        {
            "FANFARE_WATCH_STREAMS_PER_SESSION": "2",
            "FANFARE_WATCH_STREAMS_PER_CLIENT": " 500 ",
            "FANFARE_MAX_CONCURRENT_STREAMS": "50",
            "FANFARE_PUBLIC_STREAMS_PER_CLIENT": "7",
        }
    )
    assert settings.public_streams_per_client == 7
    assert settings.watch_streams_per_session == 2
    assert settings.watch_streams_per_client == 500
    assert settings.max_concurrent_streams == 50
    assert ("grpc.max_concurrent_streams", 50) in server_options(settings)


@pytest.mark.parametrize(
    "variable",
    [
        "FANFARE_WATCH_STREAMS_PER_SESSION",
        "FANFARE_WATCH_STREAMS_PER_CLIENT",
        "FANFARE_MAX_CONCURRENT_STREAMS",
        "FANFARE_PUBLIC_STREAMS_PER_CLIENT",
    ],
)
@pytest.mark.parametrize("value", ["0", "-3", "2.5", "many"])
def test_malformed_counts_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})

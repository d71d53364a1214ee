"""Stream slots: caps per session and per client, and nothing kept once released."""

from __future__ import annotations

import contextlib

import pytest

from fanfare_grpc import errors
from fanfare_grpc.domain.stream_slots import RETRY_AFTER_SECONDS, StreamLimits, StreamSlots


def slots(per_session: int = 2, per_client: int = 3) -> StreamSlots:
    return StreamSlots(StreamLimits(per_session, per_client), lambda host: f"digest({host})")


def test_the_session_cap_is_checked_first_and_named() -> None:
    limited = slots(per_session=2, per_client=2)
    with contextlib.ExitStack() as held:
        for _ in range(2):
            held.enter_context(limited.hold("org", "test", "ses_1", "10.0.0.1"))
        with pytest.raises(errors.ResourceExhausted) as raised:
            held.enter_context(limited.hold("org", "test", "ses_1", "10.0.0.1"))
        assert "for this session (at most 2)" in raised.value.message
        assert raised.value.retry_after_seconds == RETRY_AFTER_SECONDS
        with pytest.raises(errors.ResourceExhausted) as raised:
            held.enter_context(limited.hold("org", "test", "ses_2", "10.0.0.1"))
        assert "from this client address (at most 2)" in raised.value.message
        # Same session id in another organization or mode, from another address: free.
        held.enter_context(limited.hold("org", "live", "ses_1", "10.0.0.2"))
        assert limited.open_streams == 3
    assert limited.open_streams == 0


def test_a_refused_stream_takes_no_slot() -> None:
    limited = slots(per_session=1)
    with limited.hold("org", "test", "ses_1", "10.0.0.1"):
        for _ in range(3):
            with (
                pytest.raises(errors.ResourceExhausted),
                limited.hold("org", "test", "ses_1", "10.0.0.1"),
            ):
                pass
        assert limited.open_streams == 1
    with limited.hold("org", "test", "ses_1", "10.0.0.1"):
        assert limited.open_streams == 1


def test_slots_are_released_when_the_stream_fails() -> None:
    limited = slots()
    with pytest.raises(errors.NotFound), limited.hold("org", "test", "ses_1", "10.0.0.1"):
        raise errors.NotFound("queue not found")
    assert limited.open_streams == 0


def test_released_sessions_and_clients_leave_no_entry() -> None:
    limited = slots()
    for number in range(1000):
        with limited.hold("org", "test", f"ses_{number}", f"10.0.{number // 256}.{number % 256}"):
            pass
    # Private access: memory must not grow with every session and address ever seen.
    assert not limited._sessions
    assert not limited._clients

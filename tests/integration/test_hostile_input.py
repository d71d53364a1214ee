"""Out-of-range times and forged page tokens are INVALID_ARGUMENT naming the field.

Each case here answered INTERNAL once (issue 9, defect 4, and what the fuzz suite in
``tests/fuzz`` found); they stay as plain regression tests beside the fuzzer.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.common.v1 import common_pb2
from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.session.v1 import session_service_pb2 as sessions
from google.protobuf import field_mask_pb2, timestamp_pb2

from tests.conftest import BackendSettings
from tests.consumers import serving_consumer_world
from tests.grpc_helpers import bad_request_fields, bearer, expect_status
from tests.queues import QueueWorld

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
IN_AN_HOUR = int(dt.datetime.now(dt.UTC).timestamp()) + 3600


@pytest.fixture
async def qw(backend: BackendSettings) -> AsyncIterator[QueueWorld]:
    async with serving_consumer_world(backend.settings, run_worker=False) as world:
        yield QueueWorld(world)


# Seconds beyond what any datetime holds, and nanos outside [0, 1e9): both once made
# the proto → datetime conversion raise ValueError (INTERNAL).
BAD_TIMESTAMPS = {
    "seconds 2^62": timestamp_pb2.Timestamp(seconds=2**62),
    "seconds -2^62": timestamp_pb2.Timestamp(seconds=-(2**62)),
    "year 10000": timestamp_pb2.Timestamp(seconds=253402300800),
    "nanos -1": timestamp_pb2.Timestamp(seconds=IN_AN_HOUR, nanos=-1),
    "nanos 1e9": timestamp_pb2.Timestamp(seconds=IN_AN_HOUR, nanos=10**9),
}


async def _invalid_naming(call: Awaitable[object], field: str) -> None:
    error = await expect_status(call, INVALID_ARGUMENT)
    assert field in bad_request_fields(error), bad_request_fields(error)


@pytest.mark.parametrize("value", BAD_TIMESTAMPS.values(), ids=BAD_TIMESTAMPS.keys())
async def test_out_of_range_queue_times_are_invalid(
    qw: QueueWorld, value: timestamp_pb2.Timestamp
) -> None:
    operator = qw.operator()
    for field in ("opens_at", "closes_at"):
        await _invalid_naming(
            qw.stub.CreateQueue(
                queues.CreateQueueRequest(
                    name="drop", admission_rate_per_minute=60, **{field: value}
                ),
                metadata=operator,
            ),
            field,
        )
    queue_id = (await qw.create()).queue.queue_id
    for field in ("opens_at", "closes_at"):
        await _invalid_naming(
            qw.stub.UpdateQueue(
                queues.UpdateQueueRequest(
                    queue_id=queue_id,
                    update_mask=field_mask_pb2.FieldMask(paths=[field]),
                    **{field: value},
                ),
                metadata=operator,
            ),
            field,
        )


@pytest.mark.parametrize("value", BAD_TIMESTAMPS.values(), ids=BAD_TIMESTAMPS.keys())
async def test_out_of_range_key_expiry_is_invalid(
    qw: QueueWorld, value: timestamp_pb2.Timestamp
) -> None:
    await _invalid_naming(
        qw.world.auth.CreateApiKey(
            auth.CreateApiKeyRequest(
                kind=common_pb2.API_KEY_KIND_SECRET,
                role=common_pb2.ROLE_READONLY,
                name="reader",
                expires_at=value,
            ),
            metadata=qw.operator(),
        ),
        "expires_at",
    )


def _token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


# Well-formed base64 JSON that encode_cursor never produces: page tokens are
# attacker-controlled, so every shape must be refused, never crash.
FORGED_PAGE_TOKENS = {
    "key list": {"c": "2026-01-01T00:00:00+00:00", "k": ["q_abc", 1]},
    "key number": {"c": "2026-01-01T00:00:00+00:00", "k": 7},
    "time number": {"c": 1767225600, "k": "q_abc"},
    "time list": {"c": ["2026"], "k": "q_abc"},
    "top-level list": ["2026-01-01T00:00:00+00:00", "q_abc"],
    "top-level string": "q_abc",
    "null": None,
    "year 1 east of utc": {"c": "0001-01-01T00:00:00+05:00", "k": "q_abc"},
    "year 9999 west of utc": {"c": "9999-12-31T23:59:59-05:00", "k": "q_abc"},
}
DEEPLY_NESTED = base64.urlsafe_b64encode(b"[" * 1500).decode()


def _page_token_cases() -> list[str]:
    return [_token(payload) for payload in FORGED_PAGE_TOKENS.values()] + [DEEPLY_NESTED]


async def test_forged_page_tokens_are_invalid_on_every_list(qw: QueueWorld) -> None:
    admin = bearer(qw.world.acme.secret_key)
    guest = await qw.world.guest()
    lists: list[Callable[[str], Awaitable[object]]] = [
        lambda token: qw.stub.ListQueues(
            queues.ListQueuesRequest(page_token=token), metadata=admin
        ),
        lambda token: qw.world.auth.ListApiKeys(
            auth.ListApiKeysRequest(page_token=token), metadata=admin
        ),
        lambda token: qw.world.sessions.ListSessions(
            sessions.ListSessionsRequest(consumer_id=guest.session.consumer_id, page_token=token),
            metadata=admin,
        ),
    ]
    for token in _page_token_cases():
        for list_call in lists:
            await _invalid_naming(list_call(token), "page_token")

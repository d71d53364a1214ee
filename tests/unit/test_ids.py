"""Ids are random, prefixed and never sequential."""

from __future__ import annotations

from fanfare_grpc.domain import ids


def test_ids_are_prefixed_random_and_distinct() -> None:
    generated = {ids.new_id(ids.QUEUE) for _ in range(1000)}
    assert len(generated) == 1000
    assert all(value.startswith("q_") and ids.has_id_shape(value, ids.QUEUE) for value in generated)


def test_id_shape_check() -> None:
    assert not ids.has_id_shape("org_", ids.ORGANIZATION)
    assert not ids.has_id_shape("key_abc", ids.ORGANIZATION)
    assert not ids.has_id_shape("org_a/b", ids.ORGANIZATION)
    assert not ids.has_id_shape("org_" + "a" * 65, ids.ORGANIZATION)
    assert ids.has_id_shape("org_" + "a" * 64, ids.ORGANIZATION)


def test_id_shape_of_non_strings_is_false() -> None:
    # Values parsed from caller-supplied JSON (page tokens) reach this check.
    for value in (None, 5, ["org_abc"], {"org_abc": 1}, b"org_abc"):
        assert not ids.has_id_shape(value, ids.ORGANIZATION)

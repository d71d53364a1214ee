"""Display names: trimmed, 1 to 200 characters."""

from __future__ import annotations

from fanfare_grpc import errors

MAX_NAME_LENGTH = 200


def normalized_name(name: str, what: str, field: str = "name") -> str:
    """``name`` without surrounding white space.

    Raises:
        InvalidArgument: Empty or longer than ``MAX_NAME_LENGTH`` characters, naming
            ``field`` (the message says ``invalid <what> name``).
    """
    trimmed = name.strip()
    if not trimmed or len(trimmed) > MAX_NAME_LENGTH:
        raise errors.InvalidArgument(
            f"invalid {what} name",
            (errors.FieldViolation(field, f"must be 1 to {MAX_NAME_LENGTH} characters"),),
        )
    return trimmed

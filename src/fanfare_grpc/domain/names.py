"""Display names: trimmed, 1 to 200 characters, nothing that hides or reorders text.

Names reach shoppers (queue names) and operators (key and organization names) as
they were typed. Control characters (NUL, newlines, escape sequences) and the
Unicode line separators break or forge what is displayed; the bidirectional
formatting characters (e.g. U+202E RIGHT-TO-LEFT OVERRIDE) reorder it, so
``"Sale \u202egnp.exe"`` shows as something else than it is. Every other character
is allowed: accents, CJK, emoji (including their zero-width joiners).

The protos carry the same rule as a protovalidate expression (``DISPLAY_TEXT_PATTERN``
in RE2 syntax), so clients in every language see it; this check is the server's.
"""

from __future__ import annotations

import re
import unicodedata

from fanfare_grpc import errors

MAX_NAME_LENGTH = 200

# Bidirectional formatting characters: ALM, LRM, RLM, LRE…RLO, LRI…PDI.
_BIDI_FORMATTING = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
# Characters that display as nothing and join nothing: soft hyphen, Hangul fillers,
# Mongolian vowel separator, zero-width space, word joiner and invisible operators,
# zero-width no-break space. "Acme" and "Ac\u200bme" would look the same. (ZWJ and
# ZWNJ stay: emoji sequences and Persian need them.)
_INVISIBLE = "\u00ad\u115f\u1160\u180e\u200b\u2060-\u2064\u3164\ufeff\uffa0"
# Cc (C0, DEL, C1), the line and paragraph separators, bidi formatting, invisibles.
_FORBIDDEN = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_BIDI_FORMATTING}{_INVISIBLE}]")
# The same set for protovalidate (RE2 syntax), as written in the protos.
DISPLAY_TEXT_PATTERN = (
    r"^[^\p{Cc}\x{2028}\x{2029}\x{061C}\x{200E}\x{200F}\x{202A}-\x{202E}\x{2066}-\x{2069}"
    r"\x{00AD}\x{115F}\x{1160}\x{180E}\x{200B}\x{2060}-\x{2064}\x{3164}\x{FEFF}\x{FFA0}]*$"
)
UNSAFE_TEXT_DESCRIPTION = (
    "must not contain control, bidirectional formatting or invisible characters"
)
# Categories that show nothing on their own: format characters (ZWJ, tags, variation
# selectors' kin), combining marks, separators.
_SHOWS_NOTHING = frozenset({"Cf", "Mn", "Me", "Zs", "Zl", "Zp", "Cc"})


def check_display_text(value: str, field: str, what: str) -> None:
    """Refuse text that would display as something it is not.

    Raises:
        InvalidArgument: ``value`` holds a control, line separator or bidirectional
            formatting character, naming ``field`` (the message says ``invalid <what>``).
    """
    if _FORBIDDEN.search(value):
        raise errors.InvalidArgument(
            f"invalid {what}", (errors.FieldViolation(field, UNSAFE_TEXT_DESCRIPTION),)
        )


def normalized_name(name: str, what: str, field: str = "name") -> str:
    """``name`` without surrounding white space.

    Raises:
        InvalidArgument: Empty, longer than ``MAX_NAME_LENGTH`` characters, or holding
            a character ``check_display_text`` refuses, naming ``field`` (the message
            says ``invalid <what> name``).
    """
    # Checked before trimming: the protos' rule sees the value as sent, too.
    check_display_text(name, field, f"{what} name")
    trimmed = name.strip()
    if not trimmed or len(trimmed) > MAX_NAME_LENGTH:
        raise errors.InvalidArgument(
            f"invalid {what} name",
            (errors.FieldViolation(field, f"must be 1 to {MAX_NAME_LENGTH} characters"),),
        )
    if all(unicodedata.category(character) in _SHOWS_NOTHING for character in trimmed):
        raise errors.InvalidArgument(
            f"invalid {what} name",
            (errors.FieldViolation(field, "must contain a visible character"),),
        )
    return trimmed

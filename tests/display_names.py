"""Display names that must be refused, and ordinary unicode that must not be."""

from __future__ import annotations

# Each would display as something other than what it is: C0/C1 controls (NUL, tab,
# newline, escape, DEL, NEL), the line separator, and every bidirectional formatting
# character (ALM, LRM, RLM, LRE, RLE, PDF, LRO, RLO, LRI, RLI, FSI, PDI).
UNSAFE_NAMES = (
    "drop\x00admin",
    "Sale \u202egnp.exe",
    "a\tb",
    "a\nb",
    "a\x1b[31mb",
    "a\x7fb",
    "a\x85b",
    "a\u2028b",
    "a\u061cb",
    "\u200eleft",
    "a\u200fb",
    "a\u202ab",
    "a\u202bb",
    "a\u202cb",
    "a\u202db",
    "a\u2066b",
    "a\u2067b",
    "a\u2068b",
    "a\u2069b",
)
# Accents, CJK, right-to-left script, emoji with zero-width joiners and a variation
# selector: all fine.
SAFE_NAMES = (
    "Crème brûlée drop",
    "東京 限定ドロップ",
    "מבצע",
    "Sneakers 👟 for 👨\u200d👩\u200d👧",
    "Snow ❄\ufe0f",
)

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
    # Invisible: a name that looks like another, or like nothing at all.
    "Ac\u200bme",
    "\u200b",
    "a\u00adb",
    "a\u2060b",
    "\ufeffAcme",
    "\u3164",
)
# Nothing visible at all, though every character is allowed somewhere in a name.
INVISIBLE_ONLY_NAMES = ("\u200d", "\U000e0041\U000e0042", "\ufe0f", "\u0301", "\u200c\u200d")
# Accents, CJK, right-to-left script, emoji with zero-width joiners and a variation
# selector: all fine.
SAFE_NAMES = (
    "Crème brûlée drop",
    "東京 限定ドロップ",
    "מבצע",
    "Sneakers 👟 for 👨\u200d👩\u200d👧",
    "Snow ❄\ufe0f",
    "England 🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
    "نان\u200cها",
)

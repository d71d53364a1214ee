"""A wall clock tests can move forward."""

from __future__ import annotations

import datetime as dt


class MutableClock:
    """Starts at the real time; ``advance`` moves it."""

    def __init__(self) -> None:
        self._offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self._offset

    def advance(self, delta: dt.timedelta) -> None:
        self._offset += delta

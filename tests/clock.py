"""A wall clock tests can move forward."""

from __future__ import annotations

import datetime as dt


class MutableClock:
    """Starts at the real time; ``advance`` moves it."""

    def __init__(self) -> None:
        self._offset = dt.timedelta(0)
        self._frozen_at: dt.datetime | None = None

    def __call__(self) -> dt.datetime:
        return (self._frozen_at or dt.datetime.now(dt.UTC)) + self._offset

    def freeze(self) -> None:
        """Stop following real time: only ``advance`` moves the clock from now on.

        For tests that count per-second ticks: on a loaded machine the real seconds a
        loop takes would otherwise add ticks of their own.
        """
        self._frozen_at = self._frozen_at or dt.datetime.now(dt.UTC)

    def advance(self, delta: dt.timedelta) -> None:
        self._offset += delta

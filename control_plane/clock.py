"""Where the control plane gets the time: passed in, so tests and `--as-of` can move it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current time as a timezone-aware UTC datetime."""

    def now(self) -> datetime:
        """Returns the current instant (timezone-aware, UTC)."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        """Returns `datetime.now(UTC)`."""
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to; for tests and for commands run `--as-of` a time.

    Thread-safe: a running server may read it while a test moves it.
    """

    def __init__(self, start: datetime) -> None:
        """Creates a clock standing at `start`.

        Raises:
            ValueError: `start` has no timezone.
        """
        self._now = _require_aware(start)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """Returns the time the clock stands at."""
        with self._lock:
            return self._now

    def set(self, instant: datetime) -> None:
        """Moves the clock to `instant` (forwards or backwards)."""
        aware = _require_aware(instant)
        with self._lock:
            self._now = aware

    def advance(self, delta: timedelta) -> datetime:
        """Moves the clock by `delta` and returns the new time."""
        with self._lock:
            self._now += delta
            return self._now


def _require_aware(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("the clock needs a timezone-aware datetime, e.g. datetime.now(UTC)")
    return instant.astimezone(UTC)

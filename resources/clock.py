"""What time it is: the one clock the engine, the API and the feeds read.

Every "what time is it" decision reads `now()` (aware UTC): the live run's cycles and its heartbeat,
the sensors' decisions, voiding by the clock, lags, the API's lag and default ranges, a period
closing. Waiting for a time of that clock goes through `sleep()`. Tests set the process's clock
with `use_clock(TestClock(...))` instead of waiting on wall time. Deadlines and timeouts (how long a
fetch or a model may take) stay on `time.monotonic()`: they measure an interval, not the time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


class WallClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class TestClock:
    """A clock a test drives: it stands still (or moves only by `advance`, `set` and `sleep`, which
    advances it at once instead of waiting). Thread-safe: a served API or a live run in another
    thread reads the same time."""

    __test__ = False  # not a pytest test class

    def __init__(self, at: datetime):
        self._lock = threading.Lock()
        self._at = _aware_utc(at)

    def now(self) -> datetime:
        with self._lock:
            return self._at

    def set(self, at: datetime) -> None:
        at = _aware_utc(at)
        with self._lock:
            if at < self._at:
                raise ValueError(f"a clock does not go back: {at.isoformat()} is before {self._at.isoformat()}")
            self._at = at

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by `seconds` (and/or timedelta keywords: minutes=, hours=, days=)."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError(f"a clock does not go back: advance by {step}")
        with self._lock:
            self._at += step
            return self._at

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


def _aware_utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError(f"a clock's time is timezone-aware UTC, got naive {at.isoformat()}")
    return at.astimezone(timezone.utc)


_WALL = WallClock()
_current: Clock = _WALL


def now() -> datetime:
    """The current instant, timezone-aware UTC."""
    return _current.now()


def sleep(seconds: float) -> None:
    """Wait `seconds` of this clock's time (a test clock advances instead of waiting)."""
    _current.sleep(seconds)


@contextlib.contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Inside the block, the whole process (every thread) reads `clock`."""
    global _current
    previous, _current = _current, clock
    try:
        yield clock
    finally:
        _current = previous

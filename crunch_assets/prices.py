"""Prices as ground truth sees them: observations of one subject, answered only from stored data."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class PriceObservation:
    observed_at: datetime  # a candle's close time, a tick's publish time
    price: float


@dataclass(frozen=True)
class EntryAndResolution:
    """The two prices a return is measured between, and, when either is missing, which one."""

    entry: PriceObservation | None
    resolved: PriceObservation | None
    missing: str | None  # e.g. "no BTC price for the entry at ... "; None when both are there


class PriceSeries:
    """Observations of one subject, ascending by observation time."""

    def __init__(self, observations: list[PriceObservation]):
        self._observations = sorted(observations, key=lambda o: o.observed_at)
        self._times = [o.observed_at for o in self._observations]

    def __len__(self) -> int:
        return len(self._observations)

    def __iter__(self):
        return iter(self._observations)

    def last_at_or_before(self, instant: datetime, max_staleness_seconds: float) -> PriceObservation | None:
        """The last observation at or before `instant`, or None if none is fresher than
        max_staleness_seconds (a gap never borrows an old price as if it were current)."""
        index = bisect.bisect_right(self._times, instant) - 1
        if index < 0:
            return None
        observation = self._observations[index]
        if (instant - observation.observed_at).total_seconds() > max_staleness_seconds:
            return None
        return observation

    def resolution(
        self, entry: PriceObservation, resolvable_at: datetime, max_staleness_seconds: float
    ) -> PriceObservation | None:
        """The price at `resolvable_at`: the last observation at or before it, strictly after the
        entry observation and at most max_staleness_seconds old. None when there is none: the
        entry price never stands in for a missing resolution price."""
        observation = self.last_at_or_before(resolvable_at, max_staleness_seconds)
        if observation is None or observation.observed_at <= entry.observed_at:
            return None
        return observation

    def entry_and_resolution(
        self, subject: str, cycle_at: datetime, resolvable_at: datetime, max_staleness_seconds: float
    ) -> EntryAndResolution:
        """The entry (the last observation at or before the cycle) and the resolution (see
        `resolution`), each at most max_staleness_seconds old; when either is missing, `missing`
        names which (the entry at the cycle, the resolution at resolvable_at, or both), so that a
        void reason says what the feed lacks."""
        entry = self.last_at_or_before(cycle_at, max_staleness_seconds)
        if entry is not None:
            resolved = self.resolution(entry, resolvable_at, max_staleness_seconds)
            resolution_missing = resolved is None
        else:
            resolved = None  # never a resolution without an entry; whether one is there, to name it
            candidate = self.last_at_or_before(resolvable_at, max_staleness_seconds)
            resolution_missing = candidate is None or candidate.observed_at <= cycle_at
        gaps = ([f"the entry at {cycle_at.isoformat()}"] if entry is None else []) + (
            [f"the resolution at {resolvable_at.isoformat()}"] if resolution_missing else [])
        window = f"none observed in the {max_staleness_seconds:g} s up to {'each' if len(gaps) > 1 else 'it'}"
        missing = f"no {subject} price for {' nor for '.join(gaps)} ({window})" if gaps else None
        return EntryAndResolution(entry, resolved, missing)

    def window(self, start: datetime, end: datetime) -> list[PriceObservation]:
        """Observations with start < observed_at <= end."""
        lo = bisect.bisect_right(self._times, start)
        hi = bisect.bisect_right(self._times, end)
        return self._observations[lo:hi]

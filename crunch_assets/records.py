"""The read-only view of stored records that a competition's input builder and ground-truth
resolver receive: any subject of the competition, any kind, bounded in observation time.

A view never shows a record observed after its `as_of` (an input at cycle time T sees nothing
after T), nor one observed before its `since` (the declared lookback). Records are loaded once per
batch of cycles and sliced per cycle by bisection.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from crunch_assets.prices import PriceObservation, PriceSeries
from resources.feeds.base import CANDLE, TICK, Candle, FeedStream, Record, Tick


@dataclass
class LoadedRecords:
    """Records of several streams, each ascending by observation time."""

    by_stream: dict[FeedStream, list[Record]]

    def __post_init__(self) -> None:
        self._times = {stream: [r.observed_at for r in records] for stream, records in self.by_stream.items()}

    def view(self, since: datetime, as_of: datetime, *, include_since: bool = False) -> "RecordsView":
        return RecordsView(self, since, as_of, include_since)

    def slice(self, stream: FeedStream, since: datetime, as_of: datetime, include_since: bool) -> list[Record]:
        records = self.by_stream.get(stream, [])
        times = self._times.get(stream, [])
        lo = (bisect.bisect_left if include_since else bisect.bisect_right)(times, since)
        hi = bisect.bisect_right(times, as_of)
        return records[lo:hi]


class RecordsView:
    """Stored records observed in (since, as_of] (or [since, as_of] with include_since)."""

    def __init__(self, loaded: LoadedRecords, since: datetime, as_of: datetime, include_since: bool = False):
        self._loaded = loaded
        self.since = since
        self.as_of = as_of
        self._include_since = include_since

    @property
    def streams(self) -> list[FeedStream]:
        return sorted(self._loaded.by_stream, key=lambda s: (s.subject, s.kind, s.granularity_seconds, s.source))

    @property
    def subjects(self) -> list[str]:
        return sorted({stream.subject for stream in self._loaded.by_stream})

    def records(self, subject: str, kind: str | None = None) -> list[Record]:
        """Every record of `subject` (of one `kind`, if given), ascending by observation time."""
        found: list[Record] = []
        streams = [s for s in self._loaded.by_stream if s.subject == subject and (kind is None or s.kind == kind)]
        for stream in streams:
            found.extend(self._loaded.slice(stream, self.since, self.as_of, self._include_since))
        if len(streams) > 1:
            found.sort(key=lambda r: r.observed_at)
        return found

    def candles(self, subject: str) -> list[Candle]:
        return self.records(subject, CANDLE)  # type: ignore[return-value]

    def ticks(self, subject: str) -> list[Tick]:
        return self.records(subject, TICK)  # type: ignore[return-value]

    def latest(self, subject: str, kind: str | None = None) -> Record | None:
        found = self.records(subject, kind)
        return found[-1] if found else None

    def prices(self, subject: str) -> PriceSeries:
        """The subject's price observations (candle closes at close time, tick prices, other
        records' `price`), for ground truth."""
        return PriceSeries([
            PriceObservation(r.observed_at, r.price) for r in self.records(subject) if r.price is not None
        ])


def streams_for(source: str, subjects: Iterable[str], kind: str, granularity_seconds: int) -> list[FeedStream]:
    return [FeedStream(source, subject, kind, granularity_seconds) for subject in sorted(set(subjects))]

"""Replay of 1-minute candles from a CSV file (columns timestamp,open,high,low,close,volume with
timestamp = bar open time in unix seconds), e.g. the Bitstamp BTC/USD history in shared/data."""

from __future__ import annotations

import bisect
import csv
import functools
import math
from datetime import datetime
from pathlib import Path

from resources.feeds.base import Candle, FeedFetchResult, FeedResource, SkippedRow, truncate_raw, utc_from_unix_seconds


@functools.lru_cache(maxsize=8)
def _load_rows(path: str, granularity_seconds: int) -> tuple[tuple[int, ...], tuple[tuple, ...], tuple[SkippedRow, ...]]:
    """Parse the file once per process: (sorted open times, rows, skipped rows)."""
    parsed: dict[int, tuple] = {}
    skipped: list[SkippedRow] = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                ts = int(float(row["timestamp"]))
                values = tuple(float(row[name]) for name in ("open", "high", "low", "close", "volume"))
            except (KeyError, TypeError, ValueError):
                skipped.append(SkippedRow("malformed row", truncate_raw(row)))
                continue
            if ts % granularity_seconds or not all(math.isfinite(v) for v in values) or min(values[:4]) <= 0:
                skipped.append(SkippedRow("invalid values", truncate_raw(row)))
                continue
            parsed[ts] = values
    times = tuple(sorted(parsed))
    return times, tuple(parsed[t] for t in times), tuple(skipped)


class CsvReplayFeed(FeedResource):
    path: str
    source: str = "csv"  # feed_records.source; name the file's origin if several are replayed
    subjects: list[str] = ["BTC"]  # the subjects this file stands for

    def source_name(self) -> str:
        return self.source

    def validate_stream(self) -> None:
        super().validate_stream()
        if self.kind != "candle":
            raise ValueError(f"the CSV replay feed serves candles, not {self.kind!r}")

    def validate_subjects(self, subjects: list[str]) -> None:
        if not Path(self.path).is_file():
            raise ValueError(f"CSV replay feed: file not found: {self.path}")
        unknown = sorted(set(subjects) - set(self.subjects))
        if unknown:
            raise ValueError(f"CSV replay feed {self.path} does not serve subject(s) {unknown}")

    def fetch_candles(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        if subject not in self.subjects:
            return FeedFetchResult(records=[])
        step = self.granularity_seconds
        times, rows, skipped = _load_rows(str(Path(self.path).resolve()), step)
        last_open_exclusive = min(end.timestamp(), as_of.timestamp() - step + 1)
        lo = bisect.bisect_left(times, start.timestamp())
        hi = bisect.bisect_left(times, last_open_exclusive)
        candles = [
            Candle(subject, utc_from_unix_seconds(times[i]), *rows[i], granularity_seconds=step) for i in range(lo, hi)
        ]
        return FeedFetchResult(records=candles, pages_fetched=1, skipped=list(skipped) if lo == 0 else [])

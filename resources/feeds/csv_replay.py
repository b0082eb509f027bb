"""Replay of 1-minute candles from a CSV file (columns timestamp,open,high,low,close,volume with
timestamp = bar open time in unix seconds), e.g. the Bitstamp BTC/USD history in shared/data."""

from __future__ import annotations

import bisect
import csv
import functools
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from resources.feeds.base import (
    DUPLICATE_SAME,
    Candle,
    FeedFetchResult,
    FeedResource,
    SkippedRow,
    conflict_row,
    truncate_raw,
    utc_from_unix_seconds,
)
from resources.feeds.http import check_ohlcv

_COLUMNS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class _ParsedFile:
    times: tuple[int, ...]  # sorted open times of the rows kept
    rows: tuple[tuple, ...]  # their values
    skipped_times: tuple[int, ...]  # sorted open times of the skipped rows whose time is readable
    skipped: tuple[SkippedRow, ...]  # in the order of skipped_times
    unplaceable: tuple[SkippedRow, ...]  # rows without a readable time: no window can claim them


@functools.lru_cache(maxsize=8)
def _load_rows(path: str, granularity_seconds: int) -> _ParsedFile:
    """Parse the file once per process. A row repeated with the same values is harmless; one with
    other values is a conflict: both reported, neither kept."""
    parsed: dict[int, tuple] = {}
    conflicting: set[int] = set()
    skipped: list[tuple[int, SkippedRow]] = []
    unplaceable: list[SkippedRow] = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                ts = int(float(row["timestamp"]))
            except (KeyError, TypeError, ValueError, OverflowError):
                unplaceable.append(SkippedRow("unreadable time", truncate_raw(row)))
                continue
            at = utc_from_unix_seconds(ts) if 0 <= ts < 2**35 else None
            try:
                values = tuple(float(row[name]) for name in _COLUMNS)
            except (KeyError, TypeError, ValueError):
                skipped.append((ts, SkippedRow("malformed row", truncate_raw(row), at)))
                continue
            problem = "unaligned open time" if ts % granularity_seconds or at is None else check_ohlcv(*values)
            if problem:
                skipped.append((ts, SkippedRow(problem, truncate_raw(row), at)))
                continue
            if ts in parsed:
                if parsed[ts] == values:
                    skipped.append((ts, SkippedRow(DUPLICATE_SAME, truncate_raw(row), at)))
                else:
                    skipped.append((ts, conflict_row(at, list(parsed[ts]), list(values))))
                    conflicting.add(ts)
                continue
            parsed[ts] = values
    times = tuple(sorted(t for t in parsed if t not in conflicting))
    skipped.sort(key=lambda item: item[0])
    return _ParsedFile(times, tuple(parsed[t] for t in times), tuple(t for t, _ in skipped),
                       tuple(row for _, row in skipped), tuple(unplaceable))


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
        """The file's candles opening in [start, end) and closed by as_of; the rows of that span
        that were skipped (malformed, conflicting) come with them. Rows without a readable time
        belong to no span: they are reported with a fetch that starts at the file's beginning."""
        if subject not in self.subjects:
            return FeedFetchResult(records=[])
        step = self.granularity_seconds
        parsed = _load_rows(str(Path(self.path).resolve()), step)
        times = parsed.times
        last_open_exclusive = min(end.timestamp(), as_of.timestamp() - step + 1)
        lo = bisect.bisect_left(times, start.timestamp())
        hi = bisect.bisect_left(times, last_open_exclusive)
        candles = [
            Candle(subject, utc_from_unix_seconds(times[i]), *parsed.rows[i], granularity_seconds=step) for i in range(lo, hi)
        ]
        skipped_lo = bisect.bisect_left(parsed.skipped_times, start.timestamp())
        skipped_hi = bisect.bisect_left(parsed.skipped_times, last_open_exclusive)
        skipped = list(parsed.skipped[skipped_lo:skipped_hi])
        if lo == 0 and skipped_lo == 0:
            skipped += parsed.unplaceable
        return FeedFetchResult(records=candles, pages_fetched=1, skipped=skipped)

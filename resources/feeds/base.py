"""The feed interface: a source of closed OHLCV candles for a subject and a time window."""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone

import dagster as dg


def granularity_label(granularity_seconds: int) -> str:
    """60 -> '1m', 3600 -> '1h', 86400 -> '1d' (stored in feed_records.granularity)."""
    for unit_seconds, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if granularity_seconds % unit_seconds == 0:
            return f"{granularity_seconds // unit_seconds}{unit}"
    return f"{granularity_seconds}s"


def utc_from_unix_seconds(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


@dataclass(frozen=True)
class Candle:
    """One closed candle. ts_event is the bar's open time (aware UTC); it covers
    [ts_event, ts_event + granularity_seconds), so `close` is the price at the bar's close time."""

    subject: str
    ts_event: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    granularity_seconds: int = 60

    def __post_init__(self) -> None:
        if self.ts_event.tzinfo is None:
            raise ValueError(f"candle time must be timezone-aware UTC, got naive {self.ts_event!r}")
        prices = (self.open, self.high, self.low, self.close)
        if not all(math.isfinite(p) and p > 0 for p in prices):
            raise ValueError(f"candle prices must be finite and positive: {prices}")
        if not (math.isfinite(self.volume) and self.volume >= 0):
            raise ValueError(f"candle volume must be finite and >= 0: {self.volume}")

    @property
    def close_time(self) -> datetime:
        return utc_from_unix_seconds(self.ts_event.timestamp() + self.granularity_seconds)


@dataclass(frozen=True)
class SkippedRow:
    reason: str  # short, groupable: "missing field", "non-numeric price", "outside window", ...
    raw: str  # the offending row, truncated


@dataclass
class FeedFetchResult:
    candles: list[Candle]
    pages_fetched: int = 0
    skipped: list[SkippedRow] = field(default_factory=list)

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.skipped:
            counts[row.reason] = counts.get(row.reason, 0) + 1
        return counts


def truncate_raw(row: object, limit: int = 200) -> str:
    text = repr(row)
    return text if len(text) <= limit else text[:limit] + "..."


class FeedResource(dg.ConfigurableResource):
    """Where a competition's prices come from (synthetic, CSV replay, Pyth, Binance).

    Implementations return only closed candles: a bar whose close time is after `as_of` is still
    forming and is never returned as final. They never invent a price.
    """

    granularity_seconds: int = 60

    @abstractmethod
    def source_name(self) -> str:
        """Stored as feed_records.source, e.g. "synthetic", "binance", "pyth"."""

    def validate_subjects(self, subjects: list[str]) -> None:
        """Fail at load time, naming the subject, if a subject cannot be served."""

    @abstractmethod
    def fetch_candles(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        """Closed candles of `subject` whose open time is in [start, end) and close time <= as_of,
        ascending by time. Malformed upstream rows are skipped and reported, never raised."""

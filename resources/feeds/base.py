"""The feed interface: a source of records (closed OHLCV candles, ticks, or any other kind) for a
subject and a time window.

Every record has an observation time: when its value was known. A candle is observed at its close
(open time + granularity), a tick or any other record at its event time. Feed windows, fetched
spans, model inputs and ground truth are all expressed in observation time.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import dagster as dg


CANDLE = "candle"
TICK = "tick"


def granularity_label(granularity_seconds: int) -> str:
    """60 -> '1m', 3600 -> '1h', 86400 -> '1d', 0 -> 'tick' (stored in feed_records.granularity)."""
    if granularity_seconds == 0:
        return "tick"
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

    kind = CANDLE

    @property
    def close_time(self) -> datetime:
        return utc_from_unix_seconds(self.ts_event.timestamp() + self.granularity_seconds)

    @property
    def observed_at(self) -> datetime:
        return self.close_time

    @property
    def price(self) -> float:
        return self.close

    @property
    def values(self) -> dict:
        return {"open": self.open, "high": self.high, "low": self.low, "close": self.close, "volume": self.volume}


@dataclass(frozen=True)
class Tick:
    """One price observation (e.g. a Pyth Hermes latest price), observed at ts_event."""

    subject: str
    ts_event: datetime
    price: float
    granularity_seconds: int = 0
    kind = TICK

    def __post_init__(self) -> None:
        if self.ts_event.tzinfo is None:
            raise ValueError(f"tick time must be timezone-aware UTC, got naive {self.ts_event!r}")
        if not (math.isfinite(self.price) and self.price > 0):
            raise ValueError(f"tick price must be finite and positive: {self.price}")

    @property
    def observed_at(self) -> datetime:
        return self.ts_event

    @property
    def values(self) -> dict:
        return {"price": self.price}


@dataclass(frozen=True)
class FeedRecord:
    """A record of any other kind: its values are the competition's own shape (JSON), `price` is
    its price if it has one. Observed at ts_event + granularity_seconds."""

    subject: str
    kind: str
    ts_event: datetime
    values: dict
    price: float | None = None
    granularity_seconds: int = 0

    def __post_init__(self) -> None:
        if self.ts_event.tzinfo is None:
            raise ValueError(f"record time must be timezone-aware UTC, got naive {self.ts_event!r}")
        if self.price is not None and not math.isfinite(self.price):
            raise ValueError(f"record price must be finite: {self.price}")

    @property
    def observed_at(self) -> datetime:
        return utc_from_unix_seconds(self.ts_event.timestamp() + self.granularity_seconds)


Record = Candle | Tick | FeedRecord


@dataclass(frozen=True)
class FeedStream:
    """One stored series: what feed_records' (source, subject, kind, granularity) name."""

    source: str
    subject: str
    kind: str
    granularity_seconds: int

    @property
    def granularity(self) -> str:
        return granularity_label(self.granularity_seconds)

    @property
    def observation_lag(self) -> timedelta:
        """observed_at - ts_event for this stream's records."""
        return timedelta(seconds=self.granularity_seconds)


# Skip reasons of a row repeated in one fetch: harmless, or a conflict (other values; the first is kept).
DUPLICATE_SAME = "duplicate open time"
DUPLICATE_CONFLICT = "conflicting duplicate (other values; first kept)"


@dataclass(frozen=True)
class SkippedRow:
    reason: str  # short, groupable: "missing field", "non-numeric price", "outside window", ...
    raw: str  # the offending row, truncated


@dataclass
class FeedFetchResult:
    records: list[Record]
    pages_fetched: int = 0
    skipped: list[SkippedRow] = field(default_factory=list)
    # Whether the fetch saw everything the source has for the asked span (up to as_of). A source
    # that cannot serve a span (e.g. a latest-price API asked about the past) says False, and the
    # span is not recorded as fetched: a missing price there is never taken as proven missing.
    complete: bool = True

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.skipped:
            counts[row.reason] = counts.get(row.reason, 0) + 1
        return counts


def truncate_raw(row: object, limit: int = 200) -> str:
    text = repr(row)
    return text if len(text) <= limit else text[:limit] + "..."


class FeedResource(dg.ConfigurableResource):
    """Where a competition's records come from (synthetic, CSV replay, Pyth, Binance, or a
    competition's own source).

    Implementations return only final records: a candle whose close time is after `as_of` is
    still forming and is never returned. They never invent a value.
    """

    kind: str = CANDLE
    granularity_seconds: int = 60  # candles: the bar length; ticks: 0

    @abstractmethod
    def source_name(self) -> str:
        """Stored as feed_records.source, e.g. "synthetic", "binance", "pyth"."""

    def validate_subjects(self, subjects: list[str]) -> None:
        """Fail at load time, naming the subject, if a subject cannot be served."""

    def validate_stream(self) -> None:
        """Fail at load time if this feed cannot serve its configured kind and granularity."""
        if self.kind == CANDLE and self.granularity_seconds <= 0:
            raise ValueError(f"{type(self).__name__}: a candle feed needs granularity_seconds > 0")
        if self.kind == TICK and self.granularity_seconds != 0:
            raise ValueError(f"{type(self).__name__}: a tick feed has granularity_seconds 0")

    def stream(self, subject: str) -> FeedStream:
        return FeedStream(self.source_name(), subject, self.kind, self.granularity_seconds)

    def fetch_records(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        """Final records of `subject` observed in [start, end) and at or before as_of, ascending.
        Malformed upstream rows are skipped and reported, never raised."""
        if self.kind == CANDLE:
            lag = timedelta(seconds=self.granularity_seconds)
            return self.fetch_candles(subject, start - lag, end - lag, as_of=as_of)
        if self.kind == TICK:
            return self.fetch_ticks(subject, start, end, as_of=as_of)
        raise NotImplementedError(f"{type(self).__name__} does not serve records of kind {self.kind!r}")

    def fetch_candles(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        """Closed candles of `subject` whose open time is in [start, end) and close time <= as_of,
        ascending by time."""
        raise NotImplementedError(f"{type(self).__name__} does not serve candles")

    def fetch_ticks(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        """Ticks of `subject` with event time in [start, end) and <= as_of, ascending."""
        raise NotImplementedError(f"{type(self).__name__} does not serve ticks")

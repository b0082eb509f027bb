"""The feed interface: a source of records (closed OHLCV candles, ticks, or any other kind) for a
subject and a time window.

Every record has an observation time: when its value was known. A candle is observed at its close
(open time + granularity), a tick or any other record at its event time. Feed windows, fetched
spans, model inputs and ground truth are all expressed in observation time.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import dagster as dg
from pydantic import Field


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


# Why a row was skipped. Harmless skips lose nothing: an identical repeat, a row outside the asked
# window, an id nobody asked for. Every other skip is a *defect*: for some instant the fetch got no
# value it can trust (a malformed row, or two different values for one time), so the fetch is not
# complete and its span is fetched again (crunch_assets/defs/feed/assets.py says how often).
DUPLICATE_SAME = "duplicate open time"
DUPLICATE_CONFLICT = "conflicting duplicate"
OUTSIDE_WINDOW = "outside window"
UNREQUESTED_ID = "unrequested id"
HARMLESS_SKIPS = frozenset({DUPLICATE_SAME, OUTSIDE_WINDOW, UNREQUESTED_ID})


@dataclass(frozen=True)
class SkippedRow:
    reason: str  # short, groupable: "missing field", "non-numeric price", "outside window", ...
    raw: str  # the offending row, truncated; for a conflict, both values
    ts_event: datetime | None = None  # the record time the row stood for, when readable

    @property
    def defect(self) -> bool:
        return self.reason not in HARMLESS_SKIPS


def conflict_row(ts_event: datetime, first: object, other: object) -> SkippedRow:
    """Two different values for one record time in one fetch: both reported, neither stored."""
    return SkippedRow(DUPLICATE_CONFLICT, truncate_raw({"first": first, "other": other}, 600), ts_event)


@dataclass
class FeedFetchResult:
    records: list[Record]
    pages_fetched: int = 0
    skipped: list[SkippedRow] = field(default_factory=list)
    # Whether the fetch saw everything the source has for the asked span (up to as_of). A source
    # that cannot serve a span (e.g. a latest-price API asked about the past) says False, and the
    # span is not recorded as fetched: a missing price there is never taken as proven missing.
    # Defects (below) make a fetch incomplete too; `complete` is about the source's reach.
    complete: bool = True

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.skipped:
            counts[row.reason] = counts.get(row.reason, 0) + 1
        return counts

    @property
    def defects(self) -> list[SkippedRow]:
        """Malformed rows and conflicting duplicates: the span is not complete while there are any."""
        return [row for row in self.skipped if row.defect]

    def finish(self) -> "FeedFetchResult":
        """Records ascending by time, without any record at a conflicting time (neither of two
        different values is taken for the truth: which one came first is an accident of paging)."""
        conflicting = {row.ts_event for row in self.skipped if row.reason == DUPLICATE_CONFLICT}
        if conflicting:
            self.records = [record for record in self.records if record.ts_event not in conflicting]
        self.records.sort(key=lambda record: record.ts_event)
        return self


# The caller's deadline on a whole fetch (time.monotonic()), honoured by every HTTP request inside
# it: a live tick's feed wait ends the fetch itself, not only the wait for it.
_FETCH_DEADLINE: ContextVar[float | None] = ContextVar("feed_fetch_deadline", default=None)


@contextmanager
def fetch_deadline(deadline_monotonic: float) -> Iterator[None]:
    """Inside the block, fetches give up at `deadline_monotonic` (the earlier of it and any outer one)."""
    outer = _FETCH_DEADLINE.get()
    token = _FETCH_DEADLINE.set(deadline_monotonic if outer is None else min(outer, deadline_monotonic))
    try:
        yield
    finally:
        _FETCH_DEADLINE.reset(token)


def fetch_seconds_left() -> float | None:
    """Seconds left before the caller's fetch deadline (None: no deadline set)."""
    deadline = _FETCH_DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


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
    defect_refetches: int = Field(
        default=3, description="A fetch with malformed rows or conflicting duplicates is refetched up to this many "
        "times before its defective instants are accepted as missing (the span recorded, the gap named).",
    )
    defect_refetch_backoff_seconds: float = Field(
        default=10.0, description="Wait before the first refetch of a defective span; doubled for each next one.",
    )

    @abstractmethod
    def source_name(self) -> str:
        """Stored as feed_records.source, e.g. "synthetic", "binance", "pyth"."""

    def validate_subjects(self, subjects: list[str]) -> None:
        """Fail at load time, naming the subject, if a subject cannot be served."""

    def validate_stream(self) -> None:
        """Fail at load time if this feed cannot serve its configured kind and granularity."""
        if self.defect_refetches < 0:
            raise ValueError(f"{type(self).__name__}: defect_refetches must be >= 0, got {self.defect_refetches}")
        if not (math.isfinite(self.defect_refetch_backoff_seconds) and self.defect_refetch_backoff_seconds >= 0):
            raise ValueError(f"{type(self).__name__}: defect_refetch_backoff_seconds must be >= 0, "
                             f"got {self.defect_refetch_backoff_seconds}")
        if self.kind == CANDLE and self.granularity_seconds <= 0:
            raise ValueError(f"{type(self).__name__}: a candle feed needs granularity_seconds > 0")
        if self.kind == TICK and self.granularity_seconds != 0:
            raise ValueError(f"{type(self).__name__}: a tick feed has granularity_seconds 0")

    def stream(self, subject: str) -> FeedStream:
        return FeedStream(self.source_name(), subject, self.kind, self.granularity_seconds)

    def fetch_records(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        """Final records of `subject` observed in [start, end) and at or before as_of, ascending.
        Malformed upstream rows are skipped and reported, never raised; records at a time with
        conflicting values are left out and reported with both values."""
        if self.kind == CANDLE:
            lag = timedelta(seconds=self.granularity_seconds)
            return self.fetch_candles(subject, start - lag, end - lag, as_of=as_of).finish()
        if self.kind == TICK:
            return self.fetch_ticks(subject, start, end, as_of=as_of).finish()
        raise NotImplementedError(f"{type(self).__name__} does not serve records of kind {self.kind!r}")

    def fetch_candles(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        """Closed candles of `subject` whose open time is in [start, end) and close time <= as_of,
        ascending by time."""
        raise NotImplementedError(f"{type(self).__name__} does not serve candles")

    def fetch_ticks(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        """Ticks of `subject` with event time in [start, end) and <= as_of, ascending."""
        raise NotImplementedError(f"{type(self).__name__} does not serve ticks")

"""A deterministic synthetic price feed: the same price for the same subject and minute on every
run and every machine, computable for any minute without replaying history (so a backfill of
any past window works offline)."""

from __future__ import annotations

import math
from datetime import datetime

from resources.feeds.base import TICK, Candle, FeedFetchResult, FeedResource, Tick, utc_from_unix_seconds
from resources.feeds.synthetic_prices import JITTER, uniform, synthetic_price

def synthetic_candle(subject: str, open_unix_seconds: int, granularity_seconds: int) -> Candle:
    open_price = synthetic_price(subject, open_unix_seconds)
    close_price = synthetic_price(subject, open_unix_seconds + granularity_seconds)
    wiggle_up = abs(uniform("high", subject, open_unix_seconds)) * JITTER
    wiggle_down = abs(uniform("low", subject, open_unix_seconds)) * JITTER
    return Candle(
        subject=subject,
        ts_event=utc_from_unix_seconds(open_unix_seconds),
        open=round(open_price, 6),
        high=round(max(open_price, close_price) * (1 + wiggle_up), 6),
        low=round(min(open_price, close_price) * (1 - wiggle_down), 6),
        close=round(close_price, 6),
        volume=round(1.0 + abs(uniform("volume", subject, open_unix_seconds)) * 20.0, 8),
        granularity_seconds=granularity_seconds,
    )


class SyntheticFeed(FeedResource):
    """The embedded default: offline, deterministic, every bar of any granularity available; with
    kind "tick", one tick every tick_interval_seconds."""

    tick_interval_seconds: int = 5

    def source_name(self) -> str:
        return "synthetic"

    def validate_stream(self) -> None:
        super().validate_stream()
        if self.kind not in ("candle", TICK):
            raise ValueError(f"SyntheticFeed serves candles and ticks, not {self.kind!r}")

    def fetch_ticks(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        step = self.tick_interval_seconds
        first = math.ceil(start.timestamp() / step) * step
        stop = min(end.timestamp(), as_of.timestamp() + 1e-6)
        ticks = [
            Tick(subject, utc_from_unix_seconds(seconds), round(synthetic_price(subject, seconds), 6))
            for seconds in range(int(first), int(math.ceil(stop)), step)
        ]
        return FeedFetchResult(records=ticks, pages_fetched=1 if ticks else 0)

    def fetch_candles(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        step = self.granularity_seconds
        first = math.ceil(start.timestamp() / step) * step
        last_open_exclusive = min(end.timestamp(), as_of.timestamp() - step + 1)  # closed bars only
        candles = [
            synthetic_candle(subject, open_seconds, step)
            for open_seconds in range(int(first), int(math.ceil(last_open_exclusive)), step)
        ]
        return FeedFetchResult(records=candles, pages_fetched=1 if candles else 0)

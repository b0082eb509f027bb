"""A deterministic synthetic price feed: the same price for the same subject and minute on every
run and every machine, computable for any minute without replaying history (so a backfill of
any past window works offline)."""

from __future__ import annotations

import hashlib
import math
import struct
from datetime import datetime

from resources.feeds.base import TICK, Candle, FeedFetchResult, FeedResource, Tick, utc_from_unix_seconds

# (period in minutes, amplitude in log-price): layered smooth noise looks like a market with
# intraday wiggles and multi-day trends, yet each minute is O(len(OCTAVES)) to compute.
OCTAVES: tuple[tuple[int, float], ...] = ((3, 0.0006), (17, 0.0015), (97, 0.004), (601, 0.012), (4001, 0.05))
JITTER = 0.00025


def _uniform(*key: object) -> float:
    """A reproducible uniform number in [-1, 1) for a key (blake2b, not Python's salted hash)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return struct.unpack("<Q", digest)[0] / 2**63 - 1.0


def _smooth_noise(subject: str, octave: int, x: float) -> float:
    left = math.floor(x)
    fraction = x - left
    weight = (1 - math.cos(math.pi * fraction)) / 2  # cosine interpolation: continuous, smooth
    return _uniform(subject, octave, left) * (1 - weight) + _uniform(subject, octave, left + 1) * weight


def base_price(subject: str) -> float:
    """A plausible level per subject; unknown subjects get a stable level from their name."""
    known = {"BTC": 95_000.0, "ETH": 3_300.0, "SOL": 190.0}
    return known.get(subject, 50.0 + 50.0 * (_uniform("base", subject) + 1.0))


def synthetic_price(subject: str, unix_seconds: float) -> float:
    minutes = unix_seconds / 60.0
    log_offset = sum(
        amplitude * _smooth_noise(subject, index, minutes / period)
        for index, (period, amplitude) in enumerate(OCTAVES)
    )
    return base_price(subject) * math.exp(log_offset)


def synthetic_candle(subject: str, open_unix_seconds: int, granularity_seconds: int) -> Candle:
    open_price = synthetic_price(subject, open_unix_seconds)
    close_price = synthetic_price(subject, open_unix_seconds + granularity_seconds)
    wiggle_up = abs(_uniform("high", subject, open_unix_seconds)) * JITTER
    wiggle_down = abs(_uniform("low", subject, open_unix_seconds)) * JITTER
    return Candle(
        subject=subject,
        ts_event=utc_from_unix_seconds(open_unix_seconds),
        open=round(open_price, 6),
        high=round(max(open_price, close_price) * (1 + wiggle_up), 6),
        low=round(min(open_price, close_price) * (1 - wiggle_down), 6),
        close=round(close_price, 6),
        volume=round(1.0 + abs(_uniform("volume", subject, open_unix_seconds)) * 20.0, 8),
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

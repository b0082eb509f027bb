"""Binance spot klines as a feed: paged /api/v3/klines, closed candles only."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import Field

from resources.feeds.base import (
    DUPLICATE_SAME,
    OUTSIDE_WINDOW,
    Candle,
    FeedFetchResult,
    SkippedRow,
    conflict_row,
    truncate_raw,
)
from resources.feeds.http import (
    FeedBadRequestError,
    FeedConfigError,
    FeedResponseError,
    SECONDS_PER_DAY,
    HttpFeedResource,
    check_ohlcv,
    ohlcv_floats,
    is_integer,
    number_to_float,
    unix_ms,
)

KLINES_PATH = "/api/v3/klines"
TICKER_PRICE_PATH = "/api/v3/ticker/price"
KLINES_PAGE_LIMIT = 1000  # Binance's maximum per request

# Fixed-length Binance intervals; "1M" (calendar month) has no fixed length and is not offered.
BINANCE_INTERVALS: dict[int, str] = {
    1: "1s", 60: "1m", 180: "3m", 300: "5m", 900: "15m", 1800: "30m",
    3600: "1h", 7200: "2h", 14400: "4h", 21600: "6h", 28800: "8h", 43200: "12h",
    86400: "1d", 259200: "3d", 604800: "1w",
}

BINANCE_ADVICE: dict[int, str] = {
    400: "check `symbols` (Binance pairs look like BTCUSDT, not BTC) and granularity_seconds",
    401: "Binance market data needs no key: a 401 usually means base_url points at a proxy or the wrong host",
    403: "Binance market data needs no key: a 403 usually means a WAF block or the wrong base_url",
    418: "Binance banned this IP after repeated 429s: stop requesting until the ban lifts and lower the request rate",
    451: "Binance refuses this location: set base_url to https://data-api.binance.vision "
         "(same market-data paths)",
}

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def binance_interval(granularity_seconds: int) -> str:
    try:
        return BINANCE_INTERVALS[granularity_seconds]
    except KeyError:
        offered = ", ".join(f"{seconds} ({label})" for seconds, label in BINANCE_INTERVALS.items())
        raise FeedConfigError(
            f"binance: granularity_seconds={granularity_seconds} has no Binance interval; use one of {offered}"
        ) from None


def _utc_from_unix_ms(value_ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=value_ms)


def parse_klines(
    subject: str,
    rows: Any,
    *,
    granularity_seconds: int,
    start: datetime,
    end: datetime,
    as_of: datetime,
    seen_open_ms: dict[int, tuple] | None = None,
) -> tuple[list[Candle], list[SkippedRow]]:
    """Closed candles from one /api/v3/klines page whose open time is in [start, end).

    The still-forming candle (open + granularity > as_of) is dropped, not counted as malformed.
    Malformed rows are skipped and reported (with their open time when it is readable).
    `seen_open_ms` (open time -> values) spans the pages of one fetch: a row repeated with the
    same values is harmless, one with other values is a conflict, reported with both values (the
    fetch's finish() then leaves that time out).
    """
    if not isinstance(rows, list):
        raise FeedResponseError(f"binance: klines response is not a list: {truncate_raw(rows)}")
    granularity_ms = granularity_seconds * 1000
    start_ms, end_ms, as_of_ms = unix_ms(start), unix_ms(end), unix_ms(as_of)
    # Intervals up to a day open on multiples of the interval since the epoch; 3d and 1w do not.
    check_alignment = SECONDS_PER_DAY % granularity_seconds == 0
    seen = seen_open_ms if seen_open_ms is not None else {}
    candles: list[Candle] = []
    skipped: list[SkippedRow] = []

    def skip(reason: str, row: Any, open_ms: int | None = None) -> None:
        at = _utc_from_unix_ms(open_ms) if open_ms is not None and abs(open_ms) < 2**53 else None
        skipped.append(SkippedRow(reason=reason, raw=truncate_raw(row), ts_event=at))

    for row in rows:
        if not isinstance(row, (list, tuple)) or len(row) < 6:
            skip("wrong length", row)
            continue
        open_ms = row[0]
        if not is_integer(open_ms):
            skip("non-numeric open time", row)
            continue
        if check_alignment and open_ms % granularity_ms != 0:
            skip("unaligned open time", row, open_ms)
            continue
        if not start_ms <= open_ms < end_ms:
            skip(OUTSIDE_WINDOW, row, open_ms)
            continue
        if open_ms + granularity_ms > as_of_ms:
            continue  # still forming: it becomes final on a later fetch
        try:
            open_, high, low, close, volume = ohlcv_floats(row[1:6])
        except (TypeError, ValueError):
            skip("non-numeric value", row, open_ms)
            continue
        problem = check_ohlcv(open_, high, low, close, volume)
        if problem:
            skip(problem, row, open_ms)
            continue
        values = (open_, high, low, close, volume)
        if open_ms in seen:
            if seen[open_ms] == values:
                skip(DUPLICATE_SAME, row, open_ms)
            else:
                skipped.append(conflict_row(_utc_from_unix_ms(open_ms), list(seen[open_ms]), list(values)))
            continue
        seen[open_ms] = values
        candles.append(Candle(
            subject=subject, ts_event=_utc_from_unix_ms(open_ms), open=open_, high=high, low=low,
            close=close, volume=volume, granularity_seconds=granularity_seconds,
        ))
    return candles, skipped


def _last_open_ms(rows: list[Any]) -> int | None:
    """Latest open time in a page, read even from rows whose prices are malformed (for paging)."""
    open_times = [row[0] for row in rows if isinstance(row, (list, tuple)) and row and is_integer(row[0])]
    return max(open_times) if open_times else None


class BinanceFeed(HttpFeedResource):
    """Binance spot market data. Prices are quoted in USDT, not USD."""

    base_url: str = Field(
        default="https://api.binance.com",
        description="Use https://data-api.binance.vision where api.binance.com answers 451.",
    )
    symbols: dict[str, str] = Field(
        default_factory=lambda: {"BTC": "BTCUSDT", "ETH": "ETHUSDT", "SOL": "SOLUSDT"},
        description="Subject -> Binance pair.",
    )

    def source_name(self) -> str:
        return "binance"

    def interval(self) -> str:
        return binance_interval(self.granularity_seconds)

    def symbol_for(self, subject: str) -> str:
        symbol = self.symbols.get(subject)
        if not symbol:
            raise FeedConfigError(
                f"binance: subject {subject!r} has no Binance symbol; add it to `symbols` "
                f"(mapped: {sorted(self.symbols)})"
            )
        return symbol

    def validate_stream(self) -> None:
        super().validate_stream()
        if self.kind != "candle":
            raise FeedConfigError(f"binance serves candles (klines), not {self.kind!r}")

    def validate_subjects(self, subjects: list[str]) -> None:
        self.interval()
        self.retry_policy()  # timeouts and retry budget are sane
        for subject in subjects:
            self.symbol_for(subject)

    def fetch_candles(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        interval = self.interval()
        symbol = self.symbol_for(subject)
        start, end, as_of, first_open_ms, request_end_ms = self.request_span_ms(start, end, as_of)
        granularity_ms = self.granularity_seconds * 1000
        result = FeedFetchResult(records=[])
        seen_open_ms: dict[int, tuple] = {}
        expected_pages = math.ceil(max(0, request_end_ms - first_open_ms) / granularity_ms / KLINES_PAGE_LIMIT)
        next_open_ms = first_open_ms
        while next_open_ms < request_end_ms:
            rows = self._get_klines(subject, symbol, interval, next_open_ms, request_end_ms - 1)
            result.pages_fetched += 1
            candles, skipped = parse_klines(
                subject, rows, granularity_seconds=self.granularity_seconds, start=start, end=end,
                as_of=as_of, seen_open_ms=seen_open_ms,
            )
            result.records.extend(candles)
            result.skipped.extend(skipped)
            if len(rows) < KLINES_PAGE_LIMIT:
                break  # the server has nothing more up to endTime
            last_open_ms = _last_open_ms(rows)
            if last_open_ms is None or last_open_ms < next_open_ms or result.pages_fetched > expected_pages + 2:
                raise FeedResponseError(
                    f"binance: klines paging for {symbol} does not advance past "
                    f"{_utc_from_unix_ms(next_open_ms).isoformat()} (last open time in page: {last_open_ms})"
                )
            next_open_ms = last_open_ms + granularity_ms
        return result.finish()

    def latest_price(self, subject: str) -> float:
        """Last traded price (ticker), which moves inside the still-forming candle."""
        symbol = self.symbol_for(subject)
        try:
            payload = self._http().get_json(TICKER_PRICE_PATH, {"symbol": symbol})
        except FeedBadRequestError as exc:
            raise type(exc)(f"{exc} [subject {subject!r} -> symbol {symbol!r}]", status=exc.status,
                            upstream_detail=exc.upstream_detail) from exc
        try:
            price = number_to_float(payload["price"])
        except (TypeError, ValueError, KeyError):
            raise FeedResponseError(f"binance: ticker for {symbol} has no numeric price: {truncate_raw(payload)}") from None
        if not (math.isfinite(price) and price > 0):
            raise FeedResponseError(f"binance: ticker for {symbol} has a non-positive price: {truncate_raw(payload)}")
        return price

    def _get_klines(self, subject: str, symbol: str, interval: str, start_ms: int, end_ms: int) -> Any:
        params = {"symbol": symbol, "interval": interval, "startTime": start_ms, "endTime": end_ms,
                  "limit": KLINES_PAGE_LIMIT}
        try:
            return self._http().get_json(KLINES_PATH, params)
        except FeedBadRequestError as exc:
            raise type(exc)(f"{exc} [subject {subject!r} -> symbol {symbol!r}, interval {interval}]",
                            status=exc.status, upstream_detail=exc.upstream_detail) from exc

    def _http(self):
        return self._client("binance", self.base_url, advice=BINANCE_ADVICE)

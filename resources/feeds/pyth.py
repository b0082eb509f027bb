"""Pyth as a feed: candles from the TradingView-UDF history endpoint, latest prices from Hermes."""

from __future__ import annotations

import logging
import math
import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import Field

from resources import clock
from resources.feeds.base import (
    DUPLICATE_SAME,
    OUTSIDE_WINDOW,
    UNREQUESTED_ID,
    Candle,
    FeedFetchResult,
    Tick,
    SkippedRow,
    conflict_row,
    truncate_raw,
    utc_from_unix_seconds,
)
from resources.feeds.http import (
    FeedConfigError,
    FeedNotFoundError,
    FeedResponseError,
    SECONDS_PER_DAY,
    HttpFeedResource,
    check_ohlcv,
    ohlcv_floats,
    is_integer,
    unix_ms,
)

logger = logging.getLogger(__name__)

HISTORY_PATH = "/v1/shims/tradingview/history"
LATEST_PRICE_PATH = "/v2/updates/price/latest"
API_KEY_ENV = "CRUNCH_PYTH_API_KEY"

DEFAULT_FEED_IDS: dict[str, str] = {
    "BTC": "0xe62df6c8b4a85fe1a67db44dc12de5db330f7ac66b72dc658afedf0f4a415b43",
    "ETH": "0xff61491a931112ddf1bd8147cd1b641375f79f5825126d665480874634fd0ace",
    "SOL": "0xef0d8b6fda2ceba41da15d4095d1da392a0d2f8ed0c6c7bc0f4cfac8c280b56d",
}
DEFAULT_HISTORY_SYMBOLS: dict[str, str] = {
    "BTC": "Crypto.BTC/USD",
    "ETH": "Crypto.ETH/USD",
    "SOL": "Crypto.SOL/USD",
}

# granularity_seconds -> UDF resolution (minutes, or D for a day).
PYTH_RESOLUTIONS: dict[int, str] = {
    60: "1", 120: "2", 300: "5", 900: "15", 1800: "30", 3600: "60",
    7200: "120", 14400: "240", 21600: "360", 43200: "720", 86400: "D",
}

_FEED_ID_PATTERN = re.compile(r"[0-9a-f]{64}")
_UDF_PRICE_ARRAYS = ("o", "h", "l", "c")


class TooManyDatapointsError(FeedResponseError):
    """The history endpoint refuses the window as too large; a smaller one may pass."""


def normalize_feed_id(feed_id: str) -> str:
    """Hermes returns ids lowercase and without 0x; configured ids may have either form."""
    text = feed_id.strip().lower()
    return text[2:] if text.startswith("0x") else text


def is_valid_feed_id(feed_id: str) -> bool:
    return bool(_FEED_ID_PATTERN.fullmatch(normalize_feed_id(feed_id)))


def pyth_resolution(granularity_seconds: int) -> str:
    try:
        return PYTH_RESOLUTIONS[granularity_seconds]
    except KeyError:
        offered = ", ".join(f"{seconds} ({label})" for seconds, label in PYTH_RESOLUTIONS.items())
        raise FeedConfigError(
            f"pyth: granularity_seconds={granularity_seconds} has no history resolution; use one of {offered}"
        ) from None


def _bar_time_problem(bar_time: Any, granularity_seconds: int, start_ms: int, end_ms: int) -> str | None:
    if not is_integer(bar_time):
        return "null value" if bar_time is None else "non-numeric time"
    # Bars up to a day open on multiples of their length since the epoch.
    if SECONDS_PER_DAY % granularity_seconds == 0 and bar_time % granularity_seconds != 0:
        return "unaligned open time"
    if not start_ms <= bar_time * 1000 < end_ms:
        return OUTSIDE_WINDOW
    return None


def _bar_open_time(bar_time: Any) -> datetime | None:
    """A bar's time as aware UTC when it is a plausible unix-seconds integer, else None."""
    if is_integer(bar_time) and 0 <= bar_time < 2**35:
        return utc_from_unix_seconds(bar_time)
    return None


def parse_history_bars(
    subject: str,
    payload: Any,
    *,
    granularity_seconds: int,
    start: datetime,
    end: datetime,
    as_of: datetime,
    seen_times: dict[int, tuple] | None = None,
) -> tuple[list[Candle], list[SkippedRow]]:
    """Closed candles from one UDF history response, bar open time in [start, end).

    `s`: "ok" -> bars; "no_data" -> none (not an error); "error" -> FeedResponseError
    (TooManyDatapointsError when the window is too large). The still-forming bar
    (t + granularity > as_of) is dropped; malformed entries are skipped and reported.
    Pyth publishes no traded volume: a missing `v` array means volume 0.
    """
    if not isinstance(payload, dict):
        raise FeedResponseError(f"pyth: history response is not an object: {truncate_raw(payload)}")
    status = payload.get("s")
    if status == "no_data":
        return [], []
    if status == "error":
        message = str(payload.get("errmsg") or "no errmsg")
        if "too many datapoints" in message.lower():
            raise TooManyDatapointsError(f"pyth: history refused the window: {message}")
        raise FeedResponseError(f"pyth: history error for subject {subject!r}: {message}")
    if status != "ok":
        raise FeedResponseError(f"pyth: history response has unknown status s={status!r}: {truncate_raw(payload)}")
    times = payload.get("t")
    if not isinstance(times, list):
        raise FeedResponseError(f"pyth: history response has no `t` array: {truncate_raw(payload)}")

    arrays = {name: payload.get(name) for name in _UDF_PRICE_ARRAYS}
    arrays["v"] = payload.get("v", [0.0] * len(times))  # absent: Pyth has no traded volume
    ragged = [name for name, values in arrays.items() if not isinstance(values, list) or len(values) != len(times)]
    if ragged:
        # Values can no longer be matched to times with certainty: keep none of them.
        lengths = {name: len(values) if isinstance(values, list) else None for name, values in arrays.items()}
        raw = truncate_raw({"t": len(times), **lengths})
        return [], [SkippedRow(reason="arrays of different lengths", raw=raw, ts_event=_bar_open_time(t)) for t in times]

    granularity_ms = granularity_seconds * 1000
    start_ms, end_ms, as_of_ms = unix_ms(start), unix_ms(end), unix_ms(as_of)
    seen = seen_times if seen_times is not None else {}
    candles: list[Candle] = []
    skipped: list[SkippedRow] = []
    for bar_time, *values in zip(times, arrays["o"], arrays["h"], arrays["l"], arrays["c"], arrays["v"]):
        reason = _bar_time_problem(bar_time, granularity_seconds, start_ms, end_ms)
        if reason is None and bar_time * 1000 + granularity_ms > as_of_ms:
            continue  # still forming: it becomes final on a later fetch
        if reason is None and None in values:
            reason = "null value"
        if reason is None:
            try:
                open_, high, low, close, volume = ohlcv_floats(values)
            except (TypeError, ValueError):
                reason = "non-numeric value"
            else:
                reason = check_ohlcv(open_, high, low, close, volume)
        if reason is None and bar_time in seen and seen[bar_time] != (open_, high, low, close, volume):
            skipped.append(conflict_row(utc_from_unix_seconds(bar_time), [bar_time, *seen[bar_time]],
                                        [bar_time, *values]))
            continue
        if reason is None and bar_time in seen:
            reason = DUPLICATE_SAME
        if reason is not None:
            skipped.append(SkippedRow(reason=reason, raw=truncate_raw([bar_time, *values]), ts_event=_bar_open_time(bar_time)))
            continue
        seen[bar_time] = (open_, high, low, close, volume)
        candles.append(Candle(
            subject=subject, ts_event=utc_from_unix_seconds(bar_time), open=open_, high=high, low=low,
            close=close, volume=volume, granularity_seconds=granularity_seconds,
        ))
    return candles, skipped


def parse_hermes_latest(
    payload: Any, subjects_by_feed_id: dict[str, list[str]]
) -> tuple[dict[str, tuple[datetime, float]], list[SkippedRow]]:
    """{subject: (publish_time, price)} from a Hermes latest-price response.

    `subjects_by_feed_id` is keyed by normalized id (lowercase, no 0x). Entries that cannot be read
    are skipped and reported; a subject missing from the answer is missing from the result.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("parsed"), list):
        raise FeedResponseError(f"pyth: Hermes response has no `parsed` list: {truncate_raw(payload)}")
    prices: dict[str, tuple[datetime, float]] = {}
    skipped: list[SkippedRow] = []
    for entry in payload["parsed"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            skipped.append(SkippedRow(reason="missing id", raw=truncate_raw(entry)))
            continue
        subjects = subjects_by_feed_id.get(normalize_feed_id(entry["id"]))
        if not subjects:
            skipped.append(SkippedRow(reason=UNREQUESTED_ID, raw=truncate_raw(entry)))
            continue
        quote = entry.get("price")
        try:
            mantissa = int(quote["price"])
            exponent = quote["expo"]
            publish_seconds = quote["publish_time"]
            if not (is_integer(exponent) and is_integer(publish_seconds)):
                raise TypeError("expo and publish_time must be integers")
            # Decimal keeps int(price) * 10**expo exact until the single rounding to float.
            price = float(Decimal(mantissa).scaleb(exponent))
        except (TypeError, KeyError, ValueError, InvalidOperation):
            skipped.append(SkippedRow(reason="malformed price", raw=truncate_raw(entry)))
            continue
        if not (math.isfinite(price) and price > 0):
            skipped.append(SkippedRow(reason="non-positive price", raw=truncate_raw(entry)))
            continue
        for subject in subjects:
            prices[subject] = (utc_from_unix_seconds(publish_seconds), price)
    return prices, skipped


class PythFeed(HttpFeedResource):
    """Pyth prices: 1-minute-and-up bars from the UDF history shim, spot from Hermes."""

    hermes_base_url: str = Field(default="https://hermes.pyth.network")
    history_base_url: str = Field(
        default="https://benchmarks.pyth.network",
        description="TradingView-UDF history base (path /v1/shims/tradingview/history); Pyth retired the "
                    "Benchmarks one on 2026-08-26, the Pyth Pro History API keeps the same response.",
    )
    api_key: str | None = Field(
        default=None, description=f"Sent as `Authorization: Bearer <key>`; usually EnvVar('{API_KEY_ENV}').",
    )
    feed_ids: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_FEED_IDS), description="Subject -> Hermes price feed id (hex)."
    )
    history_symbols: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_HISTORY_SYMBOLS), description="Subject -> UDF symbol."
    )
    max_bars_per_request: int = Field(default=1000, description="History windows are split into chunks of this.")
    tick_freshness_seconds: float = Field(
        default=30.0, description="Ticks: a span ending longer ago than this cannot be fetched from Hermes (latest only)."
    )

    def source_name(self) -> str:
        return "pyth"

    def resolution(self) -> str:
        return pyth_resolution(self.granularity_seconds)

    def feed_id_for(self, subject: str) -> str:
        feed_id = self.feed_ids.get(subject)
        if not feed_id:
            raise FeedConfigError(f"pyth: subject {subject!r} has no Hermes feed id; add it to `feed_ids`")
        if not is_valid_feed_id(feed_id):
            raise FeedConfigError(
                f"pyth: feed id of subject {subject!r} is not 64 hex characters (with or without 0x): {feed_id!r}"
            )
        return normalize_feed_id(feed_id)

    def history_symbol_for(self, subject: str) -> str:
        symbol = self.history_symbols.get(subject)
        if not symbol:
            raise FeedConfigError(
                f"pyth: subject {subject!r} has no history symbol; add it to `history_symbols` "
                f"(e.g. {subject!r}: 'Crypto.{subject}/USD')"
            )
        return symbol

    def validate_stream(self) -> None:
        super().validate_stream()
        if self.kind not in ("candle", "tick"):
            raise FeedConfigError(f"pyth serves candles (history) and ticks (Hermes latest), not {self.kind!r}")

    def fetch_ticks(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        """The Hermes latest price as a tick, when it was published in [start, end) and by as_of.
        Hermes serves only the present: a fetch of a span that ended more than
        `tick_freshness_seconds` ago is incomplete (nothing in it is taken as proven missing)."""
        now = clock.now()
        if (now - min(end, as_of)).total_seconds() > self.tick_freshness_seconds:
            return FeedFetchResult(records=[], complete=False)
        prices, skipped = self._latest_prices_and_skipped([subject])
        latest = prices.get(subject)
        ticks = []
        if latest is not None and start <= latest[0] < end and latest[0] <= as_of:
            ticks.append(Tick(subject, latest[0], latest[1]))
        # An entry Hermes sent malformed is a defect: the span is fetched again.
        return FeedFetchResult(records=ticks, pages_fetched=1, skipped=skipped)

    def validate_subjects(self, subjects: list[str]) -> None:
        if self.kind == "candle":
            self.resolution()
        self.retry_policy()  # timeouts and retry budget are sane
        if self.max_bars_per_request < 1:
            raise FeedConfigError(f"pyth: max_bars_per_request must be >= 1, got {self.max_bars_per_request}")
        for subject in subjects:
            self.feed_id_for(subject)
            self.history_symbol_for(subject)

    def fetch_candles(self, subject: str, start: datetime, end: datetime, *, as_of: datetime) -> FeedFetchResult:
        resolution = self.resolution()
        symbol = self.history_symbol_for(subject)
        start, end, as_of, first_open_ms, stop_ms = self.request_span_ms(start, end, as_of)
        first_bar_seconds, stop_seconds = -(-first_open_ms // 1000), -(-stop_ms // 1000)
        chunk_seconds = max(1, self.max_bars_per_request) * self.granularity_seconds
        result = FeedFetchResult(records=[])
        seen_times: dict[int, tuple] = {}
        for chunk_start in range(first_bar_seconds, stop_seconds, chunk_seconds):
            chunk_stop = min(chunk_start + chunk_seconds, stop_seconds)
            self._fetch_history_chunk(subject, symbol, resolution, chunk_start, chunk_stop,
                                      start=start, end=end, as_of=as_of, seen_times=seen_times, result=result)
        return result.finish()

    def _fetch_history_chunk(self, subject: str, symbol: str, resolution: str, chunk_start: int, chunk_stop: int,
                             *, start: datetime, end: datetime, as_of: datetime, seen_times: dict[int, tuple],
                             result: FeedFetchResult) -> None:
        """Bars opening in [chunk_start, chunk_stop) seconds; halves the chunk while the server
        says it holds too many datapoints."""
        # `to` is inclusive in some UDF servers and exclusive in others: ask up to one second before
        # the next chunk and filter on the window, which is right either way.
        params = {"symbol": symbol, "resolution": resolution, "from": chunk_start, "to": chunk_stop - 1}
        payload = self._history_http().get_json(HISTORY_PATH, params)
        try:
            candles, skipped = parse_history_bars(
                subject, payload, granularity_seconds=self.granularity_seconds, start=start, end=end,
                as_of=as_of, seen_times=seen_times,
            )
        except TooManyDatapointsError:
            granularity_seconds = self.granularity_seconds
            bars_in_chunk = math.ceil((chunk_stop - chunk_start) / granularity_seconds)
            if bars_in_chunk <= 1:
                raise
            middle = chunk_start + (bars_in_chunk // 2) * granularity_seconds
            logger.info("pyth: history refused %d bars of %s, splitting", bars_in_chunk, symbol)
            for part_start, part_stop in ((chunk_start, middle), (middle, chunk_stop)):
                self._fetch_history_chunk(subject, symbol, resolution, part_start, part_stop, start=start,
                                          end=end, as_of=as_of, seen_times=seen_times, result=result)
            return
        except FeedResponseError as exc:
            raise FeedResponseError(
                f"{exc} [symbol {symbol!r}; check history_symbols and history_base_url]"
            ) from exc
        result.pages_fetched += 1
        result.records.extend(candles)
        result.skipped.extend(skipped)

    def latest_prices(self, subjects: list[str]) -> dict[str, tuple[datetime, float]]:
        """{subject: (publish_time aware UTC, price)} from Hermes. A subject Hermes does not
        answer for is absent: no price is ever made up."""
        prices, skipped = self._latest_prices_and_skipped(subjects)
        for row in skipped:
            logger.warning("pyth: skipped Hermes entry (%s): %s", row.reason, row.raw)
        return prices

    def _latest_prices_and_skipped(self, subjects: list[str]) -> tuple[dict[str, tuple[datetime, float]], list[SkippedRow]]:
        subjects_by_feed_id: dict[str, list[str]] = {}
        for subject in subjects:
            subjects_by_feed_id.setdefault(self.feed_id_for(subject), []).append(subject)
        if not subjects_by_feed_id:
            return {}, []
        params = [("ids[]", feed_id) for feed_id in subjects_by_feed_id] + [("parsed", "true")]
        try:
            payload = self._hermes_http().get_json(LATEST_PRICE_PATH, params)
        except FeedNotFoundError as exc:
            requested = ", ".join(f"{subject}={feed_id}" for feed_id, names in subjects_by_feed_id.items()
                                  for subject in names)
            raise FeedNotFoundError(f"{exc} [requested {requested}]", status=exc.status,
                                    upstream_detail=exc.upstream_detail) from exc
        return parse_hermes_latest(payload, subjects_by_feed_id)

    def _api_key(self) -> str | None:
        return self.api_key.strip() if self.api_key and self.api_key.strip() else None

    def _auth_headers(self) -> dict[str, str]:
        key = self._api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _auth_advice(self, service: str) -> dict[int, str]:
        if self._api_key():
            refused = f"Pyth {service} refused the API key: check api_key / {API_KEY_ENV}"
            return {401: refused, 403: refused}
        missing = f"Pyth {service} now requires an API key: set api_key / {API_KEY_ENV}"
        return {401: missing, 403: missing}

    def _hermes_http(self):
        advice = {
            **self._auth_advice("Hermes"),
            404: "Hermes does not know a requested feed id: check feed_ids "
                 "(ids at https://pyth.network/developers/price-feed-ids)",
        }
        return self._client("hermes", self.hermes_base_url, headers=self._auth_headers(), advice=advice)

    def _history_http(self):
        advice = {
            **self._auth_advice("history"),
            404: "history path not found: the Benchmarks shim was retired on 2026-08-26, set history_base_url "
                 "to the Pyth Pro History API",
        }
        return self._client("history", self.history_base_url, headers=self._auth_headers(), advice=advice)

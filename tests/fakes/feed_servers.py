"""Local fake Binance, Pyth history and Pyth Hermes servers serving the real BTC/USD CSV candles.

Real HTTP on 127.0.0.1 (ThreadingHTTPServer in a thread, HTTP/1.1 keep-alive) with the upstream
wire shapes from /work/shared/reference/feeds-and-models.md, plus programmable faults:

    with FakeBinanceServer() as binance:
        binance.rate_limit_next(3, retry_after_seconds=1)   # 3 x 429 with Retry-After
        binance.server_error_next(2)                         # 2 x 503
        binance.server_error_always()                        # 503 forever
        binance.delay_next(1, seconds=2.0)                   # answer after 2 s
        binance.trickle_next(1, seconds_per_byte=1.0)        # the body one byte a second
        binance.trickle_next(2, seconds_per_byte=1.0, headers=True)  # headers and body, a byte a second
        binance.trickle_every(2)                             # every 2nd request trickles (until cleared)
        binance.fail_next(1, 451)                            # any status (418, 451, 401, ...)
        binance.remove_range("BTCUSDT", start_ts, end_ts)    # a gap in the data
        binance.replace_row("BTCUSDT", ts, ["garbage"])      # a malformed row
        binance.add_row("BTCUSDT", ts, row)                  # a second row for ts (a duplicate)
        binance.now_seconds = ts + 30                        # the bar opening at ts is still forming

Faults are consumed in order, one per request, on every path.
"""

from __future__ import annotations

import bisect
import csv
import functools
import json
import math
import multiprocessing
import os
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

BTCUSD_CSV_PATH = Path(
    os.environ.get("CRUNCH_BTCUSD_CSV", "/work/shared/data/btcusd_bitstamp_1min_2025-01-07_2025-02-02.csv")
)
MINUTE_SECONDS = 60

PYTH_FEED_IDS = {  # normalized like Hermes answers: lowercase, no 0x
    "BTC": "e62df6c8b4a85fe1a67db44dc12de5db330f7ac66b72dc658afedf0f4a415b43",
    "ETH": "ff61491a931112ddf1bd8147cd1b641375f79f5825126d665480874634fd0ace",
    "SOL": "ef0d8b6fda2ceba41da15d4095d1da392a0d2f8ed0c6c7bc0f4cfac8c280b56d",
}
# Rough level of ETH and SOL against BTC, to derive plausible series from the BTC candles.
PRICE_SCALE_VS_BTC = {"BTC": 1.0, "ETH": 0.033, "SOL": 0.0021}
BINANCE_SYMBOLS = {"BTC": "BTCUSDT", "ETH": "ETHUSDT", "SOL": "SOLUSDT"}
BINANCE_INTERVALS = {"1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"}


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MinuteCandle:
    ts: int  # open time, unix seconds
    open: float
    high: float
    low: float
    close: float
    volume: float


@functools.lru_cache(maxsize=4)
def load_csv_candles(path: str = str(BTCUSD_CSV_PATH)) -> tuple[MinuteCandle, ...]:
    with open(path, newline="") as handle:
        return tuple(
            MinuteCandle(int(row["timestamp"]), float(row["open"]), float(row["high"]), float(row["low"]),
                         float(row["close"]), float(row["volume"]))
            for row in csv.DictReader(handle)
        )


def derived_series(base: Sequence[MinuteCandle], *, start_ts: int, count: int, price_scale: float = 1.0,
                   offset_rows: int = 0) -> list[MinuteCandle]:
    """`count` contiguous minutes from start_ts, reusing `base` cyclically from offset_rows with
    prices scaled (to stand in for other subjects or longer spans than the CSV)."""
    digits = max(2, 2 - int(math.floor(math.log10(price_scale)))) if price_scale != 1.0 else 8
    size = len(base)
    series = []
    for index in range(count):
        source = base[(offset_rows + index) % size]
        prices = [round(value * price_scale, digits) for value in (source.open, source.high, source.low, source.close)]
        series.append(MinuteCandle(start_ts + index * MINUTE_SECONDS, *prices, source.volume))
    return series


def subject_series(subject: str, *, start_ts: int | None = None, count: int | None = None) -> tuple[MinuteCandle, ...]:
    """The CSV for BTC; for ETH/SOL the CSV shifted by some days and scaled to their level."""
    base = load_csv_candles()
    return _subject_series(subject, base[0].ts if start_ts is None else start_ts,
                           len(base) if count is None else count)


@functools.lru_cache(maxsize=16)
def _subject_series(subject: str, start_ts: int, count: int) -> tuple[MinuteCandle, ...]:
    base = load_csv_candles()
    if subject == "BTC" and start_ts == base[0].ts and count <= len(base):
        return base[:count]
    offset_rows = {"BTC": 0, "ETH": 7 * 1440, "SOL": 13 * 1440}.get(subject, 0)
    return tuple(derived_series(base, start_ts=start_ts, count=count,
                                price_scale=PRICE_SCALE_VS_BTC.get(subject, 1.0), offset_rows=offset_rows))


class MinuteSeries:
    """Candles of one symbol ascending by time, with gaps and the fake clock applied on read."""

    def __init__(self, candles: Sequence[MinuteCandle]) -> None:
        self._candles = sorted(candles, key=lambda candle: candle.ts)
        self._times = [candle.ts for candle in self._candles]

    def __len__(self) -> int:
        return len(self._candles)

    def remove_range(self, start_ts: int, end_ts: int) -> int:
        """Drop candles opening in [start_ts, end_ts); returns how many."""
        low, high = bisect.bisect_left(self._times, start_ts), bisect.bisect_left(self._times, end_ts)
        del self._candles[low:high]
        del self._times[low:high]
        return high - low

    def index_range(self, first_ts: int, last_ts: int, now_ts: int | None) -> range:
        """Indexes of candles opening in [first_ts, last_ts] that exist at now_ts."""
        if now_ts is not None:
            last_ts = min(last_ts, now_ts)
        return range(bisect.bisect_left(self._times, first_ts), bisect.bisect_right(self._times, last_ts))

    def candle_at(self, index: int, now_ts: int | None) -> MinuteCandle:
        """The candle as the upstream would show it at now_ts: a bar containing now is still
        forming, so it shows partial values."""
        candle = self._candles[index]
        if now_ts is None or now_ts >= candle.ts + MINUTE_SECONDS:
            return candle
        elapsed = (now_ts - candle.ts) / MINUTE_SECONDS
        partial_close = round(candle.open + (candle.close - candle.open) * elapsed, 8)
        return replace(candle, high=max(candle.open, partial_close), low=min(candle.open, partial_close),
                       close=partial_close, volume=round(candle.volume * elapsed, 8))

    def latest_index(self, now_ts: int | None) -> int | None:
        index = len(self._times) - 1 if now_ts is None else bisect.bisect_right(self._times, now_ts) - 1
        return index if index >= 0 else None

    @property
    def first_ts(self) -> int:
        return self._times[0]

    @property
    def times(self) -> list[int]:
        return self._times


# --- server base --------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class _PlannedTrickle:
    remaining: float  # math.inf for "always"
    seconds_per_byte: float
    headers: bool  # the status line and headers trickle too, not only the body


@dataclass
class _PlannedFailure:
    remaining: float  # math.inf for "always"
    status: int
    body: bytes
    headers: dict[str, str]


Response = tuple[int, dict[str, str], bytes]


def json_response(payload: Any, status: int = 200) -> Response:
    return status, {"Content-Type": "application/json"}, json.dumps(payload, separators=(",", ":")).encode()


def text_response(text: str, status: int) -> Response:
    return status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode()


class FakeFeedServer:
    """A real HTTP server on 127.0.0.1 with a free port. Subclasses implement route()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: deque[_PlannedFailure] = deque()
        self._delays: deque[list[float]] = deque()  # [remaining count, seconds]
        self._trickles: deque[_PlannedTrickle] = deque()
        self._trickle_every = 0  # every n-th request trickles (0: none)
        self._trickle_every_seconds_per_byte = 1.0
        self._answered = 0
        self.trickled = 0  # requests answered by trickling
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[RecordedRequest] = []
        self.now_seconds: int | None = None  # the fake's clock; None = every bar is closed
        self._tls: tuple[str, str] | None = None

    # lifecycle

    def use_tls(self, certfile: str, keyfile: str) -> "FakeFeedServer":
        """Serve HTTPS with this certificate (before start())."""
        self._tls = (str(certfile), str(keyfile))
        return self

    def start(self) -> "FakeFeedServer":
        handler = type("FakeFeedHandler", (_FakeFeedHandler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if self._tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self._tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, address: None  # clients that gave up are expected
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes delayed handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host}:{port}"

    # faults

    def fail_next(self, count: float, status: int, *, body: bytes | str | dict | None = None,
                  headers: dict[str, str] | None = None) -> None:
        """The next `count` requests (math.inf: all) get `status` instead of an answer."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        with self._lock:
            self._failures.append(_PlannedFailure(count, status, body or b"", dict(headers or {})))

    def rate_limit_next(self, count: int, *, retry_after_seconds: float = 1) -> None:
        self.fail_next(count, 429, headers={"Retry-After": f"{retry_after_seconds:g}"},
                       body={"code": -1003, "msg": "Too many requests; current limit is exceeded."})

    def server_error_next(self, count: int, status: int = 503) -> None:
        self.fail_next(count, status, body="Service Unavailable")

    def server_error_always(self, status: int = 503) -> None:
        self.fail_next(math.inf, status, body="Service Unavailable")

    def delay_next(self, count: int, seconds: float) -> None:
        """The next `count` requests are answered only after `seconds`."""
        with self._lock:
            self._delays.append([count, seconds])

    def trickle_next(self, count: float, *, seconds_per_byte: float = 1.0, headers: bool = False) -> None:
        """The next `count` answers (math.inf: all) are written one byte every `seconds_per_byte`:
        the body only, or (headers=True) the status line and headers too. Every single read gets a
        byte well within any read timeout; only a deadline on the whole response ends it."""
        with self._lock:
            self._trickles.append(_PlannedTrickle(count, seconds_per_byte, headers))

    def trickle_every(self, nth: int, *, seconds_per_byte: float = 1.0) -> None:
        """Every `nth` request from now on trickles its body (0 stops it)."""
        with self._lock:
            self._trickle_every = nth
            self._trickle_every_seconds_per_byte = seconds_per_byte
            self._answered = 0

    def clear_faults(self) -> None:
        with self._lock:
            self._failures.clear()
            self._delays.clear()
            self._trickles.clear()
            self._trickle_every = 0

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    # request handling

    def _planned(self) -> tuple[float, _PlannedFailure | None]:
        with self._lock:
            delay_seconds = 0.0
            if self._delays:
                self._delays[0][0] -= 1
                delay_seconds = self._delays[0][1]
                if self._delays[0][0] <= 0:
                    self._delays.popleft()
            failure = None
            if self._failures:
                failure = self._failures[0]
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.popleft()
            return delay_seconds, failure

    def _planned_trickle(self) -> _PlannedTrickle | None:
        with self._lock:
            self._answered += 1
            trickle = None
            if self._trickles:
                trickle = self._trickles[0]
                trickle.remaining -= 1
                if trickle.remaining <= 0:
                    self._trickles.popleft()
            elif self._trickle_every and self._answered % self._trickle_every == 0:
                trickle = _PlannedTrickle(1, self._trickle_every_seconds_per_byte, False)
            if trickle is not None:
                self.trickled += 1
            return trickle

    def write_trickling(self, wfile, head: bytes, body: bytes, trickle: _PlannedTrickle) -> None:
        """Write the response a byte at a time (the head at once unless it trickles too), until
        done, the client leaves, or the server stops."""
        if not trickle.headers:
            wfile.write(head)
            wfile.flush()
        for byte in (head + body if trickle.headers else body):
            if self._stopping.wait(trickle.seconds_per_byte):
                return
            wfile.write(bytes((byte,)))
            wfile.flush()

    def _answer(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> Response:
        with self._lock:
            self.requests.append(RecordedRequest(path, query, headers))
        delay_seconds, failure = self._planned()
        if delay_seconds and self._stopping.wait(delay_seconds):
            return text_response("server stopping", 503)
        if failure is not None:
            return failure.status, {"Content-Type": "application/json", **failure.headers}, failure.body
        return self.route(path, query, headers)

    def route(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> Response:
        raise NotImplementedError


class _FakeFeedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real services
    fake: FakeFeedServer

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            status, response_headers, body = self.fake._answer(parts.path, query, headers)
        except Exception as exc:  # a bug in the fake must show, not hang the client
            status, response_headers, body = text_response(f"fake server error: {exc!r}", 500)
        trickle = self.fake._planned_trickle()
        try:
            if trickle is not None:
                self.close_connection = True  # a client that gave up left the rest unread
                lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
                         *(f"{name}: {value}" for name, value in response_headers.items()),
                         f"Content-Length: {len(body)}", "Connection: close"]
                head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
                self.fake.write_trickling(self.wfile, head, body, trickle)
                return
            self.send_response(status)
            for name, value in response_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client timed out and left

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _int_param(query: dict[str, list[str]], name: str) -> int | None:
    values = query.get(name)
    if not values or values[0] == "":
        return None
    return int(values[0])


# --- Binance ------------------------------------------------------------------------------------


def kline_row(candle: MinuteCandle) -> list[Any]:
    open_ms = candle.ts * 1000
    quote_volume = candle.volume * candle.close
    return [open_ms, f"{candle.open:.8f}", f"{candle.high:.8f}", f"{candle.low:.8f}", f"{candle.close:.8f}",
            f"{candle.volume:.8f}", open_ms + MINUTE_SECONDS * 1000 - 1, f"{quote_volume:.8f}", 1 + int(candle.volume * 10),
            f"{candle.volume / 2:.8f}", f"{quote_volume / 2:.8f}", "0"]


class FakeBinanceServer(FakeFeedServer):
    """/api/v3/klines (1m only) and /api/v3/ticker/price."""

    def __init__(self, series_by_symbol: dict[str, Sequence[MinuteCandle]] | None = None) -> None:
        super().__init__()
        if series_by_symbol is None:
            series_by_symbol = {"BTCUSDT": load_csv_candles()}
        self.series = {symbol: MinuteSeries(candles) for symbol, candles in series_by_symbol.items()}
        self._replaced_rows: dict[tuple[str, int], Any] = {}
        self._added_rows: dict[tuple[str, int], list[Any]] = {}
        self._row_json_cache: dict[str, dict[int, str]] = {}  # symbol -> {open ts: encoded row}

    def remove_range(self, symbol: str, start_ts: int, end_ts: int) -> int:
        with self._lock:
            return self.series[symbol].remove_range(start_ts, end_ts)

    def encode_all_rows(self) -> None:
        with self._lock:
            for symbol, series in self.series.items():
                row_json = self._row_json_cache.setdefault(symbol, {})
                for index, ts in enumerate(series.times):
                    row_json[ts] = json.dumps(kline_row(series.candle_at(index, None)), separators=(",", ":"))

    def replace_row(self, symbol: str, ts: int, raw_row: Any) -> None:
        """Serve `raw_row` (anything JSON) in place of the kline opening at ts."""
        with self._lock:
            self._replaced_rows[(symbol, ts)] = raw_row

    def add_row(self, symbol: str, ts: int, raw_row: Any) -> None:
        """Serve `raw_row` too, right after the kline opening at ts (a repeated open time)."""
        with self._lock:
            self._added_rows.setdefault((symbol, ts), []).append(raw_row)

    def clear_rows(self) -> None:
        """Serve every kline as it is again (no replaced or added rows)."""
        with self._lock:
            self._replaced_rows.clear()
            self._added_rows.clear()

    def route(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> Response:
        if path == "/api/v3/klines":
            return self._klines(query)
        if path == "/api/v3/ticker/price":
            return self._ticker_price(query)
        return json_response({"code": -1000, "msg": f"unknown path {path}"}, 404)

    def _symbol_series(self, query: dict[str, list[str]]) -> tuple[str, MinuteSeries | None, Response | None]:
        symbol = (query.get("symbol") or [""])[0]
        if not symbol:
            return symbol, None, json_response(
                {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."}, 400)
        series = self.series.get(symbol)
        if series is None:
            return symbol, None, json_response({"code": -1121, "msg": "Invalid symbol."}, 400)
        return symbol, series, None

    def _klines(self, query: dict[str, list[str]]) -> Response:
        symbol, series, error = self._symbol_series(query)
        if error:
            return error
        interval = (query.get("interval") or [""])[0]
        if interval not in BINANCE_INTERVALS:
            return json_response({"code": -1120, "msg": "Invalid interval."}, 400)
        if interval != "1m":
            return json_response({"code": -1120, "msg": "Invalid interval (this fake serves 1m only)."}, 400)
        try:
            limit = _int_param(query, "limit") or 500  # Binance's default
            start_ms, end_ms = _int_param(query, "startTime"), _int_param(query, "endTime")
        except ValueError:
            return json_response({"code": -1100, "msg": "Illegal characters found in a parameter."}, 400)
        if not 1 <= limit <= 1000:
            return json_response({"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}, 400)
        now_ts = self.now_seconds
        with self._lock:
            first_ts = -(-start_ms // 1000) if start_ms is not None else 0
            last_ts = end_ms // 1000 if end_ms is not None else 2**62
            indexes = series.index_range(first_ts, last_ts, now_ts)
            # startTime given: the first `limit` from it; otherwise the last `limit` (most recent).
            indexes = indexes[:limit] if start_ms is not None else indexes[-limit:]
            row_json = self._row_json_cache.setdefault(symbol, {})
            parts = []
            for index in indexes:
                ts = series.times[index]
                if (symbol, ts) in self._replaced_rows:
                    parts.append(json.dumps(self._replaced_rows[(symbol, ts)]))
                elif now_ts is not None and now_ts < ts + MINUTE_SECONDS:
                    parts.append(json.dumps(kline_row(series.candle_at(index, now_ts))))
                else:
                    encoded = row_json.get(ts)
                    if encoded is None:  # encoded once: keeps the fake fast enough for benchmarks
                        encoded = row_json[ts] = json.dumps(kline_row(series.candle_at(index, None)),
                                                            separators=(",", ":"))
                    parts.append(encoded)
                parts.extend(json.dumps(extra) for extra in self._added_rows.get((symbol, ts), ()))
        return 200, {"Content-Type": "application/json"}, ("[" + ",".join(parts) + "]").encode()

    def _ticker_price(self, query: dict[str, list[str]]) -> Response:
        symbol, series, error = self._symbol_series(query)
        if error:
            return error
        index = series.latest_index(self.now_seconds)
        if index is None:
            return json_response({"code": -1121, "msg": "Invalid symbol."}, 400)
        candle = series.candle_at(index, self.now_seconds)
        return json_response({"symbol": symbol, "price": f"{candle.close:.8f}"})


# --- Pyth history (TradingView UDF) -------------------------------------------------------------


class FakePythHistoryServer(FakeFeedServer):
    """/v1/shims/tradingview/history, resolution 1 only; `max_datapoints` bounds the asked window."""

    def __init__(self, series_by_symbol: dict[str, Sequence[MinuteCandle]] | None = None, *,
                 max_datapoints: int = 5000, required_api_key: str | None = None) -> None:
        super().__init__()
        if series_by_symbol is None:
            series_by_symbol = {"Crypto.BTC/USD": load_csv_candles()}
        self.series = {symbol: MinuteSeries(candles) for symbol, candles in series_by_symbol.items()}
        self.max_datapoints = max_datapoints
        self.required_api_key = required_api_key
        self._bar_overrides: dict[tuple[str, int], dict[str, Any]] = {}
        self._added_bars: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self._ragged_responses = 0

    def remove_range(self, symbol: str, start_ts: int, end_ts: int) -> int:
        with self._lock:
            return self.series[symbol].remove_range(start_ts, end_ts)

    def corrupt_bar(self, symbol: str, ts: int, **values: Any) -> None:
        """Serve other values for the bar at ts, e.g. corrupt_bar(s, ts, c=None) or o="abc"."""
        with self._lock:
            self._bar_overrides.setdefault((symbol, ts), {}).update(values)

    def add_bar(self, symbol: str, ts: int, **values: Any) -> None:
        """Serve a second bar with time ts right after it: the real bar's values, with `values` over them."""
        with self._lock:
            self._added_bars.setdefault((symbol, ts), []).append(values)

    def clear_bars(self) -> None:
        """Serve every bar as it is again (no corrupted or added bars)."""
        with self._lock:
            self._bar_overrides.clear()
            self._added_bars.clear()

    def ragged_next(self, count: int) -> None:
        """The next `count` ok-responses have a `c` array one element short."""
        with self._lock:
            self._ragged_responses += count

    def route(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> Response:
        if path != "/v1/shims/tradingview/history":
            return text_response("Not Found", 404)
        if self.required_api_key and headers.get("authorization") != f"Bearer {self.required_api_key}":
            return text_response("Unauthorized", 401)
        symbol = (query.get("symbol") or [""])[0]
        resolution = (query.get("resolution") or [""])[0]
        try:
            from_ts, to_ts = _int_param(query, "from"), _int_param(query, "to")
        except ValueError:
            return json_response({"s": "error", "errmsg": "from/to must be unix seconds"})
        if from_ts is None or to_ts is None:
            return json_response({"s": "error", "errmsg": "from and to are required"})
        series = self.series.get(symbol)
        if series is None:
            return json_response({"s": "error", "errmsg": f"Symbol not found: {symbol}"})
        if resolution != "1":
            return json_response({"s": "error", "errmsg": f"Unsupported resolution {resolution} (fake serves 1)"})
        if (to_ts - from_ts) // MINUTE_SECONDS + 1 > self.max_datapoints:
            return json_response({"s": "error", "errmsg": "Too many datapoints to return"})
        now_ts = self.now_seconds
        with self._lock:
            indexes = series.index_range(from_ts, to_ts, now_ts)
            if not indexes:
                earlier = series.index_range(0, from_ts - 1, now_ts)
                payload: dict[str, Any] = {"s": "no_data"}
                if earlier:
                    payload["nextTime"] = series.times[earlier[-1]]
                return json_response(payload)
            arrays: dict[str, list[Any]] = {"t": [], "o": [], "h": [], "l": [], "c": [], "v": []}
            for index in indexes:
                candle = series.candle_at(index, now_ts)
                bar = {"t": candle.ts, "o": candle.open, "h": candle.high, "l": candle.low, "c": candle.close,
                       "v": candle.volume}
                bar.update(self._bar_overrides.get((symbol, candle.ts), {}))
                for extra in [{}, *self._added_bars.get((symbol, candle.ts), ())]:
                    for name, values in arrays.items():
                        values.append({**bar, **extra}[name])
            if self._ragged_responses > 0:
                self._ragged_responses -= 1
                arrays["c"].pop()
        return json_response({"s": "ok", **arrays})


# --- Pyth Hermes --------------------------------------------------------------------------------


class FakeHermesServer(FakeFeedServer):
    """/v2/updates/price/latest: the latest close at the fake's clock, expo -8, ids lowercase without 0x."""

    def __init__(self, series_by_feed_id: dict[str, Sequence[MinuteCandle]] | None = None, *,
                 required_api_key: str | None = None) -> None:
        super().__init__()
        if series_by_feed_id is None:
            series_by_feed_id = {feed_id: subject_series(subject) for subject, feed_id in PYTH_FEED_IDS.items()}
        self.series = {_normalize_id(feed_id): MinuteSeries(candles) for feed_id, candles in series_by_feed_id.items()}
        self.required_api_key = required_api_key

    def route(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> Response:
        if path != "/v2/updates/price/latest":
            return text_response("Not Found", 404)
        if self.required_api_key and headers.get("authorization") != f"Bearer {self.required_api_key}":
            return text_response("Unauthorized: an API key is required (Authorization: Bearer <key>)", 401)
        requested = [_normalize_id(value) for value in query.get("ids[]", [])]
        if not requested:
            return text_response("Missing query parameter: ids[]", 400)
        ignore_invalid = (query.get("ignore_invalid_price_ids") or ["false"])[0] == "true"
        unknown = [feed_id for feed_id in requested if feed_id not in self.series]
        if unknown and not ignore_invalid:
            return text_response(f"Price ids not found: {', '.join(unknown)}", 404)
        parsed = []
        for feed_id in dict.fromkeys(requested):
            series = self.series.get(feed_id)
            index = series.latest_index(self.now_seconds) if series is not None else None
            if index is None:
                continue
            candle = series.candle_at(index, self.now_seconds)
            publish_time = candle.ts + MINUTE_SECONDS - 1 if self.now_seconds is None else self.now_seconds
            quote = {"price": str(int(round(candle.close * 1e8))), "conf": "50000000", "expo": -8,
                     "publish_time": publish_time}
            parsed.append({"id": feed_id, "price": quote, "ema_price": dict(quote),
                           "metadata": {"slot": 85480034 + index, "proof_available_time": publish_time,
                                        "prev_publish_time": publish_time - 1}})
        payload: dict[str, Any] = {"binary": {"encoding": "hex", "data": ["504e4155" + "00" * 32]}}
        if (query.get("parsed") or ["true"])[0] == "true":
            payload["parsed"] = parsed
        return json_response(payload)


def _normalize_id(feed_id: str) -> str:
    text = feed_id.strip().lower()
    return text[2:] if text.startswith("0x") else text


# --- a fake Binance in another process (benchmarks) ---------------------------------------------


def binance_series_for_subjects(subjects: Sequence[str], *, start_ts: int, days: float) -> dict[str, Sequence[MinuteCandle]]:
    count = int(days * 1440)
    return {BINANCE_SYMBOLS.get(subject, f"{subject}USDT"): subject_series(subject, start_ts=start_ts, count=count)
            for subject in subjects}


def _serve_binance(subjects: Sequence[str], start_ts: int, days: float, url_pipe, stop_event) -> None:
    server = FakeBinanceServer(binance_series_for_subjects(subjects, start_ts=start_ts, days=days)).start()
    server.encode_all_rows()  # before the benchmark's clock starts
    url_pipe.send(server.url)
    stop_event.wait()
    server.stop()


@contextmanager
def binance_in_subprocess(subjects: Sequence[str], *, start_ts: int, days: float,
                          startup_timeout_seconds: float = 120) -> Iterator[str]:
    """A FakeBinanceServer in its own process (its JSON work does not compete for this process's
    GIL); yields its URL."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=False)
    stop_event = context.Event()
    process = context.Process(target=_serve_binance, args=(list(subjects), start_ts, days, child_end, stop_event),
                              daemon=True)
    process.start()
    try:
        if not parent_end.poll(startup_timeout_seconds):
            raise RuntimeError("fake Binance server did not start in time")
        yield parent_end.recv()
    finally:
        stop_event.set()
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)


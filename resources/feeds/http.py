"""Shared HTTP layer of the live feeds: JSON GETs with timeouts, bounded retries and clear errors.

Transient failures (timeouts, connection errors, 5xx, 408) are retried with exponential backoff and
full jitter; 429 waits what `Retry-After` asks. Failures only an operator can fix (400, 401, 403,
404, 418, 451, ...) raise at once with a message saying what to change. Every request is bounded in
attempts and in total time, including the time spent waiting between attempts, and every response
body in size: bodies are streamed, a 2xx body over `max_response_bytes` (declared by Content-Length
or counted as it arrives, after decompression) raises FeedResponseTooLargeError without being read
further and is not retried, and of an error status only the first 64 KiB are kept for the message.

Every attempt has a deadline on the whole response, connect + headers + body
(`response_timeout_seconds`, and never past `max_total_seconds` or the caller's `fetch_deadline`).
requests' and urllib3's timeouts are per socket read, so a server that sends a byte now and then
never trips them, and urllib3 reads a body in blocks that only return once full: a watchdog timer
shuts the attempt's socket down at its deadline, which ends any read blocked on it, and the
attempt fails as a timeout (retried while the budget lasts).
"""

from __future__ import annotations

import json
import logging
import math
import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Mapping, Sequence

import dagster as dg
import requests
import urllib3
from pydantic import Field, PrivateAttr
from requests.adapters import HTTPAdapter

from resources import clock
from resources.feeds.base import FeedResource, fetch_seconds_left, truncate_raw

SECONDS_PER_DAY = 86_400

logger = logging.getLogger(__name__)

Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | None
SleepFunction = Callable[[float], None]

_BODY_CHUNK_BYTES = 64 * 1024
_UPSTREAM_DETAIL_CHARS = 300
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # a 1000-kline Binance page is ~0.2 MB
_ERROR_BODY_MAX_BYTES = 64 * 1024  # of a non-2xx body: enough for the upstream's message


# --- errors -------------------------------------------------------------------------------------


class FeedError(Exception):
    """A feed could not deliver; the message says why and, when an operator can fix it, how."""


class FeedConfigError(FeedError, ValueError):
    """The feed's configuration cannot serve what was asked (unmapped subject, bad granularity...)."""


class FeedResponseError(FeedError):
    """The upstream answered 2xx with something unusable (not JSON, unexpected shape, error status)."""


class FeedResponseTooLargeError(FeedResponseError):
    """A 2xx body larger than max_response_bytes: not read further, not retried (the same request
    would get the same body)."""

    def __init__(self, message: str, *, url: str, max_response_bytes: int) -> None:
        super().__init__(message)
        self.url = url
        self.max_response_bytes = max_response_bytes


class FeedUnavailableError(FeedError):
    """Transient failures outlasted the retry budget (attempts or max_total_seconds)."""


class FeedRateLimitedError(FeedUnavailableError):
    """429 asked for a wait that does not fit in what is left of the retry budget."""


class FeedRequestRejectedError(FeedError):
    """A non-retryable 4xx: retrying cannot help, configuration must change."""

    def __init__(self, message: str, *, status: int, upstream_detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.upstream_detail = upstream_detail


class FeedBadRequestError(FeedRequestRejectedError):
    """400: bad symbol, interval or parameter."""


class FeedAuthError(FeedRequestRejectedError):
    """401/403: missing or refused credentials."""


class FeedNotFoundError(FeedRequestRejectedError):
    """404: wrong base URL/path, or ids the upstream does not know."""


class FeedBannedError(FeedRequestRejectedError):
    """418: Binance banned this IP after repeated 429s."""


class FeedLocationBlockedError(FeedRequestRejectedError):
    """451: the upstream refuses requests from this location."""


_REJECTION_CLASSES: dict[int, type[FeedRequestRejectedError]] = {
    400: FeedBadRequestError,
    401: FeedAuthError,
    403: FeedAuthError,
    404: FeedNotFoundError,
    418: FeedBannedError,
    451: FeedLocationBlockedError,
}

_DEFAULT_ADVICE: dict[int, str] = {
    400: "the request was refused as invalid: check the subject mapping and granularity",
    401: "credentials are missing: configure the API key",
    403: "credentials were refused: check the API key and its permissions",
    404: "not found: check base_url and the configured ids/symbols",
    418: "this IP is banned after ignoring rate limits: stop requests until the ban lifts and lower the request rate",
    451: "the service refuses requests from this location: use a base_url allowed from here",
}


def _retryable_status(status: int) -> bool:
    return status >= 500 or status == 408


# --- retry policy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 15.0
    response_timeout_seconds: float = 30.0  # one attempt, connect + headers + body
    max_attempts: int = 5
    max_total_seconds: float = 60.0
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 10.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise FeedConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_response_bytes < 1:
            raise FeedConfigError(f"max_response_bytes must be >= 1, got {self.max_response_bytes}")
        for name in ("connect_timeout_seconds", "read_timeout_seconds", "response_timeout_seconds", "max_total_seconds"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise FeedConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.backoff_base_seconds < 0 or self.backoff_max_seconds < 0:
            raise FeedConfigError("backoff_base_seconds and backoff_max_seconds must be >= 0")

    def backoff_seconds(self, retry_number: int, random_fraction: float) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**(retry_number-1))], so that many clients
        failing together do not retry in lockstep."""
        ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * (2 ** (retry_number - 1)))
        return ceiling * random_fraction


def parse_retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After is delta-seconds (what Binance and Pyth send) or an HTTP date; None if absent or
    unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or clock.now())).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN -> unreadable


# --- client -------------------------------------------------------------------------------------


@dataclass
class HttpStats:
    """Where the time went, for benchmarks and logs."""

    requests: int = 0
    retries: int = 0
    bytes_received: int = 0
    http_seconds: float = 0.0  # sending, waiting and reading the body
    decode_seconds: float = 0.0  # JSON decoding
    sleep_seconds: float = 0.0  # waiting between attempts


class _ResponseTimeout(Exception):
    """The response was not complete when the attempt's deadline passed."""


# --- the whole-response deadline ---------------------------------------------------------------


_watched = threading.local()  # .watch: the _ResponseWatch of the attempt this thread is making


class _ResponseWatch:
    """Ends one attempt at its deadline: a timer shuts down the socket the attempt uses (urllib3
    tells which, below), so a read blocked on it returns at once. Set as this thread's watch for
    the attempt; other threads' requests have their own."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        # The connection (its socket may change while connecting) and every socket it had: a
        # response that closes the connection takes the socket over from it.
        self._connections: list[urllib3.connection.HTTPConnection] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(max(0.0, seconds), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_ResponseWatch":
        _watched.watch = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()
        self._timer.join()  # at once: cancelled, or done shutting the socket
        _watched.watch = None

    def attach(self, connection: urllib3.connection.HTTPConnection) -> None:
        with self._lock:
            if connection not in self._connections:
                self._connections.append(connection)
            if connection.sock is not None and connection.sock not in self._sockets:
                self._sockets.append(connection.sock)
            expired = self.expired and not self._done
        if expired:
            self._shut_all()

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
        self._shut_all()

    def _shut_all(self) -> None:
        with self._lock:
            sockets = [*self._sockets, *(c.sock for c in self._connections if c.sock is not None)]
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Shut the socket down for reading and writing. Not close(): the file descriptor stays the
    reading thread's to close, so it is never reused under it. The base socket's shutdown, so a
    TLS socket is cut at the TCP level too."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or not connected


def _attach_to_watch(connection: urllib3.connection.HTTPConnection) -> None:
    watch = getattr(_watched, "watch", None)
    if watch is not None:
        watch.attach(connection)


class _WatchedConnectionMixin:
    """A connection that puts itself, and its socket, under the requesting thread's watch: while
    connecting (the socket exists from the TCP connect on, so a TLS handshake is cut too), once
    connected, and at each request (a connection reused from the pool)."""

    def connect(self) -> None:
        _attach_to_watch(self)
        super().connect()
        _attach_to_watch(self)  # shuts it at once if the deadline passed meanwhile

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_to_watch(self)
        result = super().request(*args, **kwargs)
        _attach_to_watch(self)
        return result


class _WatchedHTTPConnection(_WatchedConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections, direct or through an HTTP proxy, can be watched."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # a SOCKS proxy keeps its own pools (not watched)
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


class JsonHttpClient:
    """GETs JSON from one base URL with the retry policy; one requests.Session (keep-alive)."""

    def __init__(
        self,
        source: str,
        base_url: str,
        policy: RetryPolicy,
        *,
        headers: Mapping[str, str] | None = None,
        advice: Mapping[int, str] | None = None,
        sleep: SleepFunction = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        random_fraction: Callable[[], float] = random.random,
        session: requests.Session | None = None,
    ) -> None:
        self.source = source
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.advice = {**_DEFAULT_ADVICE, **(advice or {})}
        self.stats = HttpStats()
        self.sleep = sleep  # replaceable: tests record waits instead of sleeping
        self._clock = clock
        self._random_fraction = random_fraction
        self._session = session or requests.Session()
        adapter = _WatchedAdapter()
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"Accept": "application/json", "User-Agent": "crunch-dagster-feed"})
        self._session.headers.update(headers or {})

    def close(self) -> None:
        self._session.close()

    def get_json(self, path: str, params: Params = None) -> Any:
        url = f"{self.base_url}{path}"
        started = self._clock()
        deadline = started + self.policy.max_total_seconds
        budget = f"max_total_seconds={self.policy.max_total_seconds}"
        caller_seconds = fetch_seconds_left()
        if caller_seconds is not None and started + caller_seconds < deadline:
            deadline = started + max(0.0, caller_seconds)  # the caller (a live tick) waits no longer
            budget = f"the caller's deadline, {max(0.0, caller_seconds):.1f}s away"
        last_problem = f"no attempt fitted in {budget}"
        problem_counts: dict[str, int] = {}  # the whole story for the error, not only the last failure

        def note(kind: str, detail: str) -> None:
            nonlocal last_problem
            last_problem = detail
            problem_counts[kind] = problem_counts.get(kind, 0) + 1

        attempts = 0
        while attempts < self.policy.max_attempts and self._clock() < deadline:
            attempts += 1
            try:
                status, headers, body = self._send_once(url, params, deadline)
            except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    _ResponseTimeout) as exc:
                timed_out = isinstance(exc, requests.Timeout) or "timed out" in str(exc)
                note("timeout" if timed_out else type(exc).__name__,
                     f"{type(exc).__name__}: {truncate_raw(str(exc), 200)}")
                wait_seconds = self.policy.backoff_seconds(attempts, self._random_fraction())
            else:
                if 200 <= status < 300:
                    return self._decode(path, body)
                if status == 429:
                    retry_after = parse_retry_after_seconds(headers.get("Retry-After"))
                    wait_seconds = (
                        retry_after if retry_after is not None
                        else self.policy.backoff_seconds(attempts, self._random_fraction())
                    )
                    note("HTTP 429", f"HTTP 429 (Retry-After: {headers.get('Retry-After')})")
                    if attempts >= self.policy.max_attempts or self._clock() + wait_seconds > deadline:
                        raise FeedRateLimitedError(
                            f"{self.source}: GET {path} is rate limited (HTTP 429) and the server asks to wait "
                            f"{wait_seconds:.1f}s, which does not fit the retry budget (attempt {attempts} of "
                            f"{self.policy.max_attempts}, max_total_seconds={self.policy.max_total_seconds}): "
                            "lower the request rate or raise max_total_seconds"
                        )
                elif _retryable_status(status):
                    note(f"HTTP {status}", f"HTTP {status}: {self._upstream_detail(body)}")
                    wait_seconds = self.policy.backoff_seconds(attempts, self._random_fraction())
                else:
                    raise self._rejection(path, status, headers, body)
            if attempts >= self.policy.max_attempts or self._clock() + wait_seconds >= deadline:
                break
            logger.info("%s: GET %s failed (%s), retry %d in %.2fs", self.source, path, last_problem,
                        attempts, wait_seconds)
            self.stats.retries += 1
            self.stats.sleep_seconds += wait_seconds
            self.sleep(wait_seconds)
        elapsed_seconds = self._clock() - started
        raise FeedUnavailableError(
            f"{self.source}: GET {url} failed after {attempts} attempt(s) in {elapsed_seconds:.1f}s "
            f"(max_attempts={self.policy.max_attempts}, {budget}); "
            f"problems: {', '.join(f'{kind} x{count}' for kind, count in problem_counts.items()) or 'none'}; "
            f"last: {last_problem}"
        )

    def _send_once(self, url: str, params: Params, deadline: float) -> tuple[int, Mapping[str, str], bytes]:
        """One attempt, over by the earlier of `deadline` and response_timeout_seconds from now."""
        attempt_seconds = max(0.001, min(deadline - self._clock(), self.policy.response_timeout_seconds))
        timeout = (
            min(self.policy.connect_timeout_seconds, attempt_seconds),
            min(self.policy.read_timeout_seconds, attempt_seconds),
        )
        self.stats.requests += 1
        started = time.perf_counter()
        watch = _ResponseWatch(attempt_seconds)
        try:
            with watch:
                answer = self._exchange(url, params, timeout)
            if watch.expired:  # cut short: what arrived may look whole (headers ended by the shutdown)
                raise ConnectionError("the response was cut at its deadline")
            return answer
        except Exception as exc:
            if watch.expired and not isinstance(exc, requests.Timeout):  # a read timeout says so itself
                raise _ResponseTimeout(
                    f"timed out: no complete response within {attempt_seconds:.1f}s (connect + headers + body; "
                    f"cut at the deadline: {type(exc).__name__})"
                ) from exc
            raise
        finally:
            self.stats.http_seconds += time.perf_counter() - started

    def _exchange(self, url: str, params: Params, timeout: tuple[float, float]) -> tuple[int, Mapping[str, str], bytes]:
        # Leaving the `with` early closes the connection: the rest of a body is never read.
        with self._session.get(url, params=params, timeout=timeout, stream=True) as response:
            success = 200 <= response.status_code < 300
            max_bytes = self.policy.max_response_bytes
            declared = _content_length(response.headers)
            if success and declared is not None and declared > max_bytes:
                raise self._too_large(response.url, f"Content-Length: {declared}")
            # An error status only needs the start of its body for the message.
            keep_bytes = max_bytes if success else min(max_bytes, _ERROR_BODY_MAX_BYTES)
            body = bytearray()
            # Counted after decompression (urllib3 inflates at most a chunk at a time), so a
            # small compressed body cannot expand without bound either.
            for chunk in response.iter_content(_BODY_CHUNK_BYTES):
                body += chunk
                self.stats.bytes_received += len(chunk)
                if len(body) > keep_bytes:
                    if success:
                        raise self._too_large(response.url, f"more than {max_bytes} bytes received")
                    del body[keep_bytes:]
                    break
            return response.status_code, response.headers, bytes(body)

    def _too_large(self, url: str, how: str) -> FeedResponseTooLargeError:
        max_bytes = self.policy.max_response_bytes
        return FeedResponseTooLargeError(
            f"{self.source}: GET {_truncate_url(url)} returned a body larger than max_response_bytes={max_bytes} "
            f"({how}); not retried: ask for less per request or raise max_response_bytes",
            url=url, max_response_bytes=max_bytes,
        )

    def _decode(self, path: str, body: bytes) -> Any:
        started = time.perf_counter()
        try:
            return json.loads(body)
        except ValueError as exc:
            raise FeedResponseError(
                f"{self.source}: GET {path} returned a body that is not JSON ({exc}): "
                f"{truncate_raw(body[:_UPSTREAM_DETAIL_CHARS])}"
            ) from None
        finally:
            self.stats.decode_seconds += time.perf_counter() - started

    @staticmethod
    def _upstream_detail(body: bytes) -> str:
        """Binance errors are {"code", "msg"}; others plain text or JSON; keep it short."""
        text = body.decode("utf-8", errors="replace").strip()
        try:
            payload = json.loads(text)
        except ValueError:
            return text[:_UPSTREAM_DETAIL_CHARS]
        if isinstance(payload, dict) and "msg" in payload:
            code = payload.get("code")
            return f"code {code}: {payload['msg']}" if code is not None else str(payload["msg"])
        if isinstance(payload, dict) and "message" in payload:
            return str(payload["message"])[:_UPSTREAM_DETAIL_CHARS]
        return text[:_UPSTREAM_DETAIL_CHARS]

    def _rejection(self, path: str, status: int, headers: Mapping[str, str], body: bytes) -> FeedRequestRejectedError:
        detail = self._upstream_detail(body)
        advice = self.advice.get(status) or f"HTTP {status} is not retried: check base_url and the request"
        retry_after = headers.get("Retry-After")
        ban_note = f" (server says Retry-After: {retry_after}s)" if status == 418 and retry_after else ""
        message = (
            f"{self.source}: GET {path} refused with HTTP {status}{ban_note}"
            f"{' (' + detail + ')' if detail else ''}: {advice}"
        )
        error_class = _REJECTION_CLASSES.get(status, FeedRequestRejectedError)
        return error_class(message, status=status, upstream_detail=detail)


# --- resource base ------------------------------------------------------------------------------


class HttpFeedResource(FeedResource):
    """A feed read over HTTP: the timeouts and retry budget are configuration."""

    connect_timeout_seconds: float = Field(default=5.0, description="TCP connect timeout per attempt.")
    read_timeout_seconds: float = Field(default=15.0, description="Socket read timeout (each read) per attempt.")
    response_timeout_seconds: float = Field(
        default=30.0, description="Deadline on one attempt's whole response (connect + headers + body): a server "
        "that trickles its answer is cut off here and the attempt retried.",
    )
    max_attempts: int = Field(default=5, description="Attempts per request, first one included.")
    max_total_seconds: float = Field(
        default=60.0, description="Bound on one request including retries and waits between them."
    )
    backoff_base_seconds: float = Field(default=0.5, description="First retry waits up to this (full jitter).")
    backoff_max_seconds: float = Field(default=10.0, description="Cap of the exponential backoff.")
    max_response_bytes: int = Field(
        default=DEFAULT_MAX_RESPONSE_BYTES,
        description="Largest response body read, after decompression (default 32 MiB); a larger 2xx body "
        "is a FeedResponseTooLargeError, not retried.",
    )

    # Private state is rebuilt lazily: Dagster copies resources, and pydantic private attributes are
    # not copied with them.
    _clients: dict[str, JsonHttpClient] = PrivateAttr(default_factory=dict)
    _sleep: SleepFunction | None = PrivateAttr(default=None)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            connect_timeout_seconds=self.connect_timeout_seconds,
            read_timeout_seconds=self.read_timeout_seconds,
            response_timeout_seconds=self.response_timeout_seconds,
            max_attempts=self.max_attempts,
            max_total_seconds=self.max_total_seconds,
            backoff_base_seconds=self.backoff_base_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
            max_response_bytes=self.max_response_bytes,
        )

    def use_sleep(self, sleep: SleepFunction) -> "HttpFeedResource":
        """Replace time.sleep between attempts (tests record waits instead of sleeping)."""
        self._sleep = sleep
        for client in self._clients.values():
            client.sleep = sleep
        return self

    def http_stats(self) -> HttpStats:
        """Summed over this instance's clients."""
        total = HttpStats()
        for client in self._clients.values():
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(client.stats, name))
        return total

    def request_span_ms(
        self, start: datetime, end: datetime, as_of: datetime
    ) -> tuple[datetime, datetime, datetime, int, int]:
        """The window's times as aware UTC, and the unix-ms span [first bar open, stop) worth asking
        for: bars of a granularity dividing a day open on its multiples, and a bar opening at or
        after min(end, as_of) cannot be closed inside the window."""
        start, end, as_of = (
            require_aware_utc(name, value) for name, value in (("start", start), ("end", end), ("as_of", as_of))
        )
        first_open_ms = unix_ms(start)
        if SECONDS_PER_DAY % self.granularity_seconds == 0:
            first_open_ms = ceil_to_multiple(first_open_ms, self.granularity_seconds * 1000)
        return start, end, as_of, first_open_ms, min(unix_ms(end), unix_ms(as_of))

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def _client(self, key: str, base_url: str, *, headers: Mapping[str, str] | None = None,
                advice: Mapping[int, str] | None = None) -> JsonHttpClient:
        client = self._clients.get(key)
        if client is None:
            client = JsonHttpClient(
                self.source_name(), base_url, self.retry_policy(), headers=headers, advice=advice,
                sleep=self._sleep or time.sleep,
            )
            self._clients[key] = client
        return client


def _content_length(headers: Mapping[str, str]) -> int | None:
    """The declared body size, or None when absent or unreadable (then only counting bounds it)."""
    try:
        value = int(headers.get("Content-Length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _truncate_url(url: str, limit: int = 300) -> str:
    return url if len(url) <= limit else url[:limit] + "..."


def require_aware_utc(name: str, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware UTC, got naive {value!r}")
    return value.astimezone(timezone.utc)


def unix_ms(value: datetime) -> int:
    """Whole milliseconds since the epoch, computed without float rounding."""
    delta = require_aware_utc("time", value) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def ceil_to_multiple(value: int, step: int) -> int:
    return -(-value // step) * step


# --- parsing helpers shared by the HTTP feeds -------------------------------------------------


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def number_to_float(value: Any) -> float:
    """Upstreams send decimal strings or numbers; booleans and None are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def ohlcv_floats(values: Sequence[Any]) -> tuple[float, float, float, float, float]:
    """float() of open, high, low, close, volume (decimal strings or numbers); TypeError/ValueError
    for anything else, booleans included. Written for speed: it runs once per upstream row."""
    if bool in map(type, values):
        raise TypeError(f"boolean is not a number: {values!r}")
    open_, high, low, close, volume = map(float, values)
    return open_, high, low, close, volume


def check_ohlcv(open_: float, high: float, low: float, close: float, volume: float) -> str | None:
    """Why these values cannot be a candle, or None when they can."""
    isfinite = math.isfinite
    if not (isfinite(open_) and isfinite(high) and isfinite(low) and isfinite(close)):
        return "non-finite price"
    if min(open_, high, low, close) <= 0:
        return "non-positive price"
    if not (math.isfinite(volume) and volume >= 0):
        return "invalid volume"
    if low > min(open_, close) or high < max(open_, close):
        return "inconsistent ohlc"
    return None

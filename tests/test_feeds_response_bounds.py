"""Response bodies of the HTTP feeds are bounded: a huge body is a clear feed error, not gigabytes.

A real HTTP server on 127.0.0.1 streams 400 MB bodies generated lazily (one 64 KiB block written
again and again: nothing of that size is ever allocated), with an honest Content-Length, a lying
one, chunked without any, or gzip-compressed. The fetch runs in a fresh subprocess (capped at 1 GiB
of address space, so a client that reads everything fails instead of taking the machine) whose
peak RSS is read with os.wait4, and compared with the same subprocess fetching a small body.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from resources.feeds.binance import BinanceFeed
from resources.feeds.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    FeedResponseError,
    FeedResponseTooLargeError,
    FeedUnavailableError,
    JsonHttpClient,
    RetryPolicy,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HUGE_BYTES = 400 * 1024 * 1024
BLOCK = b"0," * 32 * 1024  # 64 KiB of a JSON array's elements
LYING_CONTENT_LENGTH = 1000
SUBPROCESS_ADDRESS_SPACE_BYTES = 1024 * 1024 * 1024
# Peak RSS a fetch may add over a small fetch: the 32 MiB default bound (held once, plus the copy
# returned) and slack; reading a 400 MB body costs well over 800 MB.
MAX_EXTRA_RSS_BYTES = 160 * 1024 * 1024
FAST = dict(connect_timeout_seconds=5.0, read_timeout_seconds=10.0, max_attempts=3, max_total_seconds=60.0,
            backoff_base_seconds=0.01, backoff_max_seconds=0.02)


def _gzip_members(total_bytes: int):
    """A gzip body of `total_bytes` once inflated, as independent gzip members (valid per RFC 1952):
    "[" then the same compressed 1 MiB of "0," over and over. Returns (first, repeated, count)."""
    inflated_block = BLOCK * 16
    return gzip.compress(b"["), gzip.compress(inflated_block), total_bytes // len(inflated_block)


class HugeBodyServer:
    """GET /<mode>/...: `small` answers a short JSON array; `honest` streams HUGE_BYTES with that
    Content-Length; `lying` declares Content-Length: 1000 and streams HUGE_BYTES; `chunked` streams
    HUGE_BYTES chunked, without Content-Length; `gzip` sends a gzip body of HUGE_BYTES inflated with
    its true (compressed) Content-Length; `error` is a 503 with a HUGE_BYTES chunked body."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                mode = self.path.strip("/").split("/")[0].split("?")[0]
                with server._lock:
                    server.requests.append(mode)
                try:
                    server.answer(self, mode)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client stopped reading: as it should

            def log_message(self, format, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, address: None
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, mode: str) -> int:
        with self._lock:
            return self.requests.count(mode)

    def __enter__(self) -> "HugeBodyServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @staticmethod
    def answer(handler: BaseHTTPRequestHandler, mode: str) -> None:
        write = handler.wfile.write
        if mode == "small":
            body = b"[1,2,3]"
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            write(body)
        elif mode in ("honest", "lying"):
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(HUGE_BYTES if mode == "honest" else LYING_CONTENT_LENGTH))
            handler.end_headers()
            write(b"[")
            for _ in range(HUGE_BYTES // len(BLOCK)):
                write(BLOCK)
        elif mode in ("chunked", "error"):
            handler.send_response(200 if mode == "chunked" else 503)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            write(b"1\r\n[\r\n")
            framed = b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK)
            for _ in range(HUGE_BYTES // len(BLOCK)):
                write(framed)
            write(b"0\r\n\r\n")
        elif mode == "gzip":
            first, repeated, count = _gzip_members(HUGE_BYTES)
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Encoding", "gzip")
            handler.send_header("Content-Length", str(len(first) + count * len(repeated)))
            handler.end_headers()
            write(first)
            for _ in range(count):
                write(repeated)
        else:
            handler.send_error(404)


@pytest.fixture
def server():
    with HugeBodyServer() as running:
        yield running


FETCH_SCRIPT = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[3]), int(sys.argv[3])))
sys.path.insert(0, sys.argv[4])
from resources.feeds.http import JsonHttpClient, RetryPolicy
policy = RetryPolicy(**json.loads(sys.argv[2]))
client = JsonHttpClient("test-feed", sys.argv[1], policy, sleep=lambda seconds: None)
try:
    payload = client.get_json("/api")
    outcome = {"ok": True, "items": len(payload)}
except BaseException as exc:
    outcome = {"error": type(exc).__name__, "message": str(exc)[:2000]}
outcome["attempts"] = client.stats.requests
print(json.dumps(outcome), flush=True)
"""


def fetch_in_subprocess(base_url: str, **policy) -> tuple[dict, int]:
    """(what the fetch gave, peak RSS in bytes) of a fresh interpreter doing one get_json."""
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(
            [sys.executable, "-c", FETCH_SCRIPT, base_url, json.dumps({**FAST, **policy}),
             str(SUBPROCESS_ADDRESS_SPACE_BYTES), str(PROJECT_ROOT)],
            stdout=subprocess.PIPE, stderr=stderr_file,
        )
        stdout = process.stdout.read()  # to EOF: the child has exited or is exiting
        process.stdout.close()
        # Reaped here rather than by Popen, for the child's own peak RSS (ru_maxrss is in KiB).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr_file.seek(0)
        stderr = stderr_file.read().decode(errors="replace")
    lines = stdout.decode().strip().splitlines()
    assert lines, f"no outcome (exit {process.returncode}): {stderr[-2000:]}"
    return json.loads(lines[-1]), usage.ru_maxrss * 1024


@pytest.fixture
def small_fetch_rss(server) -> int:
    outcome, peak = fetch_in_subprocess(f"{server.url}/small")
    assert outcome == {"ok": True, "items": 3, "attempts": 1}
    return peak


@pytest.mark.parametrize(
    ("mode", "how"),
    [
        ("honest", f"Content-Length: {HUGE_BYTES}"),
        ("chunked", f"more than {DEFAULT_MAX_RESPONSE_BYTES} bytes received"),
        ("gzip", f"more than {DEFAULT_MAX_RESPONSE_BYTES} bytes received"),
    ],
)
def test_a_huge_body_is_a_clear_error_at_the_default_bound_in_little_memory(server, small_fetch_rss, mode, how):
    outcome, peak = fetch_in_subprocess(f"{server.url}/{mode}")
    assert outcome["error"] == "FeedResponseTooLargeError", outcome
    message = outcome["message"]
    assert f"GET {server.url}/{mode}/api" in message  # names the URL
    assert f"max_response_bytes={DEFAULT_MAX_RESPONSE_BYTES}" in message  # and the bound
    assert how in message
    assert outcome["attempts"] == 1  # not retried as if transient
    assert server.count(mode) == 1
    assert peak - small_fetch_rss < MAX_EXTRA_RSS_BYTES, (peak, small_fetch_rss)


def test_a_lying_content_length_is_all_that_is_read(server, small_fetch_rss):
    outcome, peak = fetch_in_subprocess(f"{server.url}/lying")
    # Only the declared 1000 bytes are read: the start of an unfinished array, not JSON.
    assert outcome["error"] == "FeedResponseError", outcome
    assert "not JSON" in outcome["message"]
    assert outcome["attempts"] == 1
    assert peak - small_fetch_rss < MAX_EXTRA_RSS_BYTES, (peak, small_fetch_rss)


def test_the_bound_is_configurable_and_counted_on_what_arrives(server):
    bound = 100_000
    client = JsonHttpClient("test-feed", f"{server.url}/chunked", RetryPolicy(**FAST, max_response_bytes=bound))
    try:
        with pytest.raises(FeedResponseTooLargeError, match=rf"max_response_bytes={bound} \(more than {bound} bytes") as caught:
            client.get_json("/api", {"symbol": "BTCUSDT"})
    finally:
        client.close()
    assert caught.value.url == f"{server.url}/chunked/api?symbol=BTCUSDT"
    assert caught.value.max_response_bytes == bound
    assert bound < client.stats.bytes_received <= bound + 64 * 1024  # stopped within one chunk of it
    assert server.count("chunked") == 1

    # The same bound on a small body changes nothing.
    small = JsonHttpClient("test-feed", f"{server.url}/small", RetryPolicy(**FAST, max_response_bytes=bound))
    assert small.get_json("/api") == [1, 2, 3]
    small.close()


def test_a_client_that_met_a_lying_content_length_goes_on_working(server):
    """The unread rest of the lying body is left on its connection; the next request still succeeds."""
    client = JsonHttpClient("test-feed", server.url, RetryPolicy(**FAST))
    try:
        with pytest.raises(FeedResponseError, match="not JSON"):
            client.get_json("/lying/api")
        assert client.get_json("/small/api") == [1, 2, 3]
    finally:
        client.close()


def test_a_huge_error_body_is_cut_short_and_the_status_retried(server):
    client = JsonHttpClient("test-feed", f"{server.url}/error", RetryPolicy(**FAST), sleep=lambda seconds: None)
    try:
        with pytest.raises(FeedUnavailableError, match=r"3 attempt.*HTTP 503 x3") as caught:
            client.get_json("/api")
    finally:
        client.close()
    assert len(str(caught.value)) < 2000
    assert server.count("error") == 3
    assert client.stats.bytes_received <= 3 * (64 * 1024 + 64 * 1024)


def test_max_response_bytes_is_resource_config_and_validated():
    assert BinanceFeed().max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES == 32 * 1024 * 1024
    assert BinanceFeed(max_response_bytes=1234).retry_policy().max_response_bytes == 1234
    from resources.feeds.http import FeedConfigError

    with pytest.raises(FeedConfigError, match="max_response_bytes"):
        BinanceFeed(max_response_bytes=0).validate_subjects(["BTC"])


def test_a_live_cycle_goes_on_when_the_feed_answers_too_much(clean_database, server):
    """In a live run a too-large response is a feed error like any other: recorded, and the cycle
    waits for its feed (it is not run on a history a replay would not see)."""
    import dagster as dg
    from dataclasses import replace

    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.keys import ChainKeys
    from crunch_assets.run_config import as_of_run_config
    from crunch_assets.replay import chain_assets

    start = datetime(2026, 11, 5, tzinfo=timezone.utc)
    spec = replace(SPEC, start=start, live_feed_wait_seconds=60)
    keys = ChainKeys.for_slug(spec.slug)
    ops = [ChainKeys.op_name(keys.feed_records), ChainKeys.op_name(keys.predictions)]
    feed = BinanceFeed(base_url=f"{server.url}/chunked", **FAST)
    defs = build_definitions(spec=spec, feed=feed, automation_running=False)
    result = dg.materialize(chain_assets(defs, [keys.feed_records, keys.predictions]), resources=defs.resources,
                            partition_key="2026-11-05-00:00", raise_on_error=False,
                            run_config=as_of_run_config(ops, start + timedelta(minutes=1)))
    assert any(e.step_key == ops[0] and e.is_step_success for e in result.all_events)  # the feed step went on
    feed_errors = result.asset_materializations_for_node(ops[0])[0].metadata["feed_errors"].value
    assert set(feed_errors) == set(spec.subjects)
    for error in feed_errors.values():
        assert error.startswith(f"FeedResponseTooLargeError: binance: GET {server.url}/chunked/api/v3/klines?"), error
        assert f"max_response_bytes={DEFAULT_MAX_RESPONSE_BYTES}" in error
    assert server.count("chunked") == len(spec.subjects)  # one request each: not retried
    predictions = result.asset_materializations_for_node(ops[1])[0].metadata
    assert predictions["cycles_run"].value == 0 and predictions["cycles_waiting_for_feed"].value == 2

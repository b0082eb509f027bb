"""Live feed resources (Binance, Pyth) against real HTTP fakes on 127.0.0.1, plus pure parsing."""

from __future__ import annotations

import math
import re
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
import requests

from resources.feeds.base import FeedFetchResult
from resources.feeds.binance import BinanceFeed, binance_interval, parse_klines
from resources.feeds.http import (
    FeedAuthError,
    FeedBadRequestError,
    FeedBannedError,
    FeedConfigError,
    FeedLocationBlockedError,
    FeedNotFoundError,
    FeedRateLimitedError,
    FeedResponseError,
    FeedUnavailableError,
    RetryPolicy,
    parse_retry_after_seconds,
)
from resources.feeds.pyth import (
    DEFAULT_FEED_IDS,
    PythFeed,
    TooManyDatapointsError,
    is_valid_feed_id,
    normalize_feed_id,
    parse_hermes_latest,
    parse_history_bars,
    pyth_resolution,
)
from tests.fakes.feed_servers import (
    BTCUSD_CSV_PATH,
    PYTH_FEED_IDS,
    FakeBinanceServer,
    FakeHermesServer,
    FakePythHistoryServer,
    kline_row,
    load_csv_candles,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not BTCUSD_CSV_PATH.exists(), reason=f"real candles CSV missing: {BTCUSD_CSV_PATH}"),
]

UTC = timezone.utc
MINUTE = timedelta(minutes=1)
BTC_ID = DEFAULT_FEED_IDS["BTC"]


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@pytest.fixture(scope="module")
def csv_candles():
    return load_csv_candles()


@pytest.fixture
def data_start(csv_candles) -> datetime:
    return utc(csv_candles[0].ts)


@pytest.fixture
def after_data(csv_candles) -> datetime:
    """An as_of after every CSV bar closed."""
    return utc(csv_candles[-1].ts + 3600)


@pytest.fixture
def binance():
    with FakeBinanceServer() as server:
        yield server


@pytest.fixture
def history():
    with FakePythHistoryServer() as server:
        yield server


@pytest.fixture
def hermes():
    with FakeHermesServer() as server:
        yield server


class RecordedSleep:
    """Stands in for time.sleep: records the waits, does not wait."""

    def __init__(self) -> None:
        self.waits_seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits_seconds.append(seconds)


FAST_RETRIES = dict(connect_timeout_seconds=2.0, read_timeout_seconds=2.0, max_attempts=5, max_total_seconds=10.0,
                    backoff_base_seconds=0.01, backoff_max_seconds=0.05)


def binance_feed(server: FakeBinanceServer, **overrides) -> BinanceFeed:
    return BinanceFeed(base_url=server.url, **{**FAST_RETRIES, **overrides})


def pyth_feed(history_server=None, hermes_server=None, **overrides) -> PythFeed:
    urls = {}
    if history_server is not None:
        urls["history_base_url"] = history_server.url
    if hermes_server is not None:
        urls["hermes_base_url"] = hermes_server.url
    return PythFeed(**urls, **{**FAST_RETRIES, **overrides})


def assert_equal_to_csv(result: FeedFetchResult, expected_rows) -> None:
    assert len(result.records) == len(expected_rows)
    for candle, row in zip(result.records, expected_rows):
        assert candle.ts_event == utc(row.ts)
        assert candle.ts_event.tzinfo is not None
        assert (candle.open, candle.high, candle.low, candle.close, candle.volume) == (
            row.open, row.high, row.low, row.close, row.volume)


# --- pure parsing -------------------------------------------------------------------------------


def test_parse_klines_keeps_good_rows_and_counts_malformed_ones(csv_candles):
    rows_source = csv_candles[:6]
    start, end = utc(rows_source[0].ts), utc(rows_source[-1].ts + 60)
    good = [kline_row(candle) for candle in rows_source[:3]]
    ts3, ts4, ts5 = (candle.ts * 1000 for candle in rows_source[3:6])
    rows = good + [
        [ts3, "1", "2"],  # wrong length
        "not a row",  # wrong length
        [ts4, "abc", "1", "1", "1", "1"],  # non-numeric value
        [ts5, "0", "1", "0", "1", "1"],  # non-positive price
        [ts5 + 30_000, "1", "1", "1", "1", "1"],  # unaligned open time
        [ts5 + 3600_000, "1", "1", "1", "1", "1"],  # outside window
        [ts5, "10", "9", "11", "10", "1"],  # high < low
        good[0],  # duplicate
    ]
    candles, skipped = parse_klines("BTC", rows, granularity_seconds=60, start=start, end=end, as_of=end)
    assert [candle.close for candle in candles] == [candle.close for candle in rows_source[:3]]
    counts: dict[str, int] = {}
    for row in skipped:
        counts[row.reason] = counts.get(row.reason, 0) + 1
    assert counts == {"wrong length": 2, "non-numeric value": 1, "non-positive price": 1, "unaligned open time": 1,
                      "outside window": 1, "inconsistent ohlc": 1, "duplicate open time": 1}


def test_parse_klines_drops_the_still_forming_candle_without_counting_it(csv_candles):
    rows = [kline_row(candle) for candle in csv_candles[:3]]
    as_of = utc(csv_candles[2].ts + 59)  # the third bar closes one second later
    candles, skipped = parse_klines("BTC", rows, granularity_seconds=60, start=utc(csv_candles[0].ts),
                                    end=utc(csv_candles[3].ts), as_of=as_of)
    assert [candle.ts_event for candle in candles] == [utc(csv_candles[0].ts), utc(csv_candles[1].ts)]
    assert skipped == []
    assert candles[-1].close_time <= as_of


def test_parse_klines_rejects_a_response_that_is_not_a_list():
    with pytest.raises(FeedResponseError, match="not a list"):
        parse_klines("BTC", {"code": -1}, granularity_seconds=60, start=utc(0), end=utc(60), as_of=utc(60))


def test_parse_history_bars_statuses_and_malformed_entries():
    window = dict(granularity_seconds=60, start=utc(0), end=utc(600), as_of=utc(600))
    assert parse_history_bars("BTC", {"s": "no_data", "nextTime": 0}, **window) == ([], [])
    with pytest.raises(TooManyDatapointsError):
        parse_history_bars("BTC", {"s": "error", "errmsg": "Too many datapoints to return"}, **window)
    with pytest.raises(FeedResponseError, match="Symbol not found"):
        parse_history_bars("BTC", {"s": "error", "errmsg": "Symbol not found"}, **window)

    payload = {"s": "ok", "t": [0, 60, 120, 180, 240, 300],
               "o": [1.0, None, 3.0, "x", 5.0, 6.0], "h": [1.5, 2.0, 3.5, 4.0, 5.5, 6.5],
               "l": [0.5, 1.0, 2.5, 3.0, 4.5, 5.5], "c": [1.2, 2.0, 3.2, 4.0, 5.2, 6.2],
               "v": [1, 1, 1, 1, 1, 1]}
    payload["t"][4] = 250  # unaligned
    candles, skipped = parse_history_bars("BTC", payload, **window)
    assert [int(candle.ts_event.timestamp()) for candle in candles] == [0, 120, 300]
    assert sorted(row.reason for row in skipped) == ["non-numeric value", "null value", "unaligned open time"]


def test_parse_history_bars_skips_every_entry_when_arrays_differ_in_length():
    payload = {"s": "ok", "t": [0, 60, 120], "o": [1, 1, 1], "h": [1, 1, 1], "l": [1, 1, 1], "c": [1, 1], "v": [0, 0, 0]}
    candles, skipped = parse_history_bars("BTC", payload, granularity_seconds=60, start=utc(0), end=utc(600),
                                          as_of=utc(600))
    assert candles == []
    assert [row.reason for row in skipped] == ["arrays of different lengths"] * 3


def test_parse_history_bars_without_volume_array_means_zero_volume():
    payload = {"s": "ok", "t": [0], "o": [1.0], "h": [1.0], "l": [1.0], "c": [1.0]}
    candles, _ = parse_history_bars("BTC", payload, granularity_seconds=60, start=utc(0), end=utc(60), as_of=utc(60))
    assert candles[0].volume == 0.0


def test_parse_hermes_latest_matches_ids_with_or_without_0x_and_scales_exactly():
    payload = {"parsed": [
        {"id": "e62df6c8b4a85fe1a67db44dc12de5db330f7ac66b72dc658afedf0f4a415b43",
         "price": {"price": "2920679499999", "conf": "509500001", "expo": -8, "publish_time": 1717632000}},
        {"id": "ff61491a931112ddf1bd8147cd1b641375f79f5825126d665480874634fd0ace",
         "price": {"price": "abc", "expo": -8, "publish_time": 1717632000}},
        {"id": "00" * 32, "price": {"price": "1", "expo": 0, "publish_time": 1}},
    ]}
    subjects_by_id = {normalize_feed_id(BTC_ID): ["BTC"], normalize_feed_id(DEFAULT_FEED_IDS["ETH"]): ["ETH"]}
    prices, skipped = parse_hermes_latest(payload, subjects_by_id)
    assert prices == {"BTC": (utc(1717632000), 29206.79499999)}
    assert sorted(row.reason for row in skipped) == ["malformed price", "unrequested id"]


def test_feed_ids_are_normalized_and_validated():
    assert normalize_feed_id("0xE62DF6C8B4A85FE1A67DB44DC12DE5DB330F7AC66B72DC658AFEDF0F4A415B43") == PYTH_FEED_IDS["BTC"]
    assert is_valid_feed_id(PYTH_FEED_IDS["BTC"]) and is_valid_feed_id(BTC_ID)
    assert not is_valid_feed_id("0x1234")
    with pytest.raises(FeedConfigError, match="'DOGE'"):
        PythFeed().validate_subjects(["BTC", "DOGE"])
    with pytest.raises(FeedConfigError, match="'BTC'.*64 hex"):
        PythFeed(feed_ids={"BTC": "0xnothex"}).validate_subjects(["BTC"])
    with pytest.raises(FeedConfigError, match="history_symbols"):
        PythFeed(history_symbols={}).validate_subjects(["BTC"])


def test_granularity_maps_to_interval_and_resolution():
    assert binance_interval(60) == "1m" and binance_interval(3600) == "1h" and binance_interval(86400) == "1d"
    assert pyth_resolution(60) == "1" and pyth_resolution(3600) == "60" and pyth_resolution(86400) == "D"
    with pytest.raises(FeedConfigError, match="granularity_seconds=90"):
        binance_interval(90)
    with pytest.raises(FeedConfigError, match="granularity_seconds=1"):
        pyth_resolution(1)
    with pytest.raises(FeedConfigError):
        BinanceFeed(granularity_seconds=45).validate_subjects(["BTC"])
    with pytest.raises(FeedConfigError, match="max_attempts"):
        BinanceFeed(max_attempts=0).validate_subjects(["BTC"])


def test_binance_validate_subjects_names_the_unmapped_subject():
    BinanceFeed().validate_subjects(["BTC", "ETH", "SOL"])
    with pytest.raises(FeedConfigError, match="'XRP'.*symbols"):
        BinanceFeed().validate_subjects(["BTC", "XRP"])


def test_retry_after_and_full_jitter_backoff():
    assert parse_retry_after_seconds("7") == 7.0
    assert parse_retry_after_seconds(None) is None and parse_retry_after_seconds("soon") is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after_seconds("Thu, 01 Jan 2026 00:00:30 GMT", now=now) == 30.0
    policy = RetryPolicy(backoff_base_seconds=1.0, backoff_max_seconds=5.0)
    assert policy.backoff_seconds(1, 0.999) < 1.0
    assert policy.backoff_seconds(3, 1.0) == 4.0
    assert policy.backoff_seconds(10, 1.0) == 5.0  # capped
    assert policy.backoff_seconds(10, 0.0) == 0.0


def test_naive_datetimes_are_refused(binance):
    with pytest.raises(ValueError, match="timezone-aware"):
        binance_feed(binance).fetch_candles("BTC", datetime(2025, 1, 7), datetime(2025, 1, 8),
                                            as_of=datetime.now(UTC))


# --- Binance against the fake -------------------------------------------------------------------


def test_binance_pages_a_2500_minute_window_in_three_pages(binance, csv_candles, data_start, after_data):
    result = binance_feed(binance).fetch_candles("BTC", data_start, data_start + 2500 * MINUTE, as_of=after_data)
    assert result.pages_fetched == 3
    assert result.skipped == []
    assert_equal_to_csv(result, csv_candles[:2500])
    starts = [int(request.query["startTime"][0]) for request in binance.requests_to("/api/v3/klines")]
    assert starts == [csv_candles[0].ts * 1000, csv_candles[1000].ts * 1000, csv_candles[2000].ts * 1000]
    assert all(request.query["limit"] == ["1000"] for request in binance.requests_to("/api/v3/klines"))


def test_binance_exact_multiple_of_page_size_needs_no_extra_page(binance, csv_candles, data_start, after_data):
    result = binance_feed(binance).fetch_candles("BTC", data_start, data_start + 2000 * MINUTE, as_of=after_data)
    assert result.pages_fetched == 2
    assert_equal_to_csv(result, csv_candles[:2000])


def test_binance_unaligned_start_begins_at_the_next_bar(binance, csv_candles, data_start, after_data):
    result = binance_feed(binance).fetch_candles("BTC", data_start - timedelta(seconds=30), data_start + 5 * MINUTE,
                                                 as_of=after_data)
    assert_equal_to_csv(result, csv_candles[:5])


def test_binance_429_burst_honours_retry_after(binance, csv_candles, data_start, after_data):
    binance.rate_limit_next(3, retry_after_seconds=2)
    sleep = RecordedSleep()
    feed = binance_feed(binance).use_sleep(sleep)
    result = feed.fetch_candles("BTC", data_start, data_start + 10 * MINUTE, as_of=after_data)
    assert_equal_to_csv(result, csv_candles[:10])
    assert sleep.waits_seconds == [2.0, 2.0, 2.0]
    assert len(binance.requests) == 4


def test_binance_429_asking_longer_than_the_budget_fails_at_once(binance, data_start, after_data):
    binance.rate_limit_next(1, retry_after_seconds=120)
    sleep = RecordedSleep()
    feed = binance_feed(binance, max_total_seconds=10).use_sleep(sleep)
    with pytest.raises(FeedRateLimitedError, match="429.*120"):
        feed.fetch_candles("BTC", data_start, data_start + 10 * MINUTE, as_of=after_data)
    assert sleep.waits_seconds == [] and len(binance.requests) == 1


def test_binance_5xx_retried_then_succeeds(binance, csv_candles, data_start, after_data):
    binance.server_error_next(2, status=502)
    feed = binance_feed(binance)
    result = feed.fetch_candles("BTC", data_start, data_start + 10 * MINUTE, as_of=after_data)
    assert_equal_to_csv(result, csv_candles[:10])
    assert len(binance.requests) == 3 and feed.http_stats().retries == 2


def test_binance_5xx_forever_fails_clearly_within_the_time_bound(binance, data_start, after_data):
    binance.server_error_always()
    feed = binance_feed(binance, max_attempts=1000, max_total_seconds=1.0, backoff_base_seconds=0.02,
                        backoff_max_seconds=0.1)
    started = time.monotonic()
    with pytest.raises(FeedUnavailableError, match=r"failed after .* attempt.*problems: HTTP 503 x"):
        feed.fetch_candles("BTC", data_start, data_start + 10 * MINUTE, as_of=after_data)
    assert time.monotonic() - started < 2.5
    assert len(binance.requests) > 2


def test_binance_5xx_forever_stops_after_max_attempts(binance, data_start, after_data):
    binance.server_error_always(status=500)
    with pytest.raises(FeedUnavailableError, match="3 attempt"):
        binance_feed(binance, max_attempts=3).fetch_candles("BTC", data_start, data_start + MINUTE, as_of=after_data)
    assert len(binance.requests) == 3


def test_binance_timeout_is_retried(binance, csv_candles, data_start, after_data):
    binance.delay_next(1, seconds=3.0)
    feed = binance_feed(binance, read_timeout_seconds=0.3)
    started = time.monotonic()
    result = feed.fetch_candles("BTC", data_start, data_start + 10 * MINUTE, as_of=after_data)
    assert time.monotonic() - started < 2.0
    assert_equal_to_csv(result, csv_candles[:10])
    assert len(binance.requests) == 2


def test_binance_timeouts_forever_respect_max_total_seconds(binance, data_start, after_data):
    binance.delay_next(100, seconds=5.0)
    feed = binance_feed(binance, read_timeout_seconds=0.2, max_total_seconds=0.8)
    started = time.monotonic()
    with pytest.raises(FeedUnavailableError, match="Timeout"):
        feed.fetch_candles("BTC", data_start, data_start + MINUTE, as_of=after_data)
    assert time.monotonic() - started < 2.0


def test_binance_malformed_rows_are_skipped_and_counted(binance, csv_candles, data_start, after_data):
    ts = [candle.ts for candle in csv_candles[:1500]]
    binance.replace_row("BTCUSDT", ts[10], ["garbage"])
    binance.replace_row("BTCUSDT", ts[500], [ts[500] * 1000, "abc", "1", "1", "1", "1", 0, "0", 0, "0", "0", "0"])
    binance.replace_row("BTCUSDT", ts[999], [ts[999] * 1000, "-5", "1", "1", "1", "1", 0, "0", 0, "0", "0", "0"])
    binance.replace_row("BTCUSDT", ts[1200], None)
    result = binance_feed(binance).fetch_candles("BTC", data_start, data_start + 1500 * MINUTE, as_of=after_data)
    assert result.pages_fetched == 2
    assert result.skipped_by_reason() == {"wrong length": 2, "non-numeric value": 1, "non-positive price": 1}
    expected = [candle for index, candle in enumerate(csv_candles[:1500]) if index not in (10, 500, 999, 1200)]
    assert_equal_to_csv(result, expected)


def test_binance_gap_returns_fewer_candles_and_no_invented_prices(binance, csv_candles, data_start, after_data):
    gap_start, gap_end = csv_candles[100].ts, csv_candles[130].ts
    assert binance.remove_range("BTCUSDT", gap_start, gap_end) == 30
    result = binance_feed(binance).fetch_candles("BTC", data_start, data_start + 1200 * MINUTE, as_of=after_data)
    assert len(result.records) == 1170 and result.skipped == []
    assert not [candle for candle in result.records if gap_start <= candle.ts_event.timestamp() < gap_end]
    assert_equal_to_csv(result, csv_candles[:100] + csv_candles[130:1200])


def test_binance_still_forming_last_candle_is_dropped(binance, csv_candles, data_start):
    binance.now_seconds = csv_candles[100].ts + 30  # bar 100 is half-way through its minute
    as_of = utc(binance.now_seconds)
    result = binance_feed(binance).fetch_candles("BTC", data_start, data_start + 500 * MINUTE, as_of=as_of)
    assert_equal_to_csv(result, csv_candles[:100])
    assert result.records[-1].close_time <= as_of
    # The fake does serve the forming bar (with partial values) for that request: the feed dropped it.
    last_request = binance.requests_to("/api/v3/klines")[-1]
    served = requests.get(f"{binance.url}/api/v3/klines",
                          params={name: values[0] for name, values in last_request.query.items()}, timeout=5).json()
    assert served[-1][0] == csv_candles[100].ts * 1000
    assert float(served[-1][4]) != csv_candles[100].close or csv_candles[100].open == csv_candles[100].close


def test_binance_418_and_451_stop_at_once_saying_what_to_change(binance, data_start, after_data):
    binance.fail_next(1, 418, headers={"Retry-After": "120"}, body={"code": -1003, "msg": "Way too many requests"})
    with pytest.raises(FeedBannedError, match="banned.*lower the request rate"):
        binance_feed(binance).fetch_candles("BTC", data_start, data_start + MINUTE, as_of=after_data)
    assert len(binance.requests) == 1

    binance.fail_next(1, 451, body={"code": 0, "msg": "Service unavailable from a restricted location"})
    with pytest.raises(FeedLocationBlockedError, match="set base_url to https://data-api.binance.vision"):
        binance_feed(binance).fetch_candles("BTC", data_start, data_start + MINUTE, as_of=after_data)
    assert len(binance.requests) == 2


def test_binance_unknown_symbol_is_a_clear_400(binance, data_start, after_data):
    feed = binance_feed(binance, symbols={"BTC": "BTCUSDT", "XRP": "XRPUSDT"})
    with pytest.raises(FeedBadRequestError, match=r"-1121: Invalid symbol.*'XRP'.*'XRPUSDT'"):
        feed.fetch_candles("XRP", data_start, data_start + MINUTE, as_of=after_data)
    assert len(binance.requests) == 1


def test_binance_latest_price(binance, csv_candles):
    assert binance_feed(binance).latest_price("BTC") == csv_candles[-1].close
    binance.now_seconds = csv_candles[10].ts + 59
    assert binance_feed(binance).latest_price("BTC") != csv_candles[-1].close


# --- Pyth history against the fake --------------------------------------------------------------


def test_pyth_history_chunks_a_2500_minute_window(history, csv_candles, data_start, after_data):
    result = pyth_feed(history).fetch_candles("BTC", data_start, data_start + 2500 * MINUTE, as_of=after_data)
    assert result.pages_fetched == 3
    assert_equal_to_csv(result, csv_candles[:2500])
    request = history.requests[0]
    assert request.query["symbol"] == ["Crypto.BTC/USD"] and request.query["resolution"] == ["1"]


def test_pyth_history_splits_when_the_server_says_too_many_datapoints(csv_candles, data_start, after_data):
    with FakePythHistoryServer(max_datapoints=300) as history:
        result = pyth_feed(history).fetch_candles("BTC", data_start, data_start + 1000 * MINUTE, as_of=after_data)
    assert_equal_to_csv(result, csv_candles[:1000])
    assert result.pages_fetched == 4  # 1000 -> 500 + 500 -> four chunks of 250


def test_pyth_history_no_data_is_empty_not_an_error(history, csv_candles):
    before = utc(csv_candles[0].ts) - timedelta(days=3)
    result = pyth_feed(history).fetch_candles("BTC", before, before + 60 * MINUTE, as_of=before + timedelta(days=1))
    assert result.records == [] and result.skipped == [] and result.pages_fetched == 1


def test_pyth_history_error_is_raised_clearly(history, data_start, after_data):
    feed = pyth_feed(history, history_symbols={"BTC": "Crypto.NOPE/USD"})
    with pytest.raises(FeedResponseError, match="Symbol not found.*history_symbols"):
        feed.fetch_candles("BTC", data_start, data_start + MINUTE, as_of=after_data)


def test_pyth_history_malformed_entries_skipped_and_counted(history, csv_candles, data_start, after_data):
    history.corrupt_bar("Crypto.BTC/USD", csv_candles[3].ts, c=None)
    history.corrupt_bar("Crypto.BTC/USD", csv_candles[4].ts, o="abc")
    result = pyth_feed(history).fetch_candles("BTC", data_start, data_start + 20 * MINUTE, as_of=after_data)
    assert result.skipped_by_reason() == {"null value": 1, "non-numeric value": 1}
    assert_equal_to_csv(result, csv_candles[:3] + csv_candles[5:20])


def test_pyth_history_ragged_arrays_skip_that_chunk_only(history, csv_candles, data_start, after_data):
    history.ragged_next(1)
    feed = pyth_feed(history, max_bars_per_request=100)
    result = feed.fetch_candles("BTC", data_start, data_start + 300 * MINUTE, as_of=after_data)
    assert result.skipped_by_reason() == {"arrays of different lengths": 100}
    assert_equal_to_csv(result, csv_candles[100:300])


def test_pyth_history_gap_and_still_forming_bar(history, csv_candles, data_start):
    history.remove_range("Crypto.BTC/USD", csv_candles[10].ts, csv_candles[15].ts)
    history.now_seconds = csv_candles[50].ts + 20
    as_of = utc(history.now_seconds)
    result = pyth_feed(history).fetch_candles("BTC", data_start, data_start + 200 * MINUTE, as_of=as_of)
    assert_equal_to_csv(result, csv_candles[:10] + csv_candles[15:50])


def test_pyth_history_sends_the_api_key_when_required(csv_candles, data_start, after_data):
    with FakePythHistoryServer(required_api_key="secret") as history:
        with pytest.raises(FeedAuthError, match="set api_key / CRUNCH_PYTH_API_KEY"):
            pyth_feed(history).fetch_candles("BTC", data_start, data_start + MINUTE, as_of=after_data)
        result = pyth_feed(history, api_key="secret").fetch_candles("BTC", data_start, data_start + MINUTE,
                                                                    as_of=after_data)
    assert_equal_to_csv(result, csv_candles[:1])


# --- Pyth Hermes against the fake ---------------------------------------------------------------


def test_hermes_latest_prices_match_configured_ids_with_0x(hermes, csv_candles):
    prices = pyth_feed(hermes_server=hermes).latest_prices(["BTC", "ETH", "SOL"])
    assert set(prices) == {"BTC", "ETH", "SOL"}
    publish_time, price = prices["BTC"]
    assert price == csv_candles[-1].close
    assert publish_time == utc(csv_candles[-1].ts + 59) and publish_time.tzinfo is not None
    sent_ids = hermes.requests[0].query["ids[]"]
    assert sorted(sent_ids) == sorted(PYTH_FEED_IDS.values())


def test_hermes_ids_configured_uppercase_or_bare_are_matched(hermes, csv_candles):
    feed = pyth_feed(hermes_server=hermes, feed_ids={"BTC": BTC_ID.upper().replace("0X", "0x"),
                                                     "ETH": PYTH_FEED_IDS["ETH"]})
    prices = feed.latest_prices(["BTC", "ETH"])
    assert prices["BTC"][1] == csv_candles[-1].close and "ETH" in prices


def test_hermes_401_without_key_says_to_set_it():
    with FakeHermesServer(required_api_key="secret") as hermes:
        with pytest.raises(FeedAuthError, match="Pyth Hermes now requires an API key: set api_key / CRUNCH_PYTH_API_KEY"):
            pyth_feed(hermes_server=hermes).latest_prices(["BTC"])
        with pytest.raises(FeedAuthError, match="refused the API key"):
            pyth_feed(hermes_server=hermes, api_key="wrong").latest_prices(["BTC"])
        assert len(hermes.requests) == 2  # no retries on 401
        prices = pyth_feed(hermes_server=hermes, api_key="secret").latest_prices(["BTC"])
        assert hermes.requests[-1].headers["authorization"] == "Bearer secret"
    assert "BTC" in prices


def test_hermes_unknown_id_is_a_404_naming_the_subject(hermes):
    feed = pyth_feed(hermes_server=hermes, feed_ids={"BTC": BTC_ID, "DOGE": "ab" * 32})
    with pytest.raises(FeedNotFoundError, match="DOGE=abab"):
        feed.latest_prices(["BTC", "DOGE"])


def test_hermes_rate_limit_for_60s_does_not_block_past_the_budget(hermes):
    hermes.rate_limit_next(1, retry_after_seconds=60)
    with pytest.raises(FeedRateLimitedError, match="lower the request rate or raise max_total_seconds"):
        pyth_feed(hermes_server=hermes, max_total_seconds=5).latest_prices(["BTC"])


def test_pyth_api_key_from_env_var_inside_dagster(hermes, monkeypatch):
    monkeypatch.setenv("CRUNCH_PYTH_API_KEY", "from-env")
    hermes.required_api_key = "from-env"

    @dg.asset
    def latest_btc(pyth: PythFeed) -> float:
        return pyth.latest_prices(["BTC"])["BTC"][1]

    feed = PythFeed(hermes_base_url=hermes.url, api_key=dg.EnvVar("CRUNCH_PYTH_API_KEY"))
    result = dg.materialize([latest_btc], resources={"pyth": feed})
    assert result.success
    assert hermes.requests[-1].headers["authorization"] == "Bearer from-env"


# --- a deadline on the whole response -------------------------------------------------------------
# requests' timeouts are per socket read: a server that sends a byte every half second never trips a
# 2 s read timeout, and before the response deadline a one-minute fetch trickled this way took as
# long as its body (~200 bytes: 100 s here, minutes at a byte a second) whatever max_total_seconds said.


def _watch_timers() -> list:
    import threading

    return [thread for thread in threading.enumerate() if isinstance(thread, threading.Timer) and thread.is_alive()]


def test_a_trickling_body_is_cut_at_the_response_deadline_and_retried(binance, csv_candles, data_start, after_data):
    binance.trickle_next(1, seconds_per_byte=0.5)
    feed = binance_feed(binance, response_timeout_seconds=1.0)
    started = time.monotonic()
    result = feed.fetch_candles("BTC", data_start, data_start + 10 * MINUTE, as_of=after_data)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3.0, elapsed  # the first attempt cut at its deadline, the retry answered at once
    assert_equal_to_csv(result, csv_candles[:10])
    assert binance.trickled == 1 and len(binance.requests) == 2 and feed.http_stats().retries == 1
    assert _watch_timers() == []  # no watchdog left behind


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_a_server_that_trickles_forever_fails_by_max_total_seconds(binance, data_start, after_data, headers):
    binance.trickle_next(math.inf, seconds_per_byte=0.2, headers=headers)
    feed = binance_feed(binance, response_timeout_seconds=0.8, max_total_seconds=2.0)
    started = time.monotonic()
    with pytest.raises(FeedUnavailableError) as caught:
        feed.fetch_candles("BTC", data_start, data_start + MINUTE, as_of=after_data)
    assert time.monotonic() - started < 2.6
    message = str(caught.value)
    assert "max_total_seconds=2.0" in message and "timeout x" in message
    assert re.search(r"no complete response within 0\.\ds \(connect \+ headers \+ body", message)
    assert binance.trickled == len(binance.requests) >= 2


def test_pyth_history_and_hermes_have_the_response_deadline(history, hermes, csv_candles, data_start, after_data):
    history.trickle_next(1, seconds_per_byte=0.5)
    hermes.trickle_next(math.inf, seconds_per_byte=0.5, headers=True)
    feed = pyth_feed(history, hermes, response_timeout_seconds=0.7, max_total_seconds=2.0)
    result = feed.fetch_candles("BTC", data_start, data_start + 5 * MINUTE, as_of=after_data)
    assert_equal_to_csv(result, csv_candles[:5])
    assert history.trickled == 1 and len(history.requests) == 2
    started = time.monotonic()
    with pytest.raises(FeedUnavailableError, match="no complete response within"):
        feed.latest_prices(["BTC"])
    assert time.monotonic() - started < 2.6


def test_the_callers_fetch_deadline_ends_the_request_itself(binance, data_start, after_data):
    """A live tick's feed wait is the fetch's own deadline: the request stops there, it does not go
    on in the background."""
    from resources.feeds.base import fetch_deadline

    binance.trickle_next(math.inf, seconds_per_byte=0.5)
    feed = binance_feed(binance, response_timeout_seconds=30.0, max_total_seconds=60.0)
    started = time.monotonic()
    with fetch_deadline(started + 1.0), pytest.raises(FeedUnavailableError, match="the caller's deadline, 1.0s away"):
        feed.fetch_candles("BTC", data_start, data_start + MINUTE, as_of=after_data)
    assert time.monotonic() - started < 1.6
    assert _watch_timers() == []


def test_response_timeout_seconds_is_validated():
    with pytest.raises(FeedConfigError, match="response_timeout_seconds must be > 0"):
        BinanceFeed(response_timeout_seconds=0).validate_subjects(["BTC"])
    assert BinanceFeed(response_timeout_seconds=4).retry_policy().response_timeout_seconds == 4


# --- defects: malformed rows and conflicting duplicates -------------------------------------------


def test_binance_conflicting_duplicates_are_reported_with_both_values_and_neither_kept(
        binance, csv_candles, data_start, after_data):
    """Before: the first of two different rows for one minute was kept (first wins) and the fetch
    counted complete. Now neither is kept, both values are reported, and the fetch has a defect."""
    first, second = csv_candles[3], csv_candles[1003]  # the second in the next page
    binance.add_row("BTCUSDT", first.ts, kline_row(replace(first, close=first.close + 1, high=first.high + 1)))
    binance.add_row("BTCUSDT", second.ts, kline_row(second))  # identical: harmless
    result = binance_feed(binance).fetch_records("BTC", data_start, data_start + 1100 * MINUTE, as_of=after_data)
    assert result.pages_fetched == 2
    assert result.skipped_by_reason() == {"conflicting duplicate": 1, "duplicate open time": 1}
    [conflict] = result.defects
    assert conflict.ts_event == utc(first.ts)
    assert f"'first': [{first.open}, {first.high}, {first.low}, {first.close}," in conflict.raw
    assert f"'other': [{first.open}, {first.high + 1}, {first.low}, {first.close + 1}," in conflict.raw
    assert utc(first.ts) not in {candle.ts_event for candle in result.records}
    assert len(result.records) == 1098  # the 1,099 bars closing in the window, without the conflicting one


def test_parsers_tell_defects_from_harmless_skips(csv_candles, data_start, after_data):
    rows = [kline_row(candle) for candle in csv_candles[:4]]
    rows.append(kline_row(csv_candles[10]))  # outside the window: harmless
    rows.append(kline_row(csv_candles[1]))  # identical repeat: harmless
    rows.append(["garbage"])  # malformed: a defect, its time unknown
    rows.append([csv_candles[2].ts * 1000, "abc", "1", "1", "1", "1"])  # malformed at a known time
    candles, skipped = parse_klines("BTC", rows, granularity_seconds=60, start=data_start,
                                    end=data_start + 5 * MINUTE, as_of=after_data)
    assert [(row.reason, row.defect, row.ts_event) for row in skipped] == [
        ("outside window", False, utc(csv_candles[10].ts)),
        ("duplicate open time", False, utc(csv_candles[1].ts)),
        ("wrong length", True, None),
        ("non-numeric value", True, utc(csv_candles[2].ts)),
    ]
    assert len(candles) == 4


def test_pyth_history_conflicting_duplicate_is_a_defect(history, csv_candles, data_start, after_data):
    history.add_bar("Crypto.BTC/USD", csv_candles[2].ts, c=csv_candles[2].close + 5, h=csv_candles[2].high + 5)
    history.add_bar("Crypto.BTC/USD", csv_candles[4].ts)  # identical
    result = pyth_feed(history).fetch_records("BTC", data_start, data_start + 10 * MINUTE, as_of=after_data)
    assert result.skipped_by_reason() == {"conflicting duplicate": 1, "duplicate open time": 1}
    assert [row.ts_event for row in result.defects] == [utc(csv_candles[2].ts)]
    assert utc(csv_candles[2].ts) not in {candle.ts_event for candle in result.records}


def test_csv_replay_reports_conflicts_and_malformed_rows_by_window(tmp_path, csv_candles):
    from resources.feeds.csv_replay import CsvReplayFeed

    lines = ["timestamp,open,high,low,close,volume"]
    for index, candle in enumerate(csv_candles[:30]):
        if index == 5:
            lines.append(f"{candle.ts},abc,1,1,1,1")  # malformed
            continue
        lines.append(f"{candle.ts},{candle.open},{candle.high},{candle.low},{candle.close},{candle.volume}")
        if index == 7:  # the same minute again with another close: before, the last one silently won
            lines.append(f"{candle.ts},{candle.open},{candle.high + 9},{candle.low},{candle.close + 9},{candle.volume}")
        if index == 9:
            lines.append(lines[-1])  # identical
    lines.append("not-a-time,1,1,1,1,1")
    path = tmp_path / "dirty.csv"
    path.write_text("\n".join(lines) + "\n")
    feed = CsvReplayFeed(path=str(path), source="csv-dirty")
    start = utc(csv_candles[0].ts)
    result = feed.fetch_candles("BTC", start, start + 30 * MINUTE, as_of=start + 2 * 60 * MINUTE)
    assert result.skipped_by_reason() == {"malformed row": 1, "conflicting duplicate": 1, "duplicate open time": 1,
                                          "unreadable time": 1}
    assert sorted(row.ts_event for row in result.defects if row.ts_event) == [utc(csv_candles[5].ts), utc(csv_candles[7].ts)]
    assert len(result.records) == 28  # 30 minutes less the malformed and the conflicting one
    later = feed.fetch_candles("BTC", start + 10 * MINUTE, start + 30 * MINUTE, as_of=start + 2 * 60 * MINUTE)
    assert later.skipped == [] and len(later.records) == 20  # a window reports only its own rows


def test_the_response_deadline_cuts_a_trickling_body_over_tls(tmp_path, monkeypatch, csv_candles, data_start, after_data):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # the client trusts this certificate only
    with FakeBinanceServer().use_tls(cert, key) as binance:
        assert binance.url.startswith("https://")
        binance.trickle_next(1, seconds_per_byte=0.5)
        feed = binance_feed(binance, response_timeout_seconds=1.0)
        started = time.monotonic()
        result = feed.fetch_candles("BTC", data_start, data_start + 5 * MINUTE, as_of=after_data)
        assert 1.0 <= time.monotonic() - started < 3.0
        assert_equal_to_csv(result, csv_candles[:5])
        assert binance.trickled == 1 and len(binance.requests) == 2

"""Backfills through the live feeds' HTTP code, against the local fake Binance and Pyth servers
serving the real BTC/USD candles: the btc_updown chain must score every model and cycle exactly as
a replay of the same candles from the CSV file does. Also the bulk write path of the feed
(COPY) keeps the store's upsert semantics."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
import sqlalchemy as sa

from competitions.btc_updown.definitions import SPEC, build_definitions
from resources.store import feeds as feed_store
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import build_partitions
from crunch_assets.replay import RANGE_END_TAG, RANGE_START_TAG, chain_assets, replay
from crunch_assets.spec import DAY_SECONDS
from resources.feeds.base import Candle, FeedStream
from resources.feeds.binance import BinanceFeed
from resources.feeds.csv_replay import CsvReplayFeed
from resources.feeds.pyth import PythFeed
from resources.store.database import dispose_engines, engine_for
from tests.fakes.feed_servers import BTCUSD_CSV_PATH, FakeBinanceServer, FakePythHistoryServer, load_csv_candles

pytestmark = pytest.mark.skipif(not BTCUSD_CSV_PATH.exists(), reason=f"real candles CSV missing: {BTCUSD_CSV_PATH}")

UTC = timezone.utc
START = datetime(2025, 1, 7, 1, tzinfo=UTC)  # the file's first candle opens at 00:01
BINANCE_END = START + timedelta(days=2)
PYTH_END = START + timedelta(days=1)
MODELS = {"mean_reversion", "trend_following", "gaussian_density"}
# An unused Hermes address: backfills read only the history endpoint.
UNUSED_HERMES_URL = "http://127.0.0.1:9"


def _empty_store(database_url: str) -> sa.Engine:
    dispose_engines()
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS crunch CASCADE"))
    return engine


def _spec():
    return replace(SPEC, start=START, checkpoint_interval_seconds=DAY_SECONDS)


def _replay_into_empty_store(database_url: str, feed, end: datetime) -> dict:
    """Replay [START, end) with `feed` into an empty store; what the chain stored, keyed by cycle."""
    engine = _empty_store(database_url)
    spec = _spec()
    replay(build_definitions(spec=spec, feed=feed, automation_running=False), spec, START, end)
    with engine.connect() as connection:
        scores = connection.execute(sa.text("SELECT model_id, cycle_at, value, success FROM crunch.scores")).fetchall()
        outputs = connection.execute(sa.text(
            "SELECT model_id, cycle_at, status, inference_output FROM crunch.predictions")).fetchall()
        inputs = connection.execute(sa.text("SELECT cycle_at, raw_data FROM crunch.inputs")).fetchall()
        sources = connection.execute(sa.text(
            "SELECT source, count(*) FROM crunch.feed_records GROUP BY source")).fetchall()
    engine.dispose()
    return {
        "scores": {(model_id, cycle_at): (value, success) for model_id, cycle_at, value, success in scores},
        "outputs": {(model_id, cycle_at): (status, output) for model_id, cycle_at, status, output in outputs},
        "inputs": {cycle_at: raw_data for cycle_at, raw_data in inputs},
        "feed_rows_by_source": dict(sources),
    }


def _first_cycles(stored: dict, end: datetime) -> dict:
    return {
        name: {key: value for key, value in stored[name].items()
               if (key if isinstance(key, datetime) else key[1]) < end}
        for name in ("scores", "outputs", "inputs")
    }


@pytest.fixture(scope="module")
def csv_replay(database_url, btc_csv) -> dict:
    return _replay_into_empty_store(database_url, CsvReplayFeed(path=str(btc_csv), source="csv"), BINANCE_END)


def test_binance_backfill_scores_every_model_and_cycle_as_the_csv_replay(database_url, csv_replay):
    with FakeBinanceServer() as binance:
        stored = _replay_into_empty_store(database_url, BinanceFeed(base_url=binance.url), BINANCE_END)
        requests = len(binance.requests_to("/api/v3/klines"))
    cycles = 2 * 24 * 60
    assert len(stored["scores"]) == len(csv_replay["scores"]) == cycles * len(MODELS)
    assert {model_id for model_id, _ in stored["scores"]} == MODELS
    assert all(success for _, success in stored["scores"].values())
    # Exactly equal, not approximately: the fake serves the file's prices, which survive the wire.
    assert stored["scores"] == csv_replay["scores"]
    assert stored["outputs"] == csv_replay["outputs"]
    assert stored["inputs"] == csv_replay["inputs"]
    assert set(stored["feed_rows_by_source"]) == {"binance"}
    assert stored["feed_rows_by_source"]["binance"] == csv_replay["feed_rows_by_source"]["csv"]
    assert requests >= 3  # paged: a day per run is 1,440+ candles, Binance pages hold 1,000


def test_pyth_backfill_scores_every_model_and_cycle_as_the_csv_replay(database_url, csv_replay):
    with FakePythHistoryServer() as pyth:
        feed = PythFeed(history_base_url=pyth.url, hermes_base_url=UNUSED_HERMES_URL)
        stored = _replay_into_empty_store(database_url, feed, PYTH_END)
    expected = _first_cycles(csv_replay, PYTH_END)
    assert len(stored["scores"]) == len(expected["scores"]) == 24 * 60 * len(MODELS)
    assert all(success for _, success in stored["scores"].values())
    assert stored["scores"] == expected["scores"]
    assert stored["outputs"] == expected["outputs"]
    assert stored["inputs"] == expected["inputs"]
    assert set(stored["feed_rows_by_source"]) == {"pyth"}


def test_a_gap_in_binance_is_stored_as_a_gap_and_flagged(database_url):
    """Feed level: candles missing upstream are not invented; the feed check names the gap."""
    engine = _empty_store(database_url)
    spec = _spec()
    partitions, keys = build_partitions(spec), ChainKeys.for_slug(spec.slug)
    gap_start, gap_end = START + timedelta(hours=1, minutes=10), START + timedelta(hours=1, minutes=40)
    with FakeBinanceServer() as binance:
        assert binance.remove_range("BTCUSDT", int(gap_start.timestamp()), int(gap_end.timestamp())) == 30
        defs = build_definitions(spec=spec, feed=BinanceFeed(base_url=binance.url), automation_running=False)
        result = dg.materialize(
            chain_assets(defs, [keys.feed_records]),
            resources=defs.resources,
            tags={RANGE_START_TAG: partitions.hour_key(START),
                  RANGE_END_TAG: partitions.hour_key(START + timedelta(hours=2))},
        )
    with engine.connect() as connection:
        stored = set(connection.execute(sa.text(
            "SELECT ts_event FROM crunch.feed_records WHERE source = 'binance' AND subject = 'BTC'")).scalars())
    engine.dispose()
    served = {datetime.fromtimestamp(c.ts, tz=UTC) for c in load_csv_candles()}
    window = {instant for instant in served if START - timedelta(hours=1, minutes=1) <= instant
              < START + timedelta(hours=3) - timedelta(minutes=1)}
    assert stored == {instant for instant in window if not gap_start <= instant < gap_end}
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "feed_has_every_candle"]
    assert not check.passed


# --- the bulk write path ---------------------------------------------------------------------------


def _row_versions(connection, source: str) -> dict:
    return dict(connection.execute(sa.text(
        "SELECT ts_event, xmin::text FROM crunch.feed_records WHERE source = :source"), {"source": source}).fetchall())


def _stored(connection, source: str) -> dict:
    return dict(connection.execute(sa.text(
        "SELECT ts_event, (price, \"values\"::text)::text FROM crunch.feed_records WHERE source = :source"
    ), {"source": source}).fetchall())


def _candles(count: int, subject: str = "BTC", first: datetime = START, close_offset: float = 0.0) -> list[Candle]:
    return [Candle(subject, first + timedelta(minutes=i), 100 + i, 101.5 + i, 99 + i, 100.25 + i + close_offset,
                   0.001 * i) for i in range(count)]


def _upsert(connection, source: str, candles: list[Candle]) -> int:
    """Rows written, for candles of any subjects (one write per stream, as the feed stage does)."""
    written = 0
    for subject in dict.fromkeys(c.subject for c in candles):
        stream = FeedStream(source, subject, "candle", 60)
        written += feed_store.upsert_records(connection, stream, [c for c in candles if c.subject == subject]).written
    return written


def test_bulk_writes_keep_the_upsert_semantics(clean_database):
    engine = engine_for(clean_database)
    candles = _candles(2000)
    assert len(candles) >= feed_store.COPY_MIN_RECORDS
    with engine.begin() as connection:
        assert _upsert(connection, "copy", candles) == 2000  # COPY into an empty range
        before = _row_versions(connection, "copy")
    with engine.begin() as connection:
        assert _upsert(connection, "copy", candles) == 0  # staged: nothing changes
        assert _row_versions(connection, "copy") == before
    # Two corrected candles and 500 new ones in one batch that overlaps stored rows.
    corrected = {candles[10].ts_event, candles[1500].ts_event}
    batch = [replace(c, close=c.close + 1) if c.ts_event in corrected else c for c in candles[:1800]]
    batch += _candles(500, first=candles[-1].ts_event + timedelta(minutes=1))
    with engine.begin() as connection:
        assert _upsert(connection, "copy", batch) == 2 + 500
        after = _row_versions(connection, "copy")
    assert {ts for ts, version in before.items() if after[ts] != version} == corrected
    # What COPY stores is what the multi-row INSERT stores, to the JSON text.
    with engine.begin() as connection:
        for start in range(0, len(batch), 100):  # batches under COPY_MIN_CANDLES take the INSERT
            _upsert(connection, "insert", batch[start:start + 100])
        copied, inserted = _stored(connection, "copy"), _stored(connection, "insert")
    assert len(copied) == 2500 and {ts: copied[ts] for ts in inserted} == inserted
    with engine.begin() as connection:  # ... so rewriting INSERTed rows by COPY changes none
        versions = _row_versions(connection, "insert")
        assert _upsert(connection, "insert", batch) == 0
        assert _row_versions(connection, "insert") == versions


def test_bulk_writes_of_several_subjects_in_one_transaction(clean_database):
    engine = engine_for(clean_database)
    with engine.begin() as connection:
        assert _upsert(connection, "binance", _candles(600, "BTC")) == 600
        assert _upsert(connection, "binance", _candles(600, "ETH")) == 600
        # Both staged (overlapping), one after the other in the same transaction's staging table.
        assert _upsert(connection, "binance", _candles(700, "BTC")) == 100
        assert _upsert(connection, "binance", _candles(600, "ETH", close_offset=0.5)) == 600
        # A mixed batch, and a subject whose name needs escaping in COPY's text format.
        mixed = _candles(300, "SOL") + _candles(300, "odd\tname\\x")
        assert _upsert(connection, "binance", mixed) == 600
    with engine.connect() as connection:
        counts = dict(connection.execute(sa.text(
            "SELECT subject, count(*) FROM crunch.feed_records GROUP BY subject")).fetchall())
        eth_close = connection.execute(sa.text(
            "SELECT price FROM crunch.feed_records WHERE subject = 'ETH' ORDER BY ts_event LIMIT 1")).scalar_one()
    assert counts == {"BTC": 700, "ETH": 600, "SOL": 300, "odd\tname\\x": 300}
    assert eth_close == 100.75


def test_a_row_written_concurrently_sends_the_copy_to_the_conflict_path(clean_database, monkeypatch):
    """The empty-range check can be stale (another writer commits a row of the range after it):
    the COPY's unique violation is rolled back to its savepoint and the upsert path takes over,
    without disturbing what the transaction wrote before."""
    engine = engine_for(clean_database)
    candles = _candles(1000)
    with engine.begin() as connection:
        _upsert(connection, "binance", candles[500:501])  # the "concurrent" row
    monkeypatch.setattr(feed_store, "_span_is_empty", lambda connection, stream, batch: True)
    with engine.begin() as connection:
        assert _upsert(connection, "binance", _candles(10, "ETH")) == 10
        assert _upsert(connection, "binance", candles) == 999
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM crunch.feed_records")).scalar_one() == 1010


def test_an_autocommit_connection_takes_the_insert_path(clean_database):
    engine = engine_for(clean_database)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        assert _upsert(connection, "binance", _candles(1000)) == 1000
        assert _upsert(connection, "binance", _candles(1000)) == 0

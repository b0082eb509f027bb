"""Two days of real BTC/USD candles replayed through the whole asset chain, as a backfill does,
with the quickstarter models running in their own processes; every number is then recomputed
independently from the CSV file."""

import csv
import importlib
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from crunch_assets.replay import replay
from crunch_assets.spec import DAY_SECONDS
from resources.feeds.csv_replay import CsvReplayFeed

START = datetime(2025, 1, 7, 1, tzinfo=timezone.utc)  # the file's first candle opens at 00:01
END = START + timedelta(days=2)
QUICKSTARTERS = {
    "mean_reversion": "MeanReversion",
    "trend_following": "TrendFollowing",
    "gaussian_density": "GaussianDensity",
}
TABLES = ["feed_records", "feed_ingestion_state", "feed_spans", "models", "inputs", "predictions", "scores",
          "snapshots", "cycle_rollups", "leaderboards", "checkpoints"]


def _row_versions(engine) -> dict[str, set]:
    """(id, xmin) of every row: xmin changes on any UPDATE, so equal sets mean nothing was written."""
    with engine.connect() as connection:
        return {
            table: set(connection.execute(sa.text(f"SELECT id, xmin::text FROM crunch.{table}")).fetchall())
            for table in TABLES
        }


@pytest.fixture(scope="module")
def replayed(database_url, btc_csv):
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.store.database import dispose_engines

    dispose_engines()
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS crunch CASCADE"))
    spec = replace(SPEC, start=START, checkpoint_interval_seconds=DAY_SECONDS)
    defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(btc_csv), source="csv"), automation_running=False)
    replay(defs, spec, START, END)
    yield {"engine": engine, "defs": defs, "spec": spec}
    engine.dispose()


@pytest.fixture(scope="module")
def closes(btc_csv) -> dict[int, float]:
    with open(btc_csv, newline="") as handle:
        return {int(row["timestamp"]): float(row["close"]) for row in csv.DictReader(handle)}


def _expected_scores(closes: dict[int, float]) -> dict[tuple[str, datetime], float]:
    """Independent recomputation: the quickstarters called in-process on the CSV's candles, truth
    from the CSV's closes, Brier skill by hand."""
    from competitions.btc_updown.logic import density_p_up

    models = {
        model_id: getattr(importlib.import_module(f"competitions.btc_updown.models.{model_id}"), cls)()
        for model_id, cls in QUICKSTARTERS.items()
    }
    expected = {}
    for minute in range(int(START.timestamp()), int(END.timestamp()), 60):
        # candles that closed in (T - 1 h, T]: open times T-3600 .. T-60
        candles = [{"ts": ts, "close": closes[ts]} for ts in range(minute - 3600, minute, 60) if ts in closes]
        entry, resolved = closes[minute - 60], closes[minute]  # closes at T and at T + 60 s
        y = 1.0 if resolved > entry else 0.0
        for model_id, model in models.items():
            model.feed_update({"symbol": "BTC", "asof_ts": minute, "candles_1m": candles})
            output = model.predict("BTC", 60, 60)
            p_up = output["p_up"] if "p_up" in output else density_p_up(output)
            expected[(model_id, datetime.fromtimestamp(minute, tz=timezone.utc))] = 1.0 - (p_up - y) ** 2
    return expected


def test_every_cycle_has_one_prediction_per_model(replayed):
    with replayed["engine"].connect() as connection:
        per_input = connection.execute(sa.text(
            "SELECT i.cycle_at, count(p.id) FROM crunch.inputs i LEFT JOIN crunch.predictions p ON p.input_id = i.id "
            "GROUP BY i.cycle_at"
        )).fetchall()
        statuses = dict(connection.execute(sa.text("SELECT status, count(*) FROM crunch.predictions GROUP BY 1")).fetchall())
    assert len(per_input) == 2 * 24 * 60
    assert {count for _, count in per_input} == {3}
    assert min(c for c, _ in per_input) == START and max(c for c, _ in per_input) == END - timedelta(minutes=1)
    # kept as made (never rewritten): every answer was valid and every one has a score
    assert statuses == {"PENDING": 2 * 24 * 60 * 3}
    from resources.store.competition import CompetitionStore

    assert CompetitionStore(replayed["engine"], "btc_updown").prediction_statuses(START, END) == {"SCORED": 2880 * 3}


def test_scores_equal_independent_recomputation(replayed, closes):
    expected = _expected_scores(closes)
    with replayed["engine"].connect() as connection:
        stored = connection.execute(sa.text("SELECT model_id, cycle_at, value, success FROM crunch.scores")).fetchall()
    assert len(stored) == len(expected) == 2880 * 3
    for model_id, cycle_at, value, success in stored:
        assert success
        assert value == pytest.approx(expected[(model_id, cycle_at)], abs=1e-12), (model_id, cycle_at)


def test_leaderboard_windows_and_order(replayed, closes):
    expected = _expected_scores(closes)
    as_of = END.replace(hour=0)  # the leaderboard of day 2025-01-08, as of its end
    with replayed["engine"].connect() as connection:
        entries = connection.execute(
            sa.text("SELECT entries FROM crunch.leaderboards WHERE as_of = :as_of"), {"as_of": as_of}
        ).scalar_one()

    def mean(model_id, since):
        values = [v for (m, c), v in expected.items() if m == model_id and since <= c < as_of]
        return sum(values) / len(values)

    by_model = {e["model_id"]: e for e in entries}
    for model_id in QUICKSTARTERS:
        entry = by_model[model_id]
        assert entry["score_recent"] == pytest.approx(mean(model_id, as_of - timedelta(days=1)), abs=1e-12)
        # 72 h and 7 days reach back before the start: all cycles so far, flagged incomplete
        assert entry["score_steady"] == pytest.approx(mean(model_id, START), abs=1e-12)
        assert entry["score_anchor"] == pytest.approx(mean(model_id, START), abs=1e-12)
        # every model answered every counted cycle of each window so far
        assert entry["score_recent_complete"] and entry["score_recent_coverage"] == 1.0
        assert entry["payout"]["eligible"] and entry["payout"]["cycles"] == 24 * 60
    # the recent window really is a window: it differs from the all-time mean
    assert any(by_model[m]["score_recent"] != pytest.approx(by_model[m]["score_anchor"], abs=1e-9) for m in QUICKSTARTERS)
    recent = [e["score_recent"] for e in entries]
    assert recent == sorted(recent, reverse=True)
    assert [e["rank"] for e in entries] == [1, 2, 3]


def test_checkpoints_pay_exactly_one_billion_in_ranking_order(replayed, closes):
    expected = _expected_scores(closes)
    with replayed["engine"].connect() as connection:
        checkpoints = connection.execute(sa.text(
            "SELECT period_start, period_end, status, entries FROM crunch.checkpoints ORDER BY period_start"
        )).fetchall()
    # daily periods: 01-07 (the competition starts at 01:00: 23 hours) and 01-08 (24 hours)
    assert [c.period_start for c in checkpoints] == [START.replace(hour=0), START.replace(hour=0) + timedelta(days=1)]
    for checkpoint, hours in zip(checkpoints, (23, 24)):
        assert checkpoint.status == "PENDING"
        ranking = checkpoint.entries["ranking"]
        means = {}
        for model_id in QUICKSTARTERS:
            values = [v for (m, c), v in expected.items()
                      if m == model_id and checkpoint.period_start <= c < checkpoint.period_end]
            means[model_id] = sum(values) / len(values)
        assert [r["model_id"] for r in ranking] == sorted(means, key=lambda m: -means[m])
        assert [r["reward_pct"] for r in ranking] == [500_000_000, 250_000_000, 250_000_000]
        for row in ranking:
            assert row["score"] == pytest.approx(means[row["model_id"]], abs=1e-12)
            assert row["prediction_count"] == hours * 60 and row["cycles"] == hours * 60 and row["eligible"]
            assert row["breakdown"]["scored"] == hours * 60 and row["breakdown"]["failed"] == 0
        assert checkpoint.entries["cruncher_rewards"] == sorted(
            ({"cruncher_index": r["cruncher_index"], "reward_pct": r["reward_pct"]} for r in ranking),
            key=lambda r: r["cruncher_index"],
        )


def test_replaying_again_changes_no_row(replayed):
    before = _row_versions(replayed["engine"])
    replay(replayed["defs"], replayed["spec"], START, END)
    assert _row_versions(replayed["engine"]) == before

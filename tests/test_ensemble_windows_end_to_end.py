"""A windowed ensemble (the 2 best models by mean score over the last 10 minutes, weighted by the
inverse variance of their scores) on btc_updown's quickstarters over real BTC/USD candles, through
the real assets and the real database: live (a run per cycle) == a backfill == a replay with the hours
backwards, bit for bit (ensemble outputs, scores, every contribution and reward); every stored
ensemble output equals an independent recomputation from the stored scores; a cycle whose window is
not settled waits (never built from a partial window), and the first cycles (no model has 3 scored
cycles yet) are ABSENT by the declared rule."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.rewards_fixtures import hour_key, materialize_hours, materialize_one
from tests.test_ensembles_end_to_end import definitions, fresh, store_of

MODELS_DIR = Path(__file__).resolve().parents[1] / "competitions" / "btc_updown" / "models"
START = datetime(2025, 1, 7, 2, tzinfo=timezone.utc)
END = START + timedelta(hours=2)
H = timedelta(hours=1)
TEMPLATE_DB = "crunch_ensemble_windows_template"
TOP = "__ensemble_top__"
WINDOW_SECONDS = 600
MIN_HISTORY = 3


def spec_of():
    from competitions.btc_updown.definitions import ENSEMBLES, LOGIC, METRICS, SPEC
    from crunch_assets.spec import EmissionPolicy, Ensemble

    top = Ensemble("top", combine=f"{LOGIC}:average_probabilities", leave_one_out=f"{LOGIC}:leave_one_out_brier",
                   members="top_n", top_n=2, weighting="inverse_variance", window_seconds=WINDOW_SECONDS,
                   min_history_cycles=MIN_HISTORY)
    return replace(SPEC, start=START, checkpoint_interval_seconds=2 * 3600, ensembles=(*ENSEMBLES, top),
                   metrics=METRICS, emission=EmissionPolicy.contribution(ensemble="top"))


def stored(url: str, end: datetime = END) -> dict[tuple[datetime, str], tuple]:
    """(cycle, model) -> (status, reason, output, meta, score value, score success, cycle status)."""
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT p.cycle_at, p.model_id, p.status, p.status_reason, p.inference_output, p.meta, s.value, s.success, "
            "i.status AS cycle_status FROM crunch.predictions p JOIN crunch.inputs i ON i.id = p.input_id "
            "LEFT JOIN crunch.scores s ON s.prediction_id = p.id WHERE p.cycle_at >= :start AND p.cycle_at < :end"),
            {"start": START, "end": end}).fetchall()
    return {(r.cycle_at, r.model_id): tuple(r)[2:] for r in rows}


def cycle_statuses(url: str) -> dict[datetime, str]:
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as connection:
        return {r.cycle_at: r.status for r in connection.execute(sa.text("SELECT cycle_at, status FROM crunch.inputs"))}


def ranking(url: str) -> list[dict]:
    checkpoints = [c for c in store_of(url).checkpoints() if c.period_start == START]
    assert len(checkpoints) == 1
    return checkpoints[0].entries["ranking"]


@pytest.fixture(scope="module")
def template(database_url, btc_csv):
    """02:00-04:00 backfilled in order: feed, predictions and scores, the day's rollups, the checkpoint."""
    spec = spec_of()
    with fresh(database_url, None) as url:
        defs = definitions(spec, MODELS_DIR, url, btc_csv)
        assert materialize_hours(defs, spec, ["feed_records"], START, END).success
        assert materialize_hours(defs, spec, ["predictions", "scores"], START, END - H).success
        assert materialize_one(defs, spec, "snapshots", "2025-01-07").success
        assert materialize_one(defs, spec, "emission_checkpoints", hour_key(START)).success
        yield {"url": url, "stored": stored(url), "ranking": ranking(url)}


def test_every_ensemble_output_equals_a_recomputation_from_the_stored_scores(template):
    from competitions.btc_updown.logic import brier_skill
    from competitions.btc_updown.definitions import SPEC

    rows, statuses = template["stored"], cycle_statuses(template["url"])
    cycles = sorted({c for c, _ in rows})
    assert len(cycles) == 120 and all(statuses[c] in ("RESOLVED", "VOIDED") for c in cycles)  # nothing left waiting
    models = sorted({m for _, m in rows if not m.startswith("__")})
    assert len(models) == 3
    built = absent = 0
    for t in cycles:
        row = rows[(t, TOP)]
        window = [c for c in cycles if t - timedelta(seconds=WINDOW_SECONDS) <= c and c + timedelta(minutes=1) <= t
                  and statuses[c] == "RESOLVED"]
        values = {m: [rows[(c, m)][4] for c in window] for m in models}
        stats = {m: (math.fsum(v) / len(v), math.fsum((x - math.fsum(v) / len(v)) ** 2 for x in v) / len(v))
                 for m, v in values.items() if len(v) >= MIN_HISTORY}
        answered = [m for m in models if rows[(t, m)][0] == "PENDING" and m in stats]
        best = sorted(sorted(answered, key=lambda m: (-stats[m][0], m))[:2])
        assert row[3]["members"] == best, t
        if not best:
            absent += 1
            assert row[0] == "ABSENT" and "passed the filter" in row[1]
            continue
        built += 1
        weights = [1 / max(stats[m][1], 1e-12) for m in best]
        assert row[3]["weights"] == weights
        expected = math.fsum(w * rows[(t, m)][2]["p_up"] for w, m in zip(weights, best)) / math.fsum(weights)
        assert row[0] == "PENDING" and row[2] == {"p_up": expected, "form": "p_up"}  # bit for bit
        if statuses[t] == "RESOLVED":
            truth = None
            with sa.create_engine(template["url"], poolclass=sa.pool.NullPool).connect() as connection:
                truth = connection.execute(sa.text("SELECT actuals FROM crunch.inputs WHERE cycle_at = :t"), {"t": t}).scalar()
            assert row[4] == brier_skill(SPEC.scopes[0], row[2], truth)["value"]
    assert absent >= MIN_HISTORY  # 02:00-02:02: no model has 3 scored cycles before them
    assert built > 100
    # the ensemble is ranked, never paid; contributions are measured against it
    by_model = {r["model_id"]: r for r in template["ranking"]}
    assert by_model[TOP]["reward_pct"] == 0 and sum(r["reward_pct"] for r in template["ranking"]) == 1_000_000_000
    assert any(by_model[m]["breakdown"]["contribution"]["contribution"] != 0 for m in models)


def test_a_replay_with_the_hours_backwards_stores_the_same_bits(template, database_url, btc_csv):
    spec = spec_of()
    with fresh(database_url, None) as url:
        defs = definitions(spec, MODELS_DIR, url, btc_csv)
        assert materialize_hours(defs, spec, ["feed_records"], START, END).success
        later = START + H
        assert materialize_hours(defs, spec, ["predictions", "scores"], later, later).success
        rows, statuses = stored(url), cycle_statuses(url)
        # the first cycles of 03:00 have a window in 02:00, not stored yet: they wait, unscored, no ensemble
        waiting = sorted(c for c, s in statuses.items() if s == "RECEIVED")
        assert waiting[0] == later and len(waiting) >= WINDOW_SECONDS // 60 - 1
        assert all((c, TOP) not in rows and rows[(c, "trend_following")][4] is None for c in waiting)
        assert all(rows[(c, TOP)] == template["stored"][(c, TOP)] for c in statuses if c not in waiting)
        assert materialize_hours(defs, spec, ["predictions", "scores"], START, START).success
        assert materialize_hours(defs, spec, ["scores"], later, later).success  # what the scores sensor re-runs
        assert materialize_one(defs, spec, "snapshots", "2025-01-07").success
        assert materialize_one(defs, spec, "emission_checkpoints", hour_key(START)).success
        assert stored(url) == template["stored"]
        assert ranking(url) == template["ranking"]  # every contribution, component and reward, bit for bit


def test_live_runs_per_cycle_store_what_the_backfill_stores(template, database_url, btc_csv):
    """A run per cycle as the sensors launch them (as_of = the cycle time): the cycle's predictions,
    then the scores of what resolved by then; the windowed ensemble is built as each cycle is scored."""
    from crunch_assets.keys import ChainKeys
    from crunch_assets.replay import chain_assets
    from crunch_assets.run_config import as_of_run_config
    import dagster as dg

    spec = spec_of()
    keys = ChainKeys.for_slug(spec.slug)
    minutes = 16
    with fresh(database_url, None) as url:
        defs = definitions(spec, MODELS_DIR, url, btc_csv)
        assert materialize_hours(defs, spec, ["feed_records"], START, START).success
        cycle_ops = [ChainKeys.op_name(keys.feed_records), ChainKeys.op_name(keys.predictions)]
        score_op = [ChainKeys.op_name(keys.scores)]
        for minute in range(minutes + 1):
            at = START + timedelta(minutes=minute)
            assert dg.materialize(chain_assets(defs, [keys.feed_records, keys.predictions]), resources=defs.resources,
                                  partition_key=hour_key(START), run_config=as_of_run_config(cycle_ops, at)).success
            assert dg.materialize(chain_assets(defs, [keys.scores]), resources=defs.resources,
                                  partition_key=hour_key(START), run_config=as_of_run_config(score_op, at)).success
        live = stored(url, START + timedelta(minutes=minutes))
        expected = {k: v for k, v in template["stored"].items() if k[0] < START + timedelta(minutes=minutes)}
        assert live == expected
        assert sum(1 for (_, m), v in live.items() if m == TOP and v[0] == "PENDING") >= minutes - MIN_HISTORY - 1

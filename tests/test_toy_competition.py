"""A competition whose input is not a price history at all, run end to end: weather readings as
feed records without a price, outcomes from a ledger resource instead of the feed, pydantic shapes
at every boundary, a cross-sectional step and a proportional emission (tests/toy_competition)."""

import math
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from crunch_assets.emission import FRAC64_ONE

START = datetime(2026, 11, 16, tzinfo=timezone.utc)
OUTAGE = (START + timedelta(hours=2), START + timedelta(hours=2, minutes=30))


@pytest.fixture(scope="module")
def replayed(database_url):
    from crunch_assets.replay import replay
    from resources.store.database import dispose_engines, engine_for
    from tests.toy_competition.definitions import SPEC, build_definitions
    from tests.toy_competition.logic import OutcomeLedger

    dispose_engines()
    with engine_for().begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS crunch CASCADE"))
    dispose_engines()
    ledger = OutcomeLedger(outage_start=OUTAGE[0].isoformat(), outage_end=OUTAGE[1].isoformat())
    defs = build_definitions(ledger=ledger)
    timings = replay(defs, SPEC, START, START + timedelta(hours=6))
    assert timings.checkpoints == ["2026-11-16-00:00", "2026-11-16-03:00"]
    return engine_for()


def _rows(engine, sql, **params):
    with engine.connect() as connection:
        return connection.execute(sa.text(sql), params).fetchall()


def test_the_feed_holds_readings_without_prices_and_inputs_follow_the_declared_shape(replayed):
    kinds = _rows(replayed, "SELECT kind, granularity, count(*), count(price) FROM crunch.feed_records "
                            "WHERE source = 'toy_station' GROUP BY 1, 2")
    assert [(k, g, n > 0, priced) for k, g, n, priced in kinds] == [("reading", "tick", True, 0)]
    raw = _rows(replayed, "SELECT raw_data FROM crunch.inputs WHERE competition = 'toy_weather' AND cycle_at = :t",
                t=START + timedelta(hours=1))[0][0]
    from tests.toy_competition.logic import temperature

    expected = [temperature("station_a", int((START + timedelta(minutes=10 * m)).timestamp())) for m in range(1, 7)]
    assert raw == {"station": "station_a", "asof_ts": int((START + timedelta(hours=1)).timestamp()), "readings": expected}


def test_an_answer_off_the_declared_schema_is_failed_with_the_schemas_reason(replayed):
    rows = _rows(replayed, "SELECT DISTINCT status, status_reason FROM crunch.predictions "
                           "WHERE competition = 'toy_weather' AND model_id = 'wrong_shape'")
    assert len(rows) == 1 and rows[0][0] == "FAILED"
    assert rows[0][1].startswith("invalid output: ") and "probabilities" in rows[0][1]


def test_outcomes_come_from_the_ledger_and_an_outage_voids_its_cycles(replayed):
    from tests.toy_competition.logic import category, temperature

    inputs = _rows(replayed, "SELECT cycle_at, status, actuals, meta FROM crunch.inputs WHERE competition = 'toy_weather' ORDER BY 1")
    assert len(inputs) == 36
    for cycle_at, status, actuals, meta in inputs:
        resolvable_at = cycle_at + timedelta(minutes=30)
        if OUTAGE[0] <= resolvable_at < OUTAGE[1]:
            assert status == "VOIDED" and "out of service" in meta["void_reason"]
        else:
            value = temperature("station_a", int(resolvable_at.timestamp()))
            assert status == "RESOLVED" and actuals == {"temperature_c": value, "category": category(value)}


def test_scores_are_relative_to_the_field_as_an_independent_recomputation_says(replayed):
    from tests.toy_competition.logic import category, temperature

    rows = _rows(replayed, "SELECT p.cycle_at, p.model_id, s.value, s.success, s.result FROM crunch.scores s "
                           "JOIN crunch.predictions p ON p.id = s.prediction_id WHERE s.competition = 'toy_weather'")
    by_cycle = {}
    for cycle_at, model, value, success, result in rows:
        by_cycle.setdefault(cycle_at, {})[model] = (value, success, result)
    assert len(by_cycle) == 36 - 3  # three cycles voided by the outage
    for cycle_at, scores in by_cycle.items():
        truth = category(temperature("station_a", int((cycle_at + timedelta(minutes=30)).timestamp())))
        last = temperature("station_a", int(cycle_at.timestamp()))
        persistence_p = 0.8 if category(last) == truth else 0.1
        log_scores = {"climatology": math.log(1 / 3), "persistence": math.log(persistence_p)}
        expected_persistence = 1.0 if log_scores["persistence"] > log_scores["climatology"] else 0.0
        assert scores["persistence"][0] == pytest.approx(expected_persistence)
        assert scores["climatology"][0] == pytest.approx(1.0 - expected_persistence)
        assert scores["persistence"][2]["log_score"] == pytest.approx(log_scores["persistence"])
        assert scores["wrong_shape"][:2] == (0.0, False)  # the constant failure value


def test_checkpoints_pay_proportionally_with_a_floor(replayed):
    checkpoints = _rows(replayed, "SELECT entries FROM crunch.checkpoints WHERE competition = 'toy_weather' ORDER BY period_start")
    for (entries,) in checkpoints:
        rewards = {r["model_id"]: r["reward_pct"] for r in entries["ranking"]}
        assert sum(rewards.values()) == FRAC64_ONE
        # wrong_shape never gave a usable answer: ranked last and shown, paid nothing (it used to keep
        # the floor, 20 % / 3); the two models that answered share the pool, the worse keeps 20 % / 2
        wrong = next(r for r in entries["ranking"] if r["model_id"] == "wrong_shape")
        assert wrong["reward_pct"] == 0 and wrong["rank"] == 3
        assert wrong["breakdown"]["unpaid_reason"] == "no scored answer in the period"
        assert entries["ranking"][1]["reward_pct"] == pytest.approx(FRAC64_ONE * 0.2 / 2, abs=1)  # the worst keeps the floor
        assert entries["ranking"][0]["reward_pct"] >= entries["ranking"][1]["reward_pct"] > 0

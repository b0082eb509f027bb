"""Asset runs with as_of = each cycle time (what a sensor-launched run does; the live window run
calls the same stage functions, tests/test_live_window.py) and a backfill of the same window into
an empty store give the same inputs, predictions and scores: the two share one code path."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import dagster as dg
import sqlalchemy as sa

from crunch_assets.keys import ChainKeys
from crunch_assets.run_config import as_of_run_config
from crunch_assets.replay import chain_assets

START = datetime(2025, 1, 7, 2, tzinfo=timezone.utc)
PARTITION = "2025-01-07-02:00"
LIVE_CYCLES = 12


def _drop_store(url):
    from resources.store.database import dispose_engines

    dispose_engines()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS crunch CASCADE"))
    engine.dispose()


def _outcome(url):
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        inputs = connection.execute(sa.text(
            "SELECT cycle_at, raw_data FROM crunch.inputs WHERE cycle_at < :end ORDER BY cycle_at"),
            {"end": START + timedelta(minutes=LIVE_CYCLES)}).fetchall()
        predictions = connection.execute(sa.text(
            "SELECT p.cycle_at, p.model_id, p.status, p.inference_output, s.value, s.success FROM crunch.predictions p "
            "JOIN crunch.scores s ON s.prediction_id = p.id WHERE p.cycle_at < :end ORDER BY 1, 2"),
            {"end": START + timedelta(minutes=LIVE_CYCLES)}).fetchall()
    engine.dispose()
    return [tuple(r) for r in inputs], [tuple(r) for r in predictions]


def test_live_cycles_equal_a_backfill(clean_database, btc_csv):
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.feeds.csv_replay import CsvReplayFeed

    spec = replace(SPEC, start=START)
    defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(btc_csv)), automation_running=False)
    keys = ChainKeys.for_slug(spec.slug)
    cycle_ops = [ChainKeys.op_name(keys.feed_records), ChainKeys.op_name(keys.predictions)]
    for minute in range(LIVE_CYCLES):  # what the cycle sensor launches, one run per cycle
        dg.materialize(chain_assets(defs, [keys.feed_records, keys.predictions]), resources=defs.resources,
                       partition_key=PARTITION, run_config=as_of_run_config(cycle_ops, START + timedelta(minutes=minute)))
    settled = START + timedelta(minutes=LIVE_CYCLES)
    dg.materialize(chain_assets(defs, [keys.feed_records]), resources=defs.resources, partition_key=PARTITION,
                   run_config=as_of_run_config(cycle_ops[:1], settled))
    dg.materialize(chain_assets(defs, [keys.scores]), resources=defs.resources, partition_key=PARTITION,
                   run_config=as_of_run_config([ChainKeys.op_name(keys.scores)], settled))
    live_inputs, live_predictions = _outcome(clean_database)
    assert len(live_inputs) == LIVE_CYCLES and len(live_predictions) == 3 * LIVE_CYCLES

    _drop_store(clean_database)
    for key_list in ([keys.feed_records], [keys.predictions, keys.scores]):  # a backfill: whole windows
        dg.materialize(chain_assets(defs, key_list), resources=defs.resources, partition_key=PARTITION)
    backfill_inputs, backfill_predictions = _outcome(clean_database)

    assert backfill_inputs == live_inputs
    assert backfill_predictions == live_predictions


def test_a_run_launched_early_waits_for_its_cycle(clean_database):
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.clock import TestClock, use_clock
    from resources.feeds.synthetic import SyntheticFeed

    from crunch_assets.spec import Scope

    # a 15-second cycle (on 15 s candles: a 60 s candle would be 45 s old at every fourth cycle, over
    # the 30 s staleness bound, and the load refuses it)
    spec = replace(SPEC, start=datetime(2026, 11, 6, tzinfo=timezone.utc), scopes=(Scope("BTC", 60, 15),))
    defs = build_definitions(spec=spec, feed=SyntheticFeed(granularity_seconds=15), automation_running=False)
    keys = ChainKeys.for_slug(spec.slug)
    cycle_at = datetime(2026, 11, 6, 10, 20, 15, tzinfo=timezone.utc)
    launched = cycle_at - timedelta(seconds=spec.cycle_lead_seconds) + timedelta(seconds=0.5)  # inside the lead
    ops = [ChainKeys.op_name(keys.feed_records), ChainKeys.op_name(keys.predictions)]
    with use_clock(TestClock(launched)) as clock:  # its wait advances the clock instead of the test waiting
        result = dg.materialize(chain_assets(defs, [keys.feed_records, keys.predictions]), resources=defs.resources,
                                partition_key=cycle_at.strftime("%Y-%m-%d-%H:00"), run_config=as_of_run_config(ops, cycle_at))
        assert launched < cycle_at <= clock.now()  # it waited for the due time
    metadata = result.asset_materializations_for_node(ops[1])[0].metadata
    assert metadata["as_of"].value == cycle_at.isoformat()
    assert metadata["cycles_run"].value >= 1  # the due cycle (and any earlier one of the hour not stored)
    engine = sa.create_engine(clean_database)
    with engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT count(*) FROM crunch.inputs WHERE cycle_at = :c"), {"c": cycle_at}).scalar()
    engine.dispose()
    assert stored == 1

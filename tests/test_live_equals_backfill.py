"""A live run (one run per cycle, as the cycle sensor launches them, with as_of = the cycle time)
and a backfill of the same window into an empty store give the same inputs, predictions and
scores: the two share one code path."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import dagster as dg
import sqlalchemy as sa

from crunch_assets.assets import ChainKeys, as_of_run_config
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

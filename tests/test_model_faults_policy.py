"""Fault policy in the engine: quarantine after consecutive failures, the model registry sensor."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from crunch_assets.keys import ChainKeys
from crunch_assets.run_config import as_of_run_config
from crunch_assets.replay import chain_assets

START = datetime(2026, 11, 4, tzinfo=timezone.utc)
PARTITION = "2026-11-04-00:00"


def _write_models(directory: Path, calls_log: Path) -> None:
    directory.mkdir()
    (directory / "steady.py").write_text(
        "from competitions.btc_updown.model_base import UpDownModel\n\n"
        "class Steady(UpDownModel):\n"
        "    def predict(self, subject, resolve_horizon_seconds, step_seconds):\n"
        "        return {'p_up': 0.55}\n"
    )
    (directory / "broken.py").write_text(
        "from competitions.btc_updown.model_base import UpDownModel\n\n"
        "class Broken(UpDownModel):\n"
        "    def predict(self, subject, resolve_horizon_seconds, step_seconds):\n"
        f"        open({str(calls_log)!r}, 'a').write('call\\n')\n"
        "        raise ValueError('always broken')\n"
    )


def _unsandboxed_runner(models_dir: Path):
    """The broken model logs its calls to a file of the test, which a sandboxed model could not
    write: what is tested here is the engine's policy, the same whatever the runner."""
    from resources.model_runners.local import LocalModelRunner

    return LocalModelRunner(models_dir=str(models_dir), call_timeout_seconds=2, sandbox="off")


def _run_predictions(defs, spec, minutes):
    keys = ChainKeys.for_slug(spec.slug)
    ops = [ChainKeys.op_name(keys.feed_records), ChainKeys.op_name(keys.predictions)]
    return dg.materialize(chain_assets(defs, [keys.feed_records, keys.predictions]), resources=defs.resources,
                          partition_key=PARTITION, run_config=as_of_run_config(ops, START + timedelta(minutes=minutes)))


def test_quarantine_after_consecutive_failures_then_retry(clean_database, tmp_path):
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.feeds.synthetic import SyntheticFeed

    calls_log = tmp_path / "calls.log"
    _write_models(tmp_path / "models", calls_log)
    spec = replace(SPEC, start=START, quarantine_after_failures=3, quarantine_cooldown_seconds=180)
    defs = build_definitions(spec=spec, feed=SyntheticFeed(), automation_running=False,
                             model_runner=_unsandboxed_runner(tmp_path / "models"))
    # two runs (as live cycles would be): the policy's state carries over through the store
    first = _run_predictions(defs, spec, minutes=4)
    second = _run_predictions(defs, spec, minutes=9)
    op = ChainKeys.op_name(ChainKeys.for_slug(spec.slug).predictions)
    shown = [r.asset_materializations_for_node(op)[0].metadata["quarantines_started"].value for r in (first, second)]
    assert shown == [[f"broken at {START + timedelta(minutes=2):%Y-%m-%dT%H:%M:%S+00:00} until "
                      f"{START + timedelta(minutes=5):%Y-%m-%dT%H:%M:%S+00:00}"],
                     [f"broken at {START + timedelta(minutes=7):%Y-%m-%dT%H:%M:%S+00:00} until "
                      f"{START + timedelta(minutes=10):%Y-%m-%dT%H:%M:%S+00:00}"]]

    engine = sa.create_engine(clean_database)
    with engine.connect() as connection:
        broken = connection.execute(sa.text(
            "SELECT cycle_at, status, status_reason FROM crunch.predictions WHERE model_id = 'broken' ORDER BY cycle_at"
        )).fetchall()
        steady = connection.execute(sa.text(
            "SELECT DISTINCT status FROM crunch.predictions WHERE model_id = 'steady'")).scalars().all()
        events = connection.execute(sa.text(
            "SELECT at, event, meta->>'quarantined_until' FROM crunch.model_events WHERE event = 'QUARANTINED' "
            "ORDER BY at")).fetchall()
    engine.dispose()
    minute = lambda m: START + timedelta(minutes=m)  # noqa: E731
    quarantined = [row.cycle_at for row in broken if row.status_reason.startswith("quarantined")]
    # fails at 0, 1, 2 -> quarantined for 180 s (cycles 3, 4); tried at 5, 6, 7 -> quarantined 8, 9
    assert quarantined == [minute(3), minute(4), minute(8), minute(9)]
    assert all(row.status == "FAILED" for row in broken) and len(broken) == 10  # quarantine still counts
    assert calls_log.read_text().count("call") == 6  # never called while quarantined
    assert [(e.at, e.event) for e in events] == [(minute(2), "QUARANTINED"), (minute(7), "QUARANTINED")]
    assert events[0][2] == minute(5).isoformat()
    assert steady == ["PENDING"]


def test_quarantine_holds_across_one_cycle_live_runs(clean_database, tmp_path):
    """Issue: live, each run stores one cycle; a quarantined model was still called every cycle
    (and QUARANTINED written every cycle) because the next run did not read the quarantine."""
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.feeds.synthetic import SyntheticFeed

    calls_log = tmp_path / "calls.log"
    _write_models(tmp_path / "models", calls_log)
    spec = replace(SPEC, start=START, quarantine_after_failures=3, quarantine_cooldown_seconds=180)
    defs = build_definitions(spec=spec, feed=SyntheticFeed(), automation_running=False,
                             model_runner=_unsandboxed_runner(tmp_path / "models"))
    for minute in range(10):  # one run per cycle, as the cycle sensor launches them
        _run_predictions(defs, spec, minutes=minute)
    engine = sa.create_engine(clean_database)
    with engine.connect() as connection:
        quarantined = connection.execute(sa.text(
            "SELECT cycle_at FROM crunch.predictions WHERE model_id = 'broken' AND status_reason LIKE 'quarantined%' "
            "ORDER BY cycle_at")).scalars().all()
        events = connection.execute(sa.text(
            "SELECT at FROM crunch.model_events WHERE event = 'QUARANTINED' ORDER BY at")).scalars().all()
    engine.dispose()
    minute = lambda m: START + timedelta(minutes=m)  # noqa: E731
    assert quarantined == [minute(3), minute(4), minute(8), minute(9)]  # exactly as one run of the hour
    assert events == [minute(2), minute(7)]
    assert calls_log.read_text().count("call") == 6


def test_model_registry_sensor_requests_a_sync_and_the_asset_records_joins_and_leaves(clean_database, tmp_path):
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.model_runners.local import LocalModelRunner

    models = tmp_path / "models"
    _write_models(models, tmp_path / "calls.log")
    defs = build_definitions(spec=replace(SPEC, start=START), automation_running=True,
                             model_runner=LocalModelRunner(models_dir=str(models)))
    sensor = next(s for s in defs.sensors if s.name == "btc_updown__model_registry_sensor")
    registry = chain_assets(defs, [ChainKeys.for_slug("btc_updown").model_registry])
    instance = dg.DagsterInstance.ephemeral()  # the sensor also asks whether the registry was ever materialized

    def tick():
        return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs))

    first = tick()
    assert first.run_requests[0].tags["crunch/registry_changes"] == "JOINED broken; JOINED steady"
    dg.materialize(registry, resources=defs.resources, instance=instance)
    assert tick().skip_message == "2 model(s), no change"
    (models / "broken.py").unlink()
    assert tick().run_requests[0].tags["crunch/registry_changes"] == "LEFT broken"
    dg.materialize(registry, resources=defs.resources, instance=instance)
    engine = sa.create_engine(clean_database)
    with engine.connect() as connection:
        states = dict(connection.execute(sa.text("SELECT model_id, state FROM crunch.models")).fetchall())
        events = connection.execute(sa.text("SELECT event, model_id FROM crunch.model_events ORDER BY id")).fetchall()
    engine.dispose()
    assert states == {"steady": "RUNNING", "broken": "GONE"}
    assert [tuple(e) for e in events] == [("JOINED", "broken"), ("JOINED", "steady"), ("LEFT", "broken")]

"""The purge job deletes a competition's old finished runs with their events and compute logs, and
nothing else: not newer runs, not runs in flight, not another competition's, never the store."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.storage.compute_log_manager import ComputeIOType

from crunch_assets.defs.housekeeping.purge import purge_dagster_history

PARTITION = "2026-11-01-00:00"


def _run_ids(instance, **filters):
    return {r.dagster_run.run_id for r in instance.get_run_records(filters=dg.RunsFilter(**filters))}


def _write_compute_log(instance, run_id: str) -> Path:
    with instance.compute_log_manager.open_log_stream([run_id, "compute_logs", "step"], ComputeIOType.STDOUT) as stream:
        stream.write("captured output\n")
    return Path(instance.compute_log_manager._base_dir) / run_id


def test_compute_logs_live_under_the_data_directory(instance, tmp_path):
    assert Path(instance.compute_log_manager._base_dir) == (tmp_path / "data" / "compute_logs").resolve()


def test_purge_job_deletes_old_runs_events_and_logs_of_its_competition_only(instance, clean_database, tmp_path):
    from competitions.btc_updown.definitions import build_definitions

    defs = build_definitions(automation_running=False)
    # real runs of the competition: a cycle materialization and a registry sync
    cycle = defs.resolve_job_def("btc_updown__cycle_job").execute_in_process(instance=instance, partition_key=PARTITION)
    assert cycle.success
    registry = defs.resolve_job_def("btc_updown__model_registry_job").execute_in_process(instance=instance)
    assert registry.success

    @dg.op
    def noop():
        return 1

    other = dg.GraphDefinition(name="other_comp__job", node_defs=[noop]).to_job(tags={"crunch/competition": "other_comp"})
    other_run = other.execute_in_process(instance=instance).run_id
    old_runs = [cycle.run_id, registry.run_id]
    log_dirs = [_write_compute_log(instance, run_id) for run_id in [*old_runs, other_run]]
    cutoff = datetime.now(timezone.utc)

    # after the cutoff: a newer run, and a run still in flight (created before, never finished)
    newer = defs.resolve_job_def("btc_updown__model_registry_job").execute_in_process(instance=instance).run_id
    in_flight = instance.create_run_for_job(  # NOT_STARTED: not finished, so never purged
        defs.resolve_job_def("btc_updown__model_registry_job"), tags={"crunch/competition": "btc_updown"},
    )
    engine = sa.create_engine(clean_database)
    with engine.connect() as connection:
        store_before = connection.execute(sa.text("SELECT (SELECT count(*) FROM crunch.predictions), (SELECT count(*) FROM crunch.inputs)")).one()
    assert store_before[0] == 180

    result = purge_dagster_history(instance, "btc_updown", cutoff)

    remaining = _run_ids(instance)
    assert not set(old_runs) & remaining
    assert {newer, in_flight.run_id, other_run} <= remaining
    assert result.runs_deleted >= 2
    for run_id in old_runs:  # events go with the run
        assert instance.get_records_for_run(run_id).records == []
    assert not log_dirs[0].exists() and not log_dirs[1].exists()
    assert log_dirs[2].exists()  # another competition's logs stay
    with engine.connect() as connection:
        store_after = connection.execute(sa.text("SELECT (SELECT count(*) FROM crunch.predictions), (SELECT count(*) FROM crunch.inputs)")).one()
    engine.dispose()
    assert tuple(store_after) == tuple(store_before)  # the competition store is never touched

    # the job itself, as its schedule launches it: nothing left older than its age; a rerun is a no-op
    purge = defs.resolve_job_def("btc_updown__purge_job")
    for _ in range(2):
        outcome = purge.execute_in_process(instance=instance, run_config={"ops": {"btc_updown__purge_dagster_history": {"config": {"older_than_days": 0}}}})
        assert outcome.success
    summary = outcome.output_for_node("btc_updown__purge_dagster_history")
    assert summary["runs_deleted"] == 1  # the previous purge run (finished); the newer registry run went in the first
    assert newer not in _run_ids(instance)
    assert in_flight.run_id in _run_ids(instance)


def test_purge_refuses_a_naive_cutoff(instance):
    with pytest.raises(ValueError, match="timezone-aware"):
        purge_dagster_history(instance, "btc_updown", datetime.now() - timedelta(days=1))


def test_purge_schedule_is_daily_and_uses_the_configured_age(monkeypatch):
    from crunch_assets.defs.housekeeping.purge import build_purge
    from crunch_assets.settings import CompetitionSettings
    from competitions.btc_updown.definitions import SPEC

    job, schedule = build_purge(SPEC, running=True, settings=CompetitionSettings("btc_updown", {"CRUNCH_PURGE_AFTER_DAYS": "30"}))
    assert schedule.cron_schedule == "30 3 * * *" and schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    config = job.run_config if isinstance(job.run_config, dict) else job.run_config.to_config_dict()
    assert config["ops"]["btc_updown__purge_dagster_history"]["config"]["older_than_days"] == 30
    with pytest.raises(ValueError, match="PURGE_AFTER_DAYS"):
        build_purge(SPEC, running=True, settings=CompetitionSettings("btc_updown", {"CRUNCH_BTC_UPDOWN_PURGE_AFTER_DAYS": "0"}))

"""The run failure sensor records a real failed run and alerts a real webhook over loopback, with
bounded retries and without logging the URL; the freshness checks judge real materializations."""

import shutil
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import requests

from tests.fakes.webhook import SECRET, Webhook
from crunch_assets.observability import ALERT_WEBHOOK_ENV, build_run_failure_sensor, freshness_bounds, post_alert, redacted

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def instance(database_url, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("CRUNCH_DATA_DIR", str(tmp_path / "data"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _failed_run(instance):
    """A real run that fails while materializing btc_updown/predictions."""

    @dg.asset(key=["btc_updown", "predictions"])
    def predictions():
        raise RuntimeError("the model runner is unreachable")

    result = dg.materialize([predictions], instance=instance, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    return run, failure


def _evaluate(sensor, instance, run, failure):
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=failure, dagster_instance=instance, dagster_run=run,
    ).for_run_failure()
    return sensor(context)


def test_a_failed_run_is_recorded_and_alerted_after_retries(instance, monkeypatch, capfd):
    from competitions.btc_updown.definitions import SPEC

    webhook = Webhook(statuses=[503, 502])  # two failures, then the alert goes through
    monkeypatch.setenv(ALERT_WEBHOOK_ENV, webhook.url)
    try:
        run, failure = _failed_run(instance)
        sensor = build_run_failure_sensor(SPEC, running=True)
        capfd.readouterr()
        _evaluate(sensor, instance, run, failure)
    finally:
        webhook.close()
    assert len(webhook.bodies) == 3  # 503, 502, then 200
    alert = webhook.bodies[-1]
    assert alert["competition"] == "btc_updown" and alert["event"] == "run_failure"
    assert alert["run_id"] == run.run_id and "unreachable" in alert["error"]
    # the failure is recorded in Dagster, on the asset the run was materializing
    records = instance.fetch_observations(dg.AssetKey(["btc_updown", "predictions"]), limit=5).records
    observed = [r.asset_observation.metadata["failed_run_id"].value for r in records]
    assert run.run_id in observed
    logged = capfd.readouterr().err
    assert f"run {run.run_id} of __ephemeral_asset_job__ failed" in logged and "alerted http://127.0.0.1:" in logged
    assert SECRET not in logged  # the webhook URL is a secret


def test_the_alert_gives_up_after_bounded_attempts(instance, monkeypatch, capfd):
    from competitions.btc_updown.definitions import SPEC

    webhook = Webhook(statuses=[500] * 10)
    monkeypatch.setenv(ALERT_WEBHOOK_ENV, webhook.url)
    try:
        run, failure = _failed_run(instance)
        capfd.readouterr()
        _evaluate(build_run_failure_sensor(SPEC, running=True), instance, run, failure)  # does not raise
    finally:
        webhook.close()
    assert len(webhook.bodies) == 3
    logged = capfd.readouterr().err
    assert "answered 500" in logged and SECRET not in logged


def test_an_unreachable_webhook_raises_after_its_attempts():
    closed = Webhook()
    url = closed.url
    closed.close()  # nothing listens there any more
    with pytest.raises(requests.ConnectionError):
        post_alert(url, {"x": 1}, attempts=2, timeout_seconds=1.0, backoff_seconds=0.0)
    assert redacted(url).endswith(str(closed.server.server_address[1])) and SECRET not in redacted(url)


def test_freshness_checks_judge_the_last_materialization(instance):
    from competitions.btc_updown.definitions import build_definitions

    defs = build_definitions(automation_running=False)
    check_keys = [key for key in defs.resolve_asset_graph().asset_check_keys if key.asset_key.path[0] == "btc_updown"
                  and "freshness" in key.name]
    assert {key.asset_key.path[1] for key in check_keys} == {"predictions", "scores", "emission_checkpoints"}
    predictions_check = next(key for key in check_keys if key.asset_key.path[1] == "predictions")
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(), asset_check_selection={predictions_check})
    # never materialized: overdue
    result = job.execute_in_process(instance=instance)
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed
    # one real cycle run materializes predictions: fresh
    cycle = defs.resolve_job_def("btc_updown__cycle_job").execute_in_process(instance=instance, partition_key="2026-11-01-00:00")
    assert cycle.success
    result = job.execute_in_process(instance=instance)
    evaluation = result.get_asset_check_evaluations()[0]
    assert evaluation.passed
    assert "dagster/last_updated_timestamp" in evaluation.metadata


def test_freshness_bounds_follow_the_spec():
    from competitions.btc_updown.definitions import SPEC

    bounds = freshness_bounds(SPEC)
    assert bounds["predictions"] == timedelta(minutes=3)  # two 60 s cycles, at least 3 minutes
    assert bounds["scores"] == timedelta(seconds=60) + timedelta(minutes=10)
    assert bounds["emission_checkpoints"] == timedelta(days=7, seconds=60, hours=2)

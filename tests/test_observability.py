"""The run failure sensor records a real failed run and alerts a real webhook over loopback, with
bounded retries and without logging the URL; the lag checks judge the store, and their sensor
records each verdict without a run."""

import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
import requests

from tests.fakes.webhook import SECRET, Webhook
from crunch_assets.defs.housekeeping.observability import (
    ALERT_WEBHOOK_ENV, LAG_CHECKS, build_run_failure_sensor, current_lag, lag_bounds, lag_verdicts, post_alert, redacted,
)



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


def _check_history(instance, asset: str, check_name: str):
    key = dg.AssetCheckKey(dg.AssetKey(["btc_updown", asset]), check_name)
    return instance.event_log_storage.get_asset_check_execution_history(key, limit=50)


def test_lag_checks_judge_the_store_and_the_sensor_records_them_without_a_run(instance, clean_database):
    """A competition that started last hour: with nothing stored its cycles are late; after a real
    cycle run of that hour the last stored cycle is judged on its age, scores (none: the cycle job
    does not score) are late, the first checkpoint is not due yet. The cycle run itself evaluates
    no lag check; the sensor records each verdict once (not every tick) and starts no run."""
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.partitions import floor_hour
    from resources.store.database import CrunchDatabase

    now = datetime.now(timezone.utc)
    spec = replace(SPEC, start=floor_hour(now) - timedelta(hours=1))
    defs = build_definitions(spec, automation_running=False)
    check_keys = {key for key in defs.resolve_asset_graph().asset_check_keys if key.asset_key.path[0] == "btc_updown"}
    assert {(key.asset_key.path[1], key.name) for key in check_keys} >= set(LAG_CHECKS.items())
    database = CrunchDatabase()
    feed = defs.resources["feed"]

    # an hour after the start with nothing stored: the feed and cycles are late, the rest not due yet
    verdicts = {v.check_name: v for v in current_lag(spec, database, now, feed)}
    assert not verdicts["cycles_on_time"].passed and verdicts["cycles_on_time"].last_at is None
    assert not verdicts["feed_on_time"].passed and verdicts["feed_on_time"].last_at is None
    assert verdicts["checkpoints_on_time"].passed  # the first week is not over

    # the previous hour's cycles through the real cycle job: the newest cycle is recent
    cycle = defs.resolve_job_def("btc_updown__cycle_job").execute_in_process(
        instance=instance, partition_key=spec.start.strftime("%Y-%m-%d-%H:%M"))
    assert cycle.success
    assert not {e.check_name for e in cycle.get_asset_check_evaluations()} & set(LAG_CHECKS.values())
    verdict = next(v for v in current_lag(spec, database, datetime.now(timezone.utc), feed) if v.check_name == "cycles_on_time")
    assert verdict.last_at == spec.start + timedelta(minutes=59)
    assert verdict.passed == (datetime.now(timezone.utc) - verdict.last_at <= timedelta(minutes=3))

    # launched from the UI, the check judges the same way
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(), asset_check_selection={dg.AssetCheckKey(dg.AssetKey(["btc_updown", "predictions"]), "cycles_on_time")})
    evaluation = job.execute_in_process(instance=instance).get_asset_check_evaluations()[0]
    assert evaluation.passed == verdict.passed and evaluation.metadata["last_at"].value == verdict.last_at.isoformat()

    sensor = defs.resolve_sensor_def("btc_updown__lag_sensor")
    before = {name: len(_check_history(instance, asset, name)) for asset, name in LAG_CHECKS.items()}
    runs_before = len(instance.get_run_records())
    with dg.build_sensor_context(instance=instance, resources={"database": database, "feed": feed}) as context:
        result = sensor(context)
    assert isinstance(result, dg.SkipReason)
    assert re.fullmatch(r"feed_records \d+/180 s(?: LATE)?, predictions \d+/180 s(?: LATE)?, scores (?:none yet|\d+/660 s) LATE, "
                        r"emission_checkpoints (?:none yet|\d+/\d+ s)", result.skip_message)
    after = {name: len(_check_history(instance, asset, name)) for asset, name in LAG_CHECKS.items()}
    assert all(after[name] == before[name] + 1 for name in after), (before, after)
    assert _check_history(instance, "scores", "scores_on_time")[0].status.value == "FAILED"
    assert _check_history(instance, "emission_checkpoints", "checkpoints_on_time")[0].status.value == "SUCCEEDED"
    # the next tick with the same verdicts records nothing new
    with dg.build_sensor_context(instance=instance, resources={"database": database, "feed": feed}, cursor=context.cursor) as again:
        sensor(again)
    assert {name: len(_check_history(instance, asset, name)) for asset, name in LAG_CHECKS.items()} == after
    assert len(instance.get_run_records()) == runs_before


def test_lag_verdicts_follow_the_spec_bounds():
    from competitions.btc_updown.definitions import SPEC
    from crunch_assets.defs.housekeeping.observability import FeedLag
    from resources.store.reports import LagReport

    bounds = lag_bounds(SPEC)
    assert bounds["predictions"] == bounds["feed_records"] == timedelta(minutes=3)  # two 60 s cycles, at least 3 minutes
    assert bounds["scores"] == timedelta(seconds=60) + timedelta(minutes=10)
    assert bounds["emission_checkpoints"] == timedelta(days=7, seconds=60, hours=2)
    now = SPEC.start + timedelta(days=30)
    on_time = LagReport({"BTC": now - timedelta(minutes=2)}, now - timedelta(minutes=5), now - timedelta(days=3), now)
    fresh_feed = FeedLag(now - timedelta(seconds=20))
    assert all(v.passed for v in lag_verdicts(SPEC, on_time, now, fresh_feed))
    late = LagReport({"BTC": now - timedelta(minutes=4)}, now - timedelta(minutes=12), now - timedelta(days=8), now)
    stalled = FeedLag(now - timedelta(minutes=5), "binance BTC: last fetch error at ...: FeedUnavailableError: timed out")
    verdicts = {v.check_name: v for v in lag_verdicts(SPEC, late, now, stalled)}
    assert [name for name, v in verdicts.items() if not v.passed] == [
        "feed_on_time", "cycles_on_time", "scores_on_time", "checkpoints_on_time"]
    assert verdicts["cycles_on_time"].behind_seconds == 240.0 and "LATE" in verdicts["cycles_on_time"].description
    assert verdicts["feed_on_time"].description.endswith("LATE; binance BTC: last fetch error at ...: FeedUnavailableError: timed out")
    assert verdicts["cycles_on_time"].detail == ""  # the feed's story is told once, on the feed's check
    # a scope that never stored a cycle makes the competition's cycles late; a stream never fetched, the feed
    missing_scope = LagReport({"BTC": now, "ETH": None}, now, now, now)
    assert not next(v for v in lag_verdicts(SPEC, missing_scope, now, fresh_feed) if v.check_name == "cycles_on_time").passed
    assert not next(v for v in lag_verdicts(SPEC, on_time, now, FeedLag(None)) if v.check_name == "feed_on_time").passed
    # right after the start nothing is late yet
    assert all(v.passed for v in lag_verdicts(SPEC, LagReport({"BTC": None}, None, None, None), SPEC.start + timedelta(minutes=2),
                                              FeedLag(None)))


def test_a_stalled_feed_alerts_once_per_outage_and_once_at_recovery(instance, clean_database, monkeypatch, capfd):
    """Before, only a failed run reached the webhook: a feed trickling its answers left every lag
    check failing in silence. Now a check that turns late POSTs the run failure's alert (event
    "lag"), naming the feed's last error; the next ticks stay quiet; an alert the webhook refused is
    sent again at the next tick (and the tick sends no more, so a dead webhook costs one alert's
    attempts per tick); and the recovery is told once."""
    import math

    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.defs.feed.assets import ingest
    from crunch_assets.partitions import floor_hour
    from resources.feeds.binance import BinanceFeed
    from resources.store.database import CrunchDatabase
    from tests.fakes.feed_servers import FakeBinanceServer, subject_series

    now = datetime.now(timezone.utc)
    hour = floor_hour(now)
    spec = replace(SPEC, start=hour - timedelta(hours=1), live_feed_wait_seconds=5)
    series = subject_series("BTC", start_ts=int((hour - timedelta(hours=2)).timestamp()), count=4 * 60)
    webhook = Webhook(statuses=[503, 503, 503])  # the first alert is refused three times: not delivered
    monkeypatch.setenv(ALERT_WEBHOOK_ENV, webhook.url)
    database = CrunchDatabase()
    with FakeBinanceServer({"BTCUSDT": series}) as binance:
        feed = BinanceFeed(base_url=binance.url, response_timeout_seconds=0.5, max_total_seconds=1.0,
                           backoff_base_seconds=0.01, backoff_max_seconds=0.02)
        defs = build_definitions(spec, feed=feed, automation_running=False)
        sensor = defs.resolve_sensor_def("btc_updown__lag_sensor")
        cursor = None

        def tick():
            nonlocal cursor
            with dg.build_sensor_context(instance=instance, resources={"database": database, "feed": feed},
                                         cursor=cursor) as context:
                sensor(context)
                cursor = context.cursor
            sent = list(webhook.bodies)
            webhook.bodies.clear()
            return sent

        binance.trickle_next(math.inf, seconds_per_byte=0.1)  # a byte well within each read's timeout
        report = ingest(spec, feed, database.feeds(), hour, hour + timedelta(hours=1), datetime.now(timezone.utc))
        assert "no complete response within" in report.errors["BTC"]
        try:
            capfd.readouterr()
            first = tick()
            # the feed's alert was refused (3 attempts): the others wait for the next tick
            assert [body["check"] for body in first] == ["feed_on_time"] * 3
            feed_alert = first[0]
            assert {"competition", "event", "run_id", "job", "partition", "tags", "error"} <= set(feed_alert)
            assert feed_alert["competition"] == "btc_updown" and feed_alert["event"] == "lag"
            assert feed_alert["error"].startswith("feed_records: nothing stored yet (bound 180 s): LATE; binance BTC: "
                                                  "last fetch error at ")
            assert "no complete response within" in feed_alert["error"]
            second = tick()  # the refused alert again, and the ones that waited
            assert [(body["check"], body["event"]) for body in second] == [
                ("feed_on_time", "lag"), ("cycles_on_time", "lag"), ("scores_on_time", "lag")]
            assert tick() == []  # the outage goes on: quiet
            binance.clear_faults()  # the feed answers again
            recovered = ingest(spec, feed, database.feeds(), hour, hour + timedelta(hours=1), datetime.now(timezone.utc))
            assert recovered.errors == {} and recovered.fetched > 0
            [recovery] = tick()
            assert (recovery["check"], recovery["event"]) == ("feed_on_time", "lag_recovered")
            assert recovery["behind_seconds"] < 60 and "LATE" not in recovery["error"]
            assert tick() == []
        finally:
            webhook.close()
    logged = capfd.readouterr().err
    assert "answered 503" in logged and SECRET not in logged

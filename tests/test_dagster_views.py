"""The Dagster views tell what the store holds: the hour a live run is predicting shows in progress
(not missing) and materialized once the hour is reported; every leaderboard materialization carries
its table (rounded for reading) as of the last scored cycle, never a time still to come; the
registry is materialized when it syncs; a replay from the command line records into the
deployment's instance; no checkpoint period before the competition's start counts as missing.

Real parts: the embedded PostgreSQL (a database of its own per test, so the UI's counts are this
test's), real runs and materializations read back through the instance's event log and partition
status, a real dagster-webserver read by Debian's chromium, a real uvicorn for /lag."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from dagster._core.test_utils import create_run_for_test

from crunch_assets.keys import ChainKeys
from crunch_assets.defs.live_window.window import plan_window
from crunch_assets.partitions import build_partitions
from tests.api.conftest import LiveServer, database_named
from tests.conftest import PROJECT_ROOT

SLUG = "btc_updown"
KEYS = ChainKeys.for_slug(SLUG)
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
_databases = itertools.count()
Status = dg.AssetPartitionStatus


@pytest.fixture
def own_database(database_url, monkeypatch):
    """A new, empty database on the embedded server for this test's store and Dagster storage."""
    from resources.store.database import dispose_engines

    name = f"crunch_views_{os.getpid()}_{next(_databases)}"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    url = database_named(database_url, name)
    from resources.store import roles

    inside = sa.create_engine(url, isolation_level="AUTOCOMMIT")  # the roles' rights in the new database
    with inside.connect() as connection:
        roles.provision_logins(connection, {}, name)
    inside.dispose()
    from tests.api.conftest import role_env

    for name_, value in role_env(url).items():  # the owner's URL and every role's, on this database
        monkeypatch.setenv(name_, value)
    yield url
    dispose_engines()
    from resources import instance_storage

    with instance_storage._lock:
        engine = instance_storage._shared_engines.pop(url, None)
    if engine is not None:
        engine.dispose()
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def dagster_home(own_database, tmp_path, monkeypatch):
    """$DAGSTER_HOME with the checkout's dagster.yaml: storage on this test's database."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("CRUNCH_DATA_DIR", str(tmp_path / "data"))
    return home


def _status(instance, key, partitions_def, partition_key):
    """The partition's status as the UI shows it; None: missing (the asset unknown, too)."""
    statuses = instance.get_status_by_partition(key, [partition_key], partitions_def)
    return None if statuses is None else statuses[partition_key]


def _wait_for(condition, what: str, timeout_seconds: float = 120.0):
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_seconds} s")
        time.sleep(0.25)  # polling a condition with a deadline


# --- the live hour, in the instance and in the UI ----------------------------------------------------

@contextlib.contextmanager
def _webserver(home: Path, env: dict):
    """dagster-webserver (with its code server) on a free loopback port, serving
    tests/dagster_ui_definitions.py on the instance of `home`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(home / "webserver.log", "w")
    process = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-f", "tests/dagster_ui_definitions.py",
         "--working-directory", str(PROJECT_ROOT)],
        cwd=PROJECT_ROOT, env={**os.environ, **env, "DAGSTER_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up():
        if process.poll() is not None:
            raise AssertionError(f"dagster-webserver exited: {(home / 'webserver.log').read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/server_info", timeout=5).status_code == 200
        return False

    try:
        yield url, up
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: scripts/test installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield instance
        instance.close()


def _page_text(browser, url: str, wait_for_text: str, shots: Path | None = None, name: str = "page") -> str:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        page.goto(url)
        page.get_by_text(wait_for_text, exact=False).first.wait_for(timeout=60_000)
        skip = page.get_by_role("button", name="Skip")  # the UI's one-time "join the community" dialog
        if skip.count():
            skip.first.click()
        if shots is not None:
            page.screenshot(path=str(shots / f"{name}.png"))
        return page.locator("body").inner_text()
    finally:
        context.close()


def _significant_digits(value: float) -> int:
    digits = f"{value:.15g}".lstrip("-").replace(".", "").lstrip("0").rstrip("0")
    return len(digits)


def test_the_live_hour_shows_in_progress_then_materialized_with_the_leaderboard_table(
        dagster_home, own_database, tmp_path, browser):
    from crunch_assets.api import ReportCompetition, create_app
    from resources.payout_accounts import PayoutAccounts
    from resources.store.database import CrunchDatabase
    from tests.dagster_ui_definitions import views_definitions
    from tests.rewards_fixtures import write_models

    now = datetime.now(timezone.utc)
    window = now.replace(minute=0, second=0, microsecond=0)
    if now - window > timedelta(minutes=56):  # the run and the UI's look must fit in the hour
        time.sleep((window + timedelta(hours=1, seconds=1) - now).total_seconds())
        window = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    models = write_models(tmp_path / "models", ["coin", "oracle"])
    spec, defs = views_definitions(window, models)
    partitions = build_partitions(spec)
    hour, day = partitions.hour_key(window), partitions.day_key(window)
    env = {"CRUNCH_VIEWS_WINDOW": window.isoformat(), "CRUNCH_VIEWS_MODELS": str(models)}
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    stop = datetime.now(timezone.utc) + timedelta(seconds=75)
    outcome = {}

    def live_run():
        outcome["result"] = defs.get_job_def(f"{SLUG}__live_job").execute_in_process(
            run_config={"ops": {f"{SLUG}__live_window": {"config": {"window_start": window.isoformat(),
                                                                    "stop_at": stop.isoformat()}}}},
            instance=instance, resources=defs.resources, raise_on_error=False)

    with _webserver(dagster_home, env) as (ui, up):
        runner = threading.Thread(target=live_run)
        runner.start()
        try:
            # while the run lives: its hour and day are in progress, not missing
            for key, definition, partition in ((KEYS.predictions, partitions.hourly, hour),
                                               (KEYS.feed_records, partitions.hourly, hour),
                                               (KEYS.scores, partitions.hourly, hour),
                                               (KEYS.leaderboard, partitions.daily, day)):
                _wait_for(lambda k=key, d=definition, p=partition: _status(instance, k, d, p) == Status.IN_PROGRESS,
                          f"{key.to_user_string()} {partition} in progress")
            _wait_for(up, "dagster-webserver up")
            assert runner.is_alive(), "the live run ended before the UI was read: the test saw nothing in progress"
            text = _page_text(browser, f"{ui}/assets/{SLUG}/predictions?view=partitions", "Materializing (1)",
                              tmp_path, "predictions_in_progress")
            assert "Missing (0)" in text and "Failed (0)" in text
            # the registry the live run's session synced is materialized, with its models
            registry = _page_text(browser, f"{ui}/assets/{SLUG}/model_registry", "refused_models")
            assert "Never materialized" not in registry and "coin" in registry and "oracle" in registry
        finally:
            runner.join()
        result = outcome["result"]
        assert result.success

        for key, definition, partition in ((KEYS.predictions, partitions.hourly, hour),
                                           (KEYS.feed_records, partitions.hourly, hour),
                                           (KEYS.scores, partitions.hourly, hour),
                                           (KEYS.snapshots, partitions.daily, day),
                                           (KEYS.leaderboard, partitions.daily, day)):
            assert _status(instance, key, definition, partition) == Status.MATERIALIZED, key
        store = CrunchDatabase().competition(SLUG)
        as_of, entries, meta = store.leaderboard()
        assert meta["live"] is True and as_of == store.last_scored_cycle() <= datetime.now(timezone.utc)
        latest = instance.get_latest_materialization_event(KEYS.leaderboard).asset_materialization
        assert latest.partition == day and latest.metadata["as_of"].value == as_of.isoformat()
        table = latest.metadata["leaderboard"]
        assert [r.data["model"] for r in table.records] == [e["model_id"] for e in entries] == ["oracle", "coin"]
        for record, entry in zip(table.records, entries):
            for window_name in ("score_recent", "score_steady", "score_anchor"):
                shown = record.data[window_name]
                assert math.isclose(shown, entry[window_name], rel_tol=1e-5) and _significant_digits(shown) <= 6

        text = _page_text(browser, f"{ui}/assets/{SLUG}/leaderboard", "projected_reward_pct", tmp_path, "leaderboard")
        assert as_of.isoformat() in text
        rows = [line for line in text.splitlines() if line.startswith(("1\toracle", "2\tcoin"))]
        assert len(rows) == 2, text
        text = _page_text(browser, f"{ui}/assets/{SLUG}/predictions?view=partitions", "Materialized (1)")
        assert "Materializing (0)" in text and "Missing (0)" in text

    # /lag: the leaderboard is never ahead of the clock
    app = create_app([ReportCompetition(spec, PayoutAccounts(), CrunchDatabase(url=own_database))],
                     api_token=None, read_env=False)
    with LiveServer(app) as server:
        lag = httpx.get(f"{server.url}/reports/lag", timeout=60).json()
    assert datetime.fromisoformat(lag["last_leaderboard"]["at"].replace("Z", "+00:00")) == as_of
    assert 0 <= lag["last_leaderboard"]["behind_seconds"] < 120


def test_a_live_run_that_dies_shows_its_partitions_failed_until_a_replacement_plans_them(dagster_home, own_database):
    """What Dagster derives from the live run's plan: in progress while it runs, failed when it
    dies (run monitoring marks it), in progress again under its replacement, materialized when
    reported; a planned stop (canceled) is not a failure."""
    from competitions.btc_updown.definitions import SPEC

    window = datetime(2026, 11, 5, 13, tzinfo=timezone.utc)
    spec = replace(SPEC, start=window - timedelta(hours=2))
    partitions = build_partitions(spec)
    hour = partitions.hour_key(window)
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    job, step = f"{SLUG}__live_job", f"{SLUG}__live_window"

    def started_run():
        run = create_run_for_test(instance, job_name=job, status=dg.DagsterRunStatus.STARTED)
        plan_window(instance, run.run_id, job, step, partitions, KEYS, window)
        return run

    def status():
        return _status(instance, KEYS.predictions, partitions.hourly, hour)

    assert status() is None  # missing: nothing planned
    first = started_run()
    assert status() == Status.IN_PROGRESS
    instance.report_run_failed(instance.get_run_by_id(first.run_id), message="killed")
    assert status() == Status.FAILED
    replacement = started_run()
    assert status() == Status.IN_PROGRESS
    instance.report_runless_asset_event(dg.AssetMaterialization(KEYS.predictions, partition=hour))
    assert status() == Status.MATERIALIZED
    # the next hour's run is stopped on purpose: canceled, never shown failed
    later = window + timedelta(hours=1)
    run = create_run_for_test(instance, job_name=job, status=dg.DagsterRunStatus.STARTED)
    plan_window(instance, run.run_id, job, step, partitions, KEYS, later)
    instance.report_run_canceled(instance.get_run_by_id(run.run_id), message="planned stop")
    assert _status(instance, KEYS.predictions, partitions.hourly, partitions.hour_key(later)) is None
    assert replacement.run_id != first.run_id


# --- the live leaderboard's row ----------------------------------------------------------------------

def test_the_live_leaderboard_is_one_row_per_hour_as_of_its_last_scored_cycle(clean_database):
    from resources.store.database import CrunchDatabase

    store = CrunchDatabase().competition(SLUG)
    at = datetime(2026, 11, 5, 13, tzinfo=timezone.utc)
    entries = [{"rank": 1, "model_id": "m"}]
    assert store.write_live_leaderboard(at + timedelta(minutes=43), entries, {})
    assert store.write_live_leaderboard(at + timedelta(minutes=44), entries, {})  # replaces 13:43
    assert not store.write_live_leaderboard(at + timedelta(minutes=42), entries, {})  # never backwards
    assert store.write_live_leaderboard(at + timedelta(hours=1, minutes=1), entries, {})  # a new hour: a new row
    # a daily leaderboard at the same instant stands; the live one is not written over it
    store.write_leaderboard(at + timedelta(hours=11), [{"rank": 1, "model_id": "daily"}], {})
    assert not store.write_live_leaderboard(at + timedelta(hours=11), entries, {})
    with CrunchDatabase().engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT as_of, meta->>'live' FROM crunch.leaderboards ORDER BY as_of")).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(at + timedelta(minutes=44), "true"),
                                            (at + timedelta(hours=1, minutes=1), "true"),
                                            (at + timedelta(hours=11), None)]
    assert store.leaderboard()[1] == [{"rank": 1, "model_id": "daily"}]


# --- the registry -----------------------------------------------------------------------------------

def test_the_registry_sensor_materializes_a_registry_the_ui_has_never_shown(clean_database):
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.store.database import CrunchDatabase

    spec = replace(SPEC, start=datetime(2026, 11, 5, tzinfo=timezone.utc))
    defs = build_definitions(spec=spec, automation_running=True)
    sensor = next(s for s in defs.sensors if s.name == f"{SLUG}__model_registry_sensor")
    instance = dg.DagsterInstance.ephemeral()

    def tick():
        return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs))

    runner = defs.resources["model_runner"]
    # the predictions stage registered the runner's models (sightings), no registry run ever
    CrunchDatabase().competition(SLUG).sync_models(runner.list_models(), datetime.now(timezone.utc), complete=False)
    requests = tick().run_requests
    assert len(requests) == 1 and requests[0].tags["crunch/registry_changes"] == "never materialized"
    from crunch_assets.replay import chain_assets

    assert dg.materialize(chain_assets(defs, [KEYS.model_registry]), resources=defs.resources, instance=instance).success
    assert not tick().run_requests


def test_a_predictions_run_that_registers_models_materializes_the_registry(clean_database, tmp_path):
    from tests.rewards_fixtures import competition, materialize_hours, spec_for, write_models

    start = datetime(2026, 11, 6, tzinfo=timezone.utc)
    spec = spec_for(start)
    defs = competition(spec, write_models(tmp_path / "models", ["coin", "oracle"]))
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_hours(defs, spec, ["feed_records", "predictions"], start, start, instance=instance).success
    event = instance.get_latest_materialization_event(KEYS.model_registry)
    assert event is not None
    metadata = event.asset_materialization.metadata
    assert metadata["changes"].value == ["JOINED coin", "JOINED oracle"]
    assert [r.data["model_id"] for r in metadata["registry"].records] == ["coin", "oracle"]
    # the same models seen again: no change, no new materialization
    count = len(instance.fetch_materializations(KEYS.model_registry, limit=10).records)
    assert materialize_hours(defs, spec, ["feed_records", "predictions"], start + timedelta(hours=1),
                             start + timedelta(hours=1), instance=instance).success
    assert len(instance.fetch_materializations(KEYS.model_registry, limit=10).records) == count


# --- a replay from a second shell ----------------------------------------------------------------

def test_replay_from_the_command_line_records_into_the_deployments_instance(own_database, tmp_path, monkeypatch):
    """`crunch-dagster replay` with DAGSTER_HOME unset (a second shell beside ./scripts/demo)
    records into the checkout's dagster.yaml instance: the one the demo's UI reads. Its hours are
    materialized there, every leaderboard and checkpoint materialization carries its table, and no
    checkpoint period before the competition's start (13:00) is a partition to be missing."""
    start, end = datetime(2026, 11, 2, 13, tzinfo=timezone.utc), datetime(2026, 11, 2, 16, tzinfo=timezone.utc)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRUNCH_", "DAGSTER_HOME"))}
    from tests.api.conftest import role_env

    env.update(role_env(own_database))
    env.update(CRUNCH_DATA_DIR=str(tmp_path / "data"), CRUNCH_AUTOMATION="off",
               CRUNCH_BTC_UPDOWN_START=start.isoformat(), CRUNCH_BTC_UPDOWN_CHECKPOINT_INTERVAL_SECONDS="3600")
    done = subprocess.run([str(BIN / "crunch-dagster"), "replay", SLUG, "--from", start.isoformat(), "--to", end.isoformat()],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "DEBUG" not in done.stderr and "STEP_SUCCESS" not in done.stderr  # the progress bar is the output
    assert "checkpoint #3" in done.stdout

    monkeypatch.setenv("CRUNCH_DATA_DIR", str(tmp_path / "data"))
    from competitions.btc_updown.definitions import SPEC

    partitions = build_partitions(replace(SPEC, start=start, checkpoint_interval_seconds=3600))
    with dg.DagsterInstance.from_config(str(PROJECT_ROOT)) as instance:
        hours = [partitions.hour_key(start + timedelta(hours=h)) for h in range(3)]
        for key in (KEYS.feed_records, KEYS.predictions, KEYS.scores):
            statuses = instance.get_status_by_partition(key, hours, partitions.hourly)
            assert statuses == dict.fromkeys(hours, Status.MATERIALIZED), key
        checkpoint_keys = partitions.checkpoint.definition.get_partition_keys(current_time=end)
        assert checkpoint_keys == hours  # 00:00 .. 12:00 are no partitions: nothing to be missing
        statuses = instance.get_status_by_partition(KEYS.emission_checkpoints, checkpoint_keys, partitions.checkpoint.definition)
        assert statuses == dict.fromkeys(checkpoint_keys, Status.MATERIALIZED)
        for event in instance.fetch_materializations(KEYS.emission_checkpoints, limit=10).records:
            split = event.asset_materialization.metadata["reward_split"]
            assert sum(r.data["reward_frac64"] for r in split.records) == 1_000_000_000
            assert all(_significant_digits(r.data["reward_percent"]) <= 6 for r in split.records)
        boards = instance.fetch_materializations(KEYS.leaderboard, limit=10).records
        assert boards and all(len(e.asset_materialization.metadata["leaderboard"].records) == 3 for e in boards)

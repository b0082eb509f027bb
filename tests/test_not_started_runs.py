"""A run whose launch fails halfway is not left NOT_STARTED for a human to clean up.

A UI launch creates the run (NOT_STARTED), then records its start (STARTING) and hands it to the
launcher. When PostgreSQL restarts in between, the launch fails and the run stays NOT_STARTED:
no launcher knows it. Dagster's run monitoring covers that state (dagster/_daemon/monitoring:
a NOT_STARTED run older than `run_monitoring.start_timeout_seconds`, counted from its creation, is
failed with the reason START_TIMEOUT), and run retries launch it again. These tests run that on
the supervised deployment (`crunch-dagster serve`, the checkout's dagster.yaml with only the start
timeout and poll interval shortened so that the test is quick), with a real postmaster kill and
restart, a real failed launch, and UI launches during the outage.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import requests
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from chaos import Deployment, Store, wait_for  # noqa: E402

START_TIMEOUT_SECONDS = 30
POLL_SECONDS = 5
REGISTRY_JOB = "btc_updown__model_registry_job"
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_shipped_instances_clean_up_runs_that_never_started():
    """What the mechanism needs, in every instance config this project ships: run monitoring with
    a start timeout (it fails NOT_STARTED and STARTING runs) and run retries (they launch them again)."""
    for path in (PROJECT_ROOT / "dagster.yaml", PROJECT_ROOT / "deploy" / "dagster.yaml"):
        config = yaml.safe_load(path.read_text())
        monitoring, retries = config["run_monitoring"], config["run_retries"]
        assert monitoring["enabled"] and 0 < monitoring["start_timeout_seconds"] <= 300, path
        assert monitoring["poll_interval_seconds"] <= 30, path
        assert retries["enabled"] and retries["max_retries"] >= 1, path


@pytest.fixture
def deployment(monkeypatch):
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-not-started-"))
    data_dir.chmod(0o755)
    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    config["run_monitoring"].update(start_timeout_seconds=START_TIMEOUT_SECONDS, poll_interval_seconds=POLL_SECONDS)
    instance_config = data_dir / "instance.yaml"
    instance_config.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("CRUNCH_AUTOMATION", "off")  # no live runs: the launches below are the only runs
    deployment = Deployment(data_dir, 30, 0, ports={"webserver": free_port(), "webserver_read_only": free_port(),
                                                   "code": free_port(), "api": free_port()})
    deployment.port = deployment.ports["webserver"]
    deployment.extra_args = ["--instance-config", str(instance_config)]
    deployment.start()
    store = Store(deployment.pgdata)
    try:
        wait_for("the UI", lambda: deployment.http_ok(deployment.port), 300)
        wait_for("the store migrated", lambda: store.query("SELECT count(*) FROM public.runs") is not None, 120)
        wait_for("btc_updown's code server loaded", lambda: location_loaded(deployment.port, "btc_updown"), 300, 1)
        # Dagster's run retries ignore the failures stored before the daemon's first look at the event log
        # (no cursor yet: "ignoring older events"); on a loaded machine that first look can come late
        wait_for("the daemon's run retries watching", lambda: store.query(
            "SELECT count(*) FROM public.kvs WHERE key = 'EVENT_LOG_CONSUMER_CURSOR-PIPELINE_FAILURE'") == [(1,)], 300, 1)
        yield deployment, store
    finally:
        store.dispose()
        deployment.stop()
    import shutil

    shutil.rmtree(data_dir, ignore_errors=True)  # kept when the test failed: logs under logs/


LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }"


def location_loaded(port: int, name: str) -> bool:
    """The UI reaches the code location's server (it comes up after the UI; slowly on a loaded machine)."""
    try:
        answer = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": LOCATIONS}, timeout=30).json()
        entries = answer["data"]["workspaceOrError"]["locationEntries"]
    except (requests.RequestException, KeyError, TypeError, ValueError):
        return False
    return any(e["name"] == name and (e["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation"
               for e in entries)


def the_deployments_instance(deployment: Deployment, store: Store, home: Path):
    """The deployment's instance, reached by its server's URL: this test never registers as a user
    of the embedded server (its holder would ask it to end at the stop)."""
    import dagster as dg

    config = yaml.safe_load((deployment.data_dir / "serve" / "dagster_home" / "dagster.yaml").read_text())
    config["storage"]["custom"]["config"] = {"postgres_url": str(store.engine().url.render_as_string(hide_password=False))}
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return dg.DagsterInstance.from_config(str(home))


def create_run_as_the_ui_does(instance, request_context):
    """dagster_graphql's create_valid_pipeline_run: the run row, NOT_STARTED, before any launch."""
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.utils import make_new_run_id

    location = request_context.get_code_location("btc_updown")
    job = location.get_repository("__repository__").get_full_job(REGISTRY_JOB)
    plan = location.get_execution_plan(job, {}, step_keys_to_execute=None, known_state=None, instance=instance)
    return instance.create_run(
        job_snapshot=job.job_snapshot, execution_plan_snapshot=plan.execution_plan_snapshot,
        parent_job_snapshot=job.parent_job_snapshot, job_name=job.name, run_id=make_new_run_id(), asset_selection=None,
        asset_check_selection=None, op_selection=None, resolved_op_selection=None, run_config={}, step_keys_to_execute=None,
        tags=dict(job.tags), root_run_id=None, parent_run_id=None, status=DagsterRunStatus.NOT_STARTED,
        remote_job_origin=job.get_remote_origin(), job_code_origin=job.get_python_origin(),
        asset_graph=request_context.asset_graph,
    )


@pytest.mark.system
@pytest.mark.timeout(900)
def test_a_launch_broken_by_a_database_restart_is_failed_with_its_reason_and_retried(deployment, tmp_path):
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    deployment, store = deployment
    ui_launches: list[str] = []

    def launch_from_the_ui():
        selector = {"repositoryLocationName": "btc_updown", "repositoryName": "__repository__", "jobName": REGISTRY_JOB}
        try:
            answer = requests.post(f"http://127.0.0.1:{deployment.port}/graphql", timeout=120, json={
                "query": LAUNCH, "variables": {"params": {"selector": selector, "runConfigData": {}}}}).json()
            ui_launches.append(answer["data"]["launchRun"]["__typename"])
        except (requests.RequestException, KeyError, TypeError, ValueError) as error:
            ui_launches.append(type(error).__name__)

    with the_deployments_instance(deployment, store, tmp_path / "home") as instance, \
            WorkspaceProcessContext(instance, WorkspaceFileTarget([str(deployment.data_dir / "serve" / "workspace.yaml")])) as context:
        request_context = context.create_request_context()
        run = create_run_as_the_ui_does(instance, request_context)
        postmaster = deployment.postmaster_pid()
        holder = deployment.running_pid("db")
        # PostgreSQL goes away between the run's creation and its launch, and stays away for the launch:
        # its holder (which would start it again within a second or two) is paused meanwhile
        os.kill(holder, signal.SIGSTOP)
        try:
            os.kill(postmaster, signal.SIGKILL)
            with pytest.raises(Exception) as launch_error:
                instance.submit_run(run.run_id, request_context)
        finally:
            os.kill(holder, signal.SIGCONT)
        said = type(launch_error.value).__name__ + repr(launch_error.value)
        # psycopg2's error, or dagster-postgres' once its own connection retries are spent
        assert "OperationalError" in said or "too many retries for DB connection" in said, said
        threads = [threading.Thread(target=launch_from_the_ui) for _ in range(3)]  # the UI during the restart
        for thread in threads:
            thread.start()
        wait_for("PostgreSQL started again by its holder", lambda: (p := deployment.postmaster_pid()) and p != postmaster, 120)
        for thread in threads:
            thread.join(timeout=150)
    store.dispose()

    def status(run_id: str) -> str | None:
        rows = store.query("SELECT status FROM public.runs WHERE run_id = :r", r=run_id)
        return rows[0][0] if rows else None

    # the state a failed launch leaves: never launched (no STARTING event), nobody will launch it
    first_seen = wait_for("the store answering again", lambda: status(run.run_id), 120)
    assert first_seen in ("NOT_STARTED", "FAILURE"), first_seen  # FAILURE: run monitoring was quicker than this read
    assert store.query("SELECT count(*) FROM public.event_logs WHERE run_id = :r AND dagster_event_type = 'PIPELINE_STARTING'",
                       r=run.run_id) == [(0,)]
    # run monitoring: failed with its reason once the start timeout has passed, without a human
    wait_for("run monitoring to fail the run that never started", lambda: status(run.run_id) == "FAILURE",
             START_TIMEOUT_SECONDS + 10 * POLL_SECONDS + 60)
    def tags() -> dict:
        return dict(store.query("SELECT key, value FROM public.run_tags WHERE run_id = :r", r=run.run_id))

    # the retry decision is tagged by the daemon after the failure: wait for it, then read both
    wait_for("the retry decision tagged", lambda: "dagster/will_retry" in tags(), 120)
    assert tags()["dagster/failure_reason"] == "START_TIMEOUT" and tags()["dagster/will_retry"] == "true"
    message = store.query("SELECT event FROM public.event_logs WHERE run_id = :r AND dagster_event_type = 'PIPELINE_FAILURE'",
                          r=run.run_id)[0][0]
    assert f"taking longer than {START_TIMEOUT_SECONDS} seconds to start" in message
    # run retries: launched again, and done
    retry = wait_for("its retry", lambda: store.query(
        "SELECT run_id FROM public.run_tags WHERE key = 'dagster/parent_run_id' AND value = :r", r=run.run_id), 180)[0][0]
    wait_for("the retry to succeed", lambda: status(retry) == "SUCCESS", 240)
    # and nothing else is left waiting to start: the UI's launches during the restart started or failed
    assert len(ui_launches) == 3, ui_launches
    wait_for("no run left waiting to start", lambda: store.query(
        "SELECT count(*) FROM public.runs WHERE status IN ('NOT_STARTED', 'STARTING')") == [(0,)],
        START_TIMEOUT_SECONDS + 10 * POLL_SECONDS + 60)

"""The production topology across hosts, with a host lost and the network cut (bench/multi_host.py).

Four hosts, each a network namespace of its own with its own address and PID namespace, on one
bridge (bench/netns_bed.py): PostgreSQL on `db`; btc_updown's gRPC code server on `comp` (its runs
execute there, Dagster's default run launcher); the daemon, the webserver and the report API on
`control`; the model orchestrator and the model nodes on `model`. Everything is configured from
deploy/ (the database roles of postgres/init-roles.sh, the migrations as the owner with
migrate.env.example, crunch.env.example, dagster.yaml, workspace.yaml, the compose commands) and every
connection crosses the bridge over TCP. Then, one after the other: every process of `comp` killed
mid-cycle and the host booted again; the control host cut from the database; the competition host
cut from the database; the competition host to the model host delayed 200 ms and 1 % lossy each
way. What a user sees is measured (bench/multi_host.py documents each figure).

The cycle is 30 s and the faults are short (the database cuts last 45 s here) so that the run fits
CI in well under 10 minutes; the benchmark's defaults (2-minute cuts) give the figures of
docs/operations.md. Recovery is judged against btc_updown's
own 60 s cycle: what bounds it (a dead live run is taken over once its heartbeat is 40-75 s old, a
process boots in seconds) does not shrink with a shorter cycle.

Needs root, iproute2, util-linux and iptables: .ci/run installs iptables. Skipped without them,
except in CI (CI=true), where a missing prerequisite fails the test.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from multi_host import (  # noqa: E402
    DEPLOY,
    MODELS,
    Report,
    compose_commands,
    deployment_environment,
    instance_config,
    migration_environment,
    recovery_target_seconds,
    run_scenario,
    workspace,
)
from netns_bed import missing_prerequisites  # noqa: E402

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]  # one bed at a time: tests/conftest.py SERIAL_GROUPS

CYCLE_SECONDS = 30  # the shortest btc_updown accepts on 60 s candles (bench/chaos_competition.py)
TARGET_SECONDS = recovery_target_seconds()  # 2 of btc_updown's 60 s cycles
FAULTS = {"comp_host_lost": 20.0, "control_db_cut": 45.0, "comp_db_cut": 45.0, "comp_model_degraded": 30.0}


@pytest.fixture(scope="module")
def report() -> Report:
    missing = missing_prerequisites()
    if missing:
        message = f"the multi-host bed needs {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI runs as root with iptables installed by .ci/run)")
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="crunch-multihost-"))
    try:
        report = run_scenario(root, CYCLE_SECONDS, FAULTS, log=lambda line: print(line, flush=True))
        for figure in report.faults:
            print(figure.line(TARGET_SECONDS))
        yield report
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_every_fault_ran(report):
    assert [figure.name for figure in report.faults] == list(FAULTS)
    assert report.figures("comp_host_lost").detail.endswith("processes killed")
    for figure in report.faults:
        assert figure.cycles_due >= 3, figure  # the window saw cycles fall due


def test_nothing_is_lost_or_duplicated(report):
    assert all(not rows for rows in report.duplicated.values()), report.duplicated
    for figure in report.faults:
        assert figure.cycles_missed == 0 and figure.cycles_duplicated == 0, figure.line(TARGET_SECONDS)
    assert report.unscored == 0


def test_every_fault_is_recovered_from_within_two_cycles(report):
    for figure in report.faults:
        assert figure.recovery_seconds is not None, figure.line(TARGET_SECONDS)
        assert figure.recovery_seconds <= TARGET_SECONDS, figure.line(TARGET_SECONDS)


def test_the_cycles_go_on_while_the_control_host_is_cut_from_the_database(report):
    """The live run lives on the competition host: the control plane's outage delays no cycle of
    the hour (the next hour's live run, launched by the daemon 30 s before the hour, starts late
    when the cut spans that moment), but the API and the UI answer errors while it lasts, and the
    daemon beats again after it."""
    figure = report.figures("control_db_cut")
    if not figure.spans_hour_handover:
        assert figure.cycles_late == 0, figure.line(TARGET_SECONDS)
    assert figure.api_down_seconds > 0 and figure.ui_down_seconds > 0, figure.line(TARGET_SECONDS)
    assert figure.daemon_back_seconds is not None and figure.daemon_back_seconds <= TARGET_SECONDS


def test_a_slow_lossy_model_link_delays_cycles_by_seconds_only(report):
    figure = report.figures("comp_model_degraded")
    assert figure.cycles_late == 0 and figure.delay_max_seconds < CYCLE_SECONDS, figure.line(TARGET_SECONDS)


def test_no_run_is_left_stuck(report):
    assert report.runs_stuck == []
    # Not asserted: a live run hung on a dropped database connection for longer than its heartbeat
    # bound is taken over, then may wake and go on beside its replacement (a defect of the live
    # run, docs/operations.md "Across hosts"); printed here when it happens.
    print(f"runs working after they were marked failed: {report.runs_working_after_failed}")


def test_every_failed_run_is_alerted(report):
    lost = report.figures("comp_host_lost")
    assert lost.runs_failed, "the live run that died with its host is marked failed"
    for figure in report.faults:
        assert figure.failed_runs_alerted == len(figure.runs_failed), figure.line(TARGET_SECONDS)


# Not asserted: "every outage alerted". Alerts follow failed runs only, so a fault that fails no
# run (the control host cut from the database: the API and the UI down) is not alerted; see
# docs/operations.md, "Across hosts".


# --- the bed is configured from deploy/ only (no namespaces needed) -------------------------------

def test_the_bed_takes_its_configuration_from_deploy(tmp_path):
    passwords = {"crunch": "own", "crunch_engine": "eng", "crunch_api": "api", "crunch_dagster": "dag"}
    env = deployment_environment(passwords, "http://alerts:1/hooks/x", tmp_path / "roots")
    # every role's URL, each with its own login and password; the migrations' URL in no service's environment
    assert env["CRUNCH_ENGINE_DATABASE_URL"] == "postgresql://crunch_engine:eng@postgres:5432/crunch"
    assert env["CRUNCH_API_DATABASE_URL"] == "postgresql://crunch_api:api@postgres:5432/crunch"
    assert env["CRUNCH_DAGSTER_DATABASE_URL"].startswith("postgresql://crunch_dagster:dag@postgres:5432/crunch?")
    assert "CRUNCH_DATABASE_URL" not in env
    assert migration_environment(passwords) == {"CRUNCH_DATABASE_URL": "postgresql://crunch:own@postgres:5432/crunch"}
    assert env["CRUNCH_ROOT_PUBLICATION_DIR"] == str(tmp_path / "roots")  # one directory for the runs and the API
    assert "CHANGE_ME" not in "".join(env.values())
    with pytest.raises(AssertionError, match="the login 'crunch_api'"):
        deployment_environment({login: password for login, password in passwords.items() if login != "crunch_api"},
                               "http://alerts:1/hooks/x", tmp_path / "roots")
    config = instance_config(tmp_path)
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"  # deploy/dagster.yaml's, unchanged
    assert config["run_launcher"]["class"] == "DefaultRunLauncher"  # no Docker: a run is a process of the code server's host
    assert [entry["grpc_server"]["host"] for entry in workspace()["load_from"]] == ["code_btc_updown"]
    commands = compose_commands(tmp_path / "workspace.yaml")
    assert commands["code"][1:3] == ["api", "grpc"] and "-f" in commands["code"]
    assert commands["daemon"][-1] == str(tmp_path / "workspace.yaml")
    assert commands["api"].count("--slug") == 1
    assert commands["migrate"][1:] == ["migrate"]
    assert MODELS == 3 and (DEPLOY / "crunch.env.example").is_file()

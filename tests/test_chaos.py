"""The chaos run (bench/chaos.py) on the supervised deployment: kill -9 of each process in turn
mid-cycle (the live run's worker, the code server, the daemon, the PostgreSQL postmaster, its
holder, both webservers, the report API when there is one), then zero lost and zero duplicated
rows, every due cycle stored within 2 cycles, no run left stuck, no model process left behind and
the embedded server stopped with its last user, with no manual action."""

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from chaos import run_chaos  # noqa: E402
from tests.ports import deployment_ports  # noqa: E402

pytestmark = pytest.mark.system  # never beside the multi-host bed: tests/conftest.py SERIAL_GROUPS

CYCLE_SECONDS = 30


@pytest.mark.timeout(1500)
def test_every_process_killed_in_turn_loses_and_duplicates_nothing():
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-chaos-test-"))
    lines: list[str] = []
    ports = deployment_ports()
    kills, findings = run_chaos(data_dir, cycle_seconds=CYCLE_SECONDS, port=ports["webserver"], log=lines.append,
                                ports=ports)
    report = "\n".join([*lines, *(f"{k}: {v}" for k, v in findings.figures.items())])
    assert findings.problems == [], report + "\nlogs kept in " + str(data_dir / "logs")
    assert {kill.target for kill in kills} >= {"run_worker", "code_btc_updown", "daemon", "postgres", "db",
                                               "webserver", "webserver_read_only"}, report
    assert findings.figures["cycles_due"] >= 8 and findings.figures["cycles_missing"] == 0, report
    assert all(findings.figures[f"duplicated_{table}"] == 0 for table in ("inputs", "predictions", "scores", "feed_records")), report
    shutil.rmtree(data_dir, ignore_errors=True)

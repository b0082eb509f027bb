"""No process a local model starts outlives its call, its worker or its session.

The fixture models (tests/fixtures/local_models/models/, helpers in lib/detaching.py) really leave
their process group: a forked child that calls setsid(), a double-forked daemon, a helper that calls
setsid() between two calls. Every process of a test's models carries a marker in its environment
(inherited through fork and exec), so /proc tells which of them are alive, whatever they did.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from resources.model_runners.base import CallStatus
from tests.test_local_model_runner import (
    CYCLE_CALLS,
    INTERFACE,
    make_models_dir,
    make_runner,
    process_is_gone,
    wait_until_gone,
)

MARKER_VARIABLE = "CRUNCH_TEST_PROCESS_MARKER"
SETTLE_SECONDS = 10.0  # a deadline for polling, never a wait


@pytest.fixture
def marker(monkeypatch) -> str:
    """A unique value of MARKER_VARIABLE for the model processes of this test; whatever carries it
    is SIGKILLed at the end, so that a failing test does not leave processes behind either."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARKER_VARIABLE, value)
    yield value
    for pid in marked_processes(value):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def marked_processes(marker_value: str) -> set[int]:
    """Live (not zombie) processes whose environment carries the marker."""
    needle = f"{MARKER_VARIABLE}={marker_value}".encode()
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environment = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if needle in environment.split(b"\0") and not process_is_gone(int(name)):
            found.add(int(name))
    return found


def wait_for(condition, timeout_seconds: float = SETTLE_SECONDS):
    """Poll until condition() is truthy or the deadline passes; return its last value."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.05)


def session_id(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def assert_left_the_session(detached: dict, model_sid: int) -> None:
    """The fault was real: the process was in a session of its own (led by itself after setsid(),
    by the intermediate child after a double fork)."""
    assert detached["sid"] != model_sid, (detached, model_sid)


def read_pids_file(models_dir: Path, model_id: str) -> dict:
    pids_file = models_dir / f"{model_id}.pids"
    assert wait_for(pids_file.exists), f"{pids_file} was never written"
    return json.loads(pids_file.read_text())


def test_processes_that_leave_the_model_during_a_call_end_with_the_call_and_never_pile_up(tmp_path, marker):
    models_dir = make_models_dir(tmp_path, "good", "forks_setsid_child", "double_forks")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        workers = set(session.process_ids().values())
        at_start = marked_processes(marker)
        assert workers <= at_start
        for _ in range(5):
            results = session.run_cycle(CYCLE_CALLS, timeout_seconds=10.0)
            detached = []
            for model_id in ("forks_setsid_child", "double_forks"):
                result = results[model_id]
                assert result.status is CallStatus.SUCCESS, (model_id, result.detail)
                assert_left_the_session(result.output["detached"], result.output["model_sid"])
                detached.append(result.output["detached"]["pid"])
            assert results["good"].output == {"p_up": 0.7}
            assert wait_until_gone(detached) == []
            # No accumulation: the same model processes as at the start, and nothing else.
            assert wait_for(lambda: marked_processes(marker) == at_start), marked_processes(marker) - at_start
        assert set(session.process_ids().values()) == workers  # nothing was restarted for it
    assert wait_for(lambda: not marked_processes(marker)), marked_processes(marker)


def test_a_helper_kept_between_calls_ends_with_the_session_after_leaving_the_process_group(tmp_path, marker):
    models_dir = make_models_dir(tmp_path, "good", "detaches_later", "spawns_child")
    session = make_runner(models_dir).open_session(INTERFACE)
    try:
        first = session.run_cycle(CYCLE_CALLS, timeout_seconds=10.0)
        helper_pid = first["detaches_later"].output["helper_pid"]
        second = session.run_cycle(CYCLE_CALLS, timeout_seconds=10.0)
        # A helper that stays in the model's process group may live as long as the session.
        assert second["detaches_later"].output["helper_pid"] == helper_pid
        assert not process_is_gone(helper_pid)

        (models_dir / "detaches_later.go").touch()
        model_sid = first["detaches_later"].output["model_sid"]
        assert wait_for(lambda: session_id(helper_pid) == helper_pid), session_id(helper_pid)
        assert model_sid != helper_pid
        assert helper_pid in marked_processes(marker)
    finally:
        session.close()

    assert wait_until_gone([helper_pid]) == []
    assert wait_for(lambda: not marked_processes(marker)), marked_processes(marker)


def test_a_model_killed_on_timeout_takes_its_detached_processes_with_it(tmp_path, marker):
    models_dir = make_models_dir(tmp_path, "good", "detaches_then_hangs")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        worker_pid = session.process_ids()["detaches_then_hangs"]
        results = session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0)
        assert results["detaches_then_hangs"].status is CallStatus.TIMEOUT
        assert results["good"].output == {"p_up": 0.7}
        started = read_pids_file(models_dir, "detaches_then_hangs")
        for detached in started["detached"]:
            assert_left_the_session(detached, worker_pid)  # the worker leads the models' session
        detached_pids = [detached["pid"] for detached in started["detached"]]

        assert wait_until_gone([worker_pid, started["model_pid"], *detached_pids]) == []
        # What is left carrying the marker is the two models' current processes, nothing older.
        assert wait_for(lambda: not marked_processes(marker) & {*detached_pids, started["model_pid"]})
    assert wait_for(lambda: not marked_processes(marker)), marked_processes(marker)


def test_a_model_process_that_dies_takes_its_detached_processes_with_it(tmp_path, marker):
    models_dir = make_models_dir(tmp_path, "good", "detaches_then_exits")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        worker_pid = session.process_ids()["detaches_then_exits"]
        results = session.run_cycle(CYCLE_CALLS, timeout_seconds=10.0)
        assert results["detaches_then_exits"].status is CallStatus.FAILED
        assert "exited with code 3" in results["detaches_then_exits"].detail
        started = read_pids_file(models_dir, "detaches_then_exits")
        detached_pids = [detached["pid"] for detached in started["detached"]]
        for detached in started["detached"]:
            assert_left_the_session(detached, worker_pid)
        assert wait_until_gone(detached_pids) == []
    assert wait_for(lambda: not marked_processes(marker)), marked_processes(marker)


def test_only_a_model_with_detached_processes_is_asked_to_sweep_whatever_else_the_machine_starts(
    tmp_path, marker, monkeypatch
):
    """The coordinator reads /proc once per cycle; processes started elsewhere (here: 50 between
    cycles) cost the models nothing, and only the model that detached one gets a sweep request."""
    import subprocess

    from resources.model_runners import local

    swept: list[str] = []
    real_run_exchanges = local.run_exchanges

    def recording_run_exchanges(exchanges, on_settled=None):
        swept.extend(e.handle.model_id for e in exchanges if bytes(e.pending_output) == local.SWEEP_REQUEST)
        return real_run_exchanges(exchanges, on_settled)

    monkeypatch.setattr(local, "run_exchanges", recording_run_exchanges)
    models_dir = make_models_dir(tmp_path, "good", "echo", "forks_setsid_child")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        for _ in range(3):
            for _ in range(50):
                subprocess.run(["true"], check=True)
            results = session.run_cycle(CYCLE_CALLS, timeout_seconds=10.0)
            assert all(r.status is CallStatus.SUCCESS for r in results.values()), results
            assert wait_until_gone([results["forks_setsid_child"].output["detached"]["pid"]]) == []
    assert swept == ["forks_setsid_child"] * 3

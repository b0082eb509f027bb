"""Many local models (issue 25 item 5), on real sandboxed model processes: the hour's live run
starts its models before the hour and its first cycle uses those very processes; the two runs'
sessions overlap at the handover and the old one keeps answering until it closes; a model killed
mid-hour is replaced while the others keep theirs; the worker stays lean (what it imports before
the model, every model pays in memory). The figures (PSS per model, start time, due -> answered
across a handover at 1,000 models) are bench/bench_model_scale.py's."""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path

from crunch_assets.defs.live_window.window import prewarm_models
from crunch_assets.defs.predictions.assets import SessionOnDemand
from resources.model_runners.base import CallStatus
from tests.test_local_model_runner import (
    CYCLE_CALLS,
    INTERFACE,
    NEXT_CYCLE_CALLS,
    make_models_dir,
    make_runner,
    process_is_gone,
)


class _Rules:
    """The one thing SessionOnDemand asks of the competition's rules."""

    def model_interface(self):
        return INTERFACE


class _Log:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, text):
        self.lines.append(("info", text))

    def warning(self, text):
        self.lines.append(("warning", text))

    def error(self, text):
        self.lines.append(("error", text))


def _worker_pids(session) -> dict[str, int]:
    return dict(session.process_ids())


def test_a_live_run_before_its_hour_starts_its_models_and_the_hours_first_cycle_uses_those_processes(tmp_path):
    runner = make_runner(make_models_dir(tmp_path, "good", "echo", "package_model"))
    log = _Log()
    with ExitStack() as stack:
        on_demand = SessionOnDemand(runner, _Rules(), stack)
        start = datetime.now(timezone.utc) + timedelta(hours=1)
        seconds = prewarm_models(on_demand, start, 30, log)
        assert seconds is not None and seconds > 0
        assert [level for level, _ in log.lines] == ["info"]
        session = on_demand.get()  # what the hour's first tick asks for: the session already open
        warm = _worker_pids(session)
        assert sorted(warm) == ["echo", "good", "package_model"]
        assert all(not process_is_gone(pid) for pid in warm.values())
        results = session.run_cycle(CYCLE_CALLS, timeout_seconds=10.0)
        assert {model_id: r.status for model_id, r in results.items()} == dict.fromkeys(warm, CallStatus.SUCCESS)
        assert _worker_pids(session) == warm  # answered by the processes started before the hour
        assert set(session.restart_counts().values()) == {0}
    assert all(process_is_gone(pid) for pid in warm.values())


def test_a_start_that_runs_past_the_hour_is_logged_with_the_setting_to_raise(tmp_path):
    runner = make_runner(make_models_dir(tmp_path, "good"))
    log = _Log()
    with ExitStack() as stack:
        # launched so late that the window began while its models were starting
        prewarm_models(SessionOnDemand(runner, _Rules(), stack), datetime.now(timezone.utc), 30, log)
    [(level, text)] = log.lines
    assert level == "warning" and "raise cycle_lead_seconds (now 30)" in text


def test_a_prewarm_that_cannot_open_the_session_is_logged_and_left_to_the_first_tick(tmp_path):
    runner = make_runner(tmp_path / "no_such_models_dir")
    log = _Log()
    with ExitStack() as stack:
        on_demand = SessionOnDemand(runner, _Rules(), stack)
        assert prewarm_models(on_demand, datetime.now(timezone.utc) + timedelta(hours=1), 30, log) is None
        [(level, text)] = log.lines
        assert level == "error" and "no_such_models_dir" in text
        (tmp_path / "no_such_models_dir").mkdir()  # the operator fixes it: the first tick opens the session
        assert on_demand.get().models() == []


def test_at_the_handover_the_old_runs_models_answer_while_the_new_runs_are_warm_then_go(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "echo")
    old_stack, new_stack = ExitStack(), ExitStack()
    with old_stack, new_stack:
        old = SessionOnDemand(make_runner(models_dir), _Rules(), old_stack).get()
        old_pids = _worker_pids(old)
        new_on_demand = SessionOnDemand(make_runner(models_dir), _Rules(), new_stack)
        assert prewarm_models(new_on_demand, datetime.now(timezone.utc) + timedelta(seconds=60), 30, _Log()) is not None
        new_pids = _worker_pids(new_on_demand.get())
        assert not set(old_pids.values()) & set(new_pids.values())  # each run its own processes, both alive
        # the old hour's last cycle, with the next hour's models already up
        last = old.run_cycle(CYCLE_CALLS, timeout_seconds=10.0)
        assert {r.status for r in last.values()} == {CallStatus.SUCCESS}
        old_stack.close()  # the old run ends at hh:00
        assert all(process_is_gone(pid) for pid in old_pids.values())
        first = new_on_demand.get().run_cycle(NEXT_CYCLE_CALLS, timeout_seconds=10.0)
        assert {r.status for r in first.values()} == {CallStatus.SUCCESS}
        assert _worker_pids(new_on_demand.get()) == new_pids


def test_a_model_killed_mid_hour_is_replaced_and_the_others_keep_their_processes(tmp_path):
    runner = make_runner(make_models_dir(tmp_path, "good", "echo", "package_model"))
    with runner.open_session(INTERFACE) as session:
        assert {r.status for r in session.run_cycle(CYCLE_CALLS, timeout_seconds=10.0).values()} == {CallStatus.SUCCESS}
        before = _worker_pids(session)
        os.kill(before["echo"], signal.SIGKILL)  # the kernel's OOM killer, an operator's kill
        killed = session.run_cycle(NEXT_CYCLE_CALLS, timeout_seconds=10.0)
        assert killed["echo"].status is CallStatus.FAILED and "killed by signal 9" in killed["echo"].detail
        assert killed["good"].status is CallStatus.SUCCESS
        # respawned right after the cycle: answers the next one from a fresh process
        later = session.run_cycle(NEXT_CYCLE_CALLS, timeout_seconds=10.0)
        assert {r.status for r in later.values()} == {CallStatus.SUCCESS}
        after = _worker_pids(session)
        assert after["echo"] != before["echo"] and process_is_gone(before["echo"])
        assert {m: p for m, p in after.items() if m != "echo"} == {m: p for m, p in before.items() if m != "echo"}
        assert session.restart_counts() == {"echo": 1, "good": 0, "package_model": 0}


def test_the_worker_imports_nothing_heavy_before_the_model(tmp_path):
    """Every module the worker imports before the model is memory each of 1,000 models pays
    (orjson and typing were 2 MiB of 12): the model sees what was imported before its own code."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "lean_base.py").write_text(
        "import sys\nBEFORE = sorted(sys.modules)\n\n\nclass LeanBase:\n    def predict(self):\n        raise NotImplementedError\n")
    models = tmp_path / "models"
    models.mkdir()
    (models / "lister.py").write_text(
        "from lean_base import BEFORE, LeanBase\n\n\nclass Lister(LeanBase):\n    def predict(self):\n        return BEFORE\n")
    from resources.model_runners.base import MethodCall, ModelInterface
    from resources.model_runners.local import LocalModelRunner

    runner = LocalModelRunner(models_dir=str(models), extra_pythonpath=[str(lib)], startup_timeout_seconds=15.0)
    with runner.open_session(ModelInterface("lean_base:LeanBase")) as session:
        [result] = session.run_cycle([MethodCall("predict")], timeout_seconds=10.0).values()
    assert result.status is CallStatus.SUCCESS, result.detail
    imported = set(result.output)
    assert "json" in imported  # the worker's own protocol: the list is the real one
    assert not imported & {"orjson", "typing", "numpy", "dagster", "pydantic", "resources", "crunch_assets"}


def test_the_benches_read_pss_from_smaps_rollup_of_real_processes():
    from bench.benchkit import pss_kib

    assert pss_kib(os.getpid()) > 1024  # this interpreter: over a MiB
    assert pss_kib(2**22 + 7) == 0  # gone: counts nothing
    assert Path("/proc/self/smaps_rollup").exists()

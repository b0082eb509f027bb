"""LocalModelRunner against real model processes (fixtures in tests/fixtures/local_models/)."""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import time
from pathlib import Path

import pytest

from resources.model_runners.base import CallStatus, MethodCall, ModelInterface
from resources.model_runners.local import LocalModelRunner

pytestmark = pytest.mark.integration

FIXTURES_DIR = Path(__file__).parent / "fixtures" / "local_models"
FIXTURE_MODELS_DIR = FIXTURES_DIR / "models"
INTERFACE = ModelInterface(base_class="fixture_base:BaseModel")
HAS_NUMPY = importlib.util.find_spec("numpy") is not None

FEED = {
    "symbol": "BTC",
    "asof_ts": 1_700_000_000,
    "candles_1m": [
        {"ts": 1_700_000_000 - 60 * (4 - i), "open": 100.0, "high": 101.0, "low": 99.0, "close": 100.0 + i, "volume": 3.5}
        for i in range(5)
    ],
}
CYCLE_CALLS = [
    MethodCall("feed_update", (FEED,)),
    MethodCall("predict", ("BTC",), {"resolve_horizon_seconds": 3600, "step_seconds": 300}),
]
# The next cycle's calls: the models that misbehave on the first cycle's feed (a sandboxed model
# keeps nothing across restarts, its input tells it the cycle) answer these.
NEXT_CYCLE_CALLS = [MethodCall("feed_update", ({**FEED, "asof_ts": FEED["asof_ts"] + 60},)), CYCLE_CALLS[1]]


def make_models_dir(tmp_path: Path, *model_names: str) -> Path:
    """A fresh models_dir holding copies of the named fixture models."""
    models_dir = tmp_path / "models"
    models_dir.mkdir(exist_ok=True)
    for name in model_names:
        source = FIXTURE_MODELS_DIR / name
        if source.is_dir():
            shutil.copytree(source, models_dir / name)
        else:
            shutil.copy(FIXTURE_MODELS_DIR / f"{name}.py", models_dir / f"{name}.py")
    return models_dir


def make_runner(models_dir: Path, **config) -> LocalModelRunner:
    config.setdefault("memory_limit_mb", 512)
    config.setdefault("startup_timeout_seconds", 15.0)
    return LocalModelRunner(models_dir=str(models_dir), extra_pythonpath=[str(FIXTURES_DIR / "lib")], **config)


def process_is_gone(pid: int) -> bool:
    """True if no live process has this pid (a zombie left for init to reap counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):  # it exited meanwhile
        return True
    return state == "Z"


def wait_until_gone(pids, timeout_seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout_seconds
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if not process_is_gone(pid)]
        if alive:
            time.sleep(0.05)
    return alive


def run_cycle_waiting_for_restarts(session, calls, timeout_seconds: float, cycles: int = 5) -> dict:
    """run_cycle, then the same calls again for the models that were still restarting ("not ready":
    a cycle does not wait for a restart, which on a loaded machine may outlast a short budget)."""
    results = session.run_cycle(calls, timeout_seconds=timeout_seconds)
    for _ in range(cycles - 1):
        restarting = {m for m, r in results.items() if (r.detail or "").startswith("not ready")}
        if not restarting:
            break
        results.update(session.run_cycle(calls, timeout_seconds=timeout_seconds,
                                         skip_model_ids=frozenset(results.keys() - restarting)))
    return results


def test_list_models_reads_the_directory_without_starting_anything(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "package_model")
    (models_dir / "_helpers.py").write_text("X = 1\n")
    (models_dir / ".hidden.py").write_text("X = 1\n")
    (models_dir / "notes.txt").write_text("not a model\n")
    (models_dir / "data").mkdir()  # a directory without __init__.py

    models = make_runner(models_dir).list_models()

    assert [m.model_id for m in models] == ["good", "package_model"]
    assert [m.name for m in models] == ["good", "package_model"]
    assert models[0].meta == {"path": str(models_dir / "good.py")}
    assert models[1].meta == {"path": str(models_dir / "package_model")}


def test_list_models_of_a_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        make_runner(tmp_path / "nowhere").list_models()


def test_every_kind_of_misbehaviour_is_contained_in_its_own_result(tmp_path):
    names = [
        "good", "echo", "package_model", "raises", "raises_in_feed_update", "exits_on_first_call",
        "segfaults", "memory_hog", "chatty", "returns_nan", "returns_infinity", "returns_string",
        "returns_set", "returns_object", "returns_huge", "no_subclass", "two_subclasses",
        "constructor_fails", "import_fails",
    ]
    if HAS_NUMPY:
        names.append("returns_numpy_float")
    models_dir = make_models_dir(tmp_path, *names)
    (models_dir / "syntax_error.py").write_text("from fixture_base import BaseModel\nclass Broken(BaseModel:\n    pass\n")

    with make_runner(models_dir).open_session(INTERFACE) as session:
        assert sorted(m.model_id for m in session.models()) == sorted([*names, "syntax_error"])
        first_cycle_started = time.monotonic()
        results = session.run_cycle(CYCLE_CALLS, timeout_seconds=10.0)
        first_cycle_seconds = time.monotonic() - first_cycle_started
        second = session.run_cycle(NEXT_CYCLE_CALLS, timeout_seconds=10.0)

    assert first_cycle_seconds < 5.0
    assert set(results) == set(names) | {"syntax_error"}
    status = {model_id: result.status for model_id, result in results.items()}
    detail = {model_id: result.detail or "" for model_id, result in results.items()}

    assert results["good"].status is CallStatus.SUCCESS
    assert results["good"].output == {"p_up": 0.7}
    assert results["good"].detail is None
    assert results["good"].exec_time_ms >= 0.0
    assert results["echo"].output == {
        "args": ["BTC"],
        "kwargs": {"resolve_horizon_seconds": 3600, "step_seconds": 300},
        "feed_json_chars": len(__import__("json").dumps(FEED)),
    }
    assert results["package_model"].output == {"p_up": 0.6}  # relative import worked, closes rose
    assert results["returns_string"].status is CallStatus.SUCCESS
    assert results["returns_string"].output == "up, probably"
    assert results["chatty"].status is CallStatus.SUCCESS
    assert results["chatty"].output == {"p_up": 0.55}

    assert status["raises"] is CallStatus.FAILED
    assert detail["raises"].startswith("ValueError: boom")
    assert "raises.py" in detail["raises"]
    assert status["raises_in_feed_update"] is CallStatus.FAILED
    assert detail["raises_in_feed_update"].startswith("KeyError: 'candles_1m'")  # predict never ran
    assert status["exits_on_first_call"] is CallStatus.FAILED
    assert "exited with code 3" in detail["exits_on_first_call"]
    assert status["segfaults"] is CallStatus.FAILED
    assert "signal 11 (SIGSEGV)" in detail["segfaults"]
    assert status["memory_hog"] is CallStatus.FAILED
    assert detail["memory_hog"].startswith("MemoryError")

    for name in ("returns_nan", "returns_infinity", "returns_set", "returns_object"):
        assert status[name] is CallStatus.FAILED, name
        assert detail[name].startswith("output not serialisable"), detail[name]
    assert "$.p_up is nan" in detail["returns_nan"]
    assert "$[1] is -inf" in detail["returns_infinity"]
    assert "$.assets is a set" in detail["returns_set"]
    assert "Prediction" in detail["returns_object"]
    if HAS_NUMPY:
        assert status["returns_numpy_float"] is CallStatus.FAILED
        assert detail["returns_numpy_float"] == "output not serialisable: $.p_up is a numpy.float64"
    assert status["returns_huge"] is CallStatus.FAILED
    assert detail["returns_huge"].startswith("output too large")

    assert status["no_subclass"] is CallStatus.FAILED
    assert "no concrete subclass of fixture_base:BaseModel" in detail["no_subclass"]
    assert status["two_subclasses"] is CallStatus.FAILED
    assert "FirstModel, SecondModel" in detail["two_subclasses"]
    assert status["constructor_fails"] is CallStatus.FAILED
    assert "NeedsWeights() failed: FileNotFoundError: weights.bin" in detail["constructor_fails"]
    assert status["import_fails"] is CallStatus.FAILED
    assert "ModuleNotFoundError: No module named 'module_that_does_not_exist'" in detail["import_fails"]
    assert status["syntax_error"] is CallStatus.FAILED
    assert "SyntaxError" in detail["syntax_error"]
    assert all(detail[name].startswith("could not start: ") for name in
               ("no_subclass", "two_subclasses", "constructor_fails", "import_fails", "syntax_error"))

    # Second cycle: the model that died was restarted and now answers; start-up failures stay;
    # models that only failed a call kept their process and fail the same way again.
    assert second["exits_on_first_call"].status is CallStatus.SUCCESS
    assert second["exits_on_first_call"].output == {"p_up": 0.4}
    assert second["good"].output == {"p_up": 0.7}
    assert second["chatty"].output == {"p_up": 0.55}
    assert second["segfaults"].status is CallStatus.FAILED
    assert second["memory_hog"].status is CallStatus.FAILED
    assert second["syntax_error"].detail == results["syntax_error"].detail
    assert second["raises"].detail == results["raises"].detail


def test_a_model_past_the_deadline_times_out_alone_and_is_restarted(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "echo", "sleeps_on_first_call")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        sleepy_pid = session.process_ids()["sleeps_on_first_call"]

        started = time.monotonic()
        first = session.run_cycle(CYCLE_CALLS, timeout_seconds=1.0)
        first_cycle_seconds = time.monotonic() - started

        assert 1.0 <= first_cycle_seconds < 3.0
        assert first["sleeps_on_first_call"].status is CallStatus.TIMEOUT
        assert first["sleeps_on_first_call"].detail == "timed out after 1.0 s"
        assert first["good"].status is CallStatus.SUCCESS
        assert first["good"].output == {"p_up": 0.7}
        assert first["echo"].status is CallStatus.SUCCESS
        assert wait_until_gone([sleepy_pid]) == []

        second = run_cycle_waiting_for_restarts(session, NEXT_CYCLE_CALLS, timeout_seconds=1.0)
        assert second["sleeps_on_first_call"].status is CallStatus.SUCCESS
        assert second["sleeps_on_first_call"].output == {"p_up": 0.6}
        assert second["good"].output == {"p_up": 0.7}
        assert session.process_ids()["sleeps_on_first_call"] != sleepy_pid
        assert session.restart_counts() == {"echo": 0, "good": 0, "sleeps_on_first_call": 1}


def test_a_model_that_never_finishes_starting_fails_without_holding_up_the_others(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "hangs_on_import")
    started = time.monotonic()
    with make_runner(models_dir, startup_timeout_seconds=1.5, startup_attempts=1).open_session(INTERFACE) as session:
        assert time.monotonic() - started < 5.0
        assert "hangs_on_import" not in session.process_ids()  # killed
        results = session.run_cycle(CYCLE_CALLS, timeout_seconds=2.0)
    assert results["good"].output == {"p_up": 0.7}
    assert results["hangs_on_import"].status is CallStatus.FAILED
    assert results["hangs_on_import"].detail == "could not start: did not start within 1.5 s"


def test_a_missing_base_class_fails_every_model_with_the_reason(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "raises")
    with make_runner(models_dir).open_session(ModelInterface("fixture_base:NoSuchBase")) as session:
        results = session.run_cycle(CYCLE_CALLS, timeout_seconds=2.0)
    assert {r.status for r in results.values()} == {CallStatus.FAILED}
    assert "cannot import base class fixture_base:NoSuchBase: AttributeError" in results["good"].detail


def test_requests_of_megabytes_reach_every_model(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "echo", "package_model")
    big_feed = {**FEED, "candles_1m": FEED["candles_1m"] * 20_000}  # ~8 MB of JSON, > any pipe buffer
    calls = [MethodCall("feed_update", (big_feed,)), *CYCLE_CALLS[1:]]
    with make_runner(models_dir).open_session(INTERFACE) as session:
        results = session.run_cycle(calls, timeout_seconds=20.0)
    assert results["good"].output == {"p_up": 0.7}
    assert results["echo"].output["feed_json_chars"] == len(__import__("json").dumps(big_feed))
    assert results["package_model"].status is CallStatus.SUCCESS


def test_values_only_the_standard_json_decoder_reads_reach_the_model_unchanged(tmp_path):
    """NaN, infinities and integers past 64 bits (which json.dumps writes and stricter decoders
    such as orjson refuse) reach the model as Python's json reads them."""
    import json

    models_dir = make_models_dir(tmp_path, "echo")
    plain = {**FEED, "extra": [1.5, "é", 2**63 - 1]}
    unusual = {**FEED, "extra": [float("nan"), float("inf"), -float("inf"), 2**70, "\ud800"]}
    with make_runner(models_dir).open_session(INTERFACE) as session:
        answers = [session.run_cycle([MethodCall("feed_update", (feed,)), *CYCLE_CALLS[1:]], timeout_seconds=5.0)
                   for feed in (plain, unusual)]
    assert [a["echo"].output["feed_json_chars"] for a in answers] == [len(json.dumps(plain)), len(json.dumps(unusual))]


def test_close_leaves_no_process_behind(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "chatty", "spawns_child", "sleeps_on_first_call")
    session = make_runner(models_dir).open_session(INTERFACE)
    results = session.run_cycle(CYCLE_CALLS, timeout_seconds=0.5)  # leaves a freshly restarted process
    assert results["spawns_child"].status is CallStatus.SUCCESS
    pids = list(session.process_ids().values())
    assert len(pids) == 4

    def live_processes() -> set[int]:
        return set().union(*(session.model_processes(model_id) for model_id in session.process_ids()))

    deadline = time.monotonic() + 30  # the restarted model's sandbox shows its processes a moment after its start
    while not set(pids) <= live_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    every_process = live_processes()
    assert set(pids) <= every_process

    session.close()
    session.close()  # idempotent

    assert wait_until_gone(every_process) == []
    with pytest.raises(RuntimeError):
        session.run_cycle(CYCLE_CALLS, timeout_seconds=1.0)


def test_a_session_dropped_without_close_is_cleaned_up(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "echo")
    session = make_runner(models_dir).open_session(INTERFACE)
    pids = list(session.process_ids().values())
    del session
    gc.collect()
    assert wait_until_gone(pids) == []


def test_a_model_flooding_the_protocol_pipe_is_cut_off_and_restarted(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "writes_on_protocol_pipe")
    with make_runner(models_dir, max_output_bytes=1000).open_session(INTERFACE) as session:
        for _ in range(2):
            started = time.monotonic()
            results = session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0)
            assert time.monotonic() - started < 3.0  # cut off at the read cap, not at the deadline
            assert results["good"].output == {"p_up": 0.7}
            assert results["writes_on_protocol_pipe"].status is CallStatus.FAILED
            assert results["writes_on_protocol_pipe"].detail.startswith("output too large")
        assert session.restart_counts()["writes_on_protocol_pipe"] == 2


COUNTING_MODEL = '''\
"""Remembers every start and call of its process, and answers with that list."""
import os

from fixture_base import BaseModel


class CountingModel(BaseModel):
    def __init__(self):
        self.events = [f"{os.getpid()} start"]

    def feed_update(self, data):
        self.events.append(f"{os.getpid()} feed_update")

    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        self.events.append(f"{os.getpid()} predict")
        return {"p_up": 0.5, "events": list(self.events)}
'''


def test_a_skipped_model_is_not_called_and_has_no_result(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "import_fails")
    (models_dir / "counting.py").write_text(COUNTING_MODEL)
    with make_runner(models_dir).open_session(INTERFACE) as session:
        counting_pid = session.process_ids()["counting"]
        first = session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0)
        skipped = session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0, skip_model_ids=frozenset({"counting", "import_fails"}))
        third = session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0)
        assert session.process_ids()["counting"] == counting_pid  # the same process throughout

    events = first["counting"].output["events"]
    pid_inside = events[0].split()[0]
    assert events == [f"{pid_inside} {event}" for event in ("start", "feed_update", "predict")]
    assert set(skipped) == {"good"}  # skipped models get no entry, not even a start-up failure
    assert skipped["good"].output == {"p_up": 0.7}
    assert third["import_fails"].status is CallStatus.FAILED
    # not called while skipped: the process saw two cycles' calls, nothing in between
    assert third["counting"].output["events"] == [
        f"{pid_inside} {event}" for event in ("start", "feed_update", "predict", "feed_update", "predict")
    ]


def test_a_skipped_model_due_a_restart_is_restarted_only_when_called_again(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "sleeps_on_first_call")
    with make_runner(models_dir).open_session(INTERFACE) as session:
        first = session.run_cycle(CYCLE_CALLS, timeout_seconds=0.5)
        assert first["sleeps_on_first_call"].status is CallStatus.TIMEOUT  # killed, its restart begun

        started = time.monotonic()
        skipped = session.run_cycle(CYCLE_CALLS, timeout_seconds=5.0, skip_model_ids=frozenset({"sleeps_on_first_call"}))
        assert time.monotonic() - started < 2.0  # did not wait for the skipped model's start-up
        assert set(skipped) == {"good"}
        assert "sleeps_on_first_call" not in session.process_ids()  # no process while skipped

        called_again = session.run_cycle(NEXT_CYCLE_CALLS, timeout_seconds=5.0)  # started, then called, in 5 s
        assert called_again["sleeps_on_first_call"].output == {"p_up": 0.6}
        assert session.restart_counts()["sleeps_on_first_call"] == 1


STATEFUL_MODEL = '''
from fixture_base import BaseModel


class CountingModel(BaseModel):
    calls = 0

    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        self.calls += 1
        if self.calls == 3:
            raise ValueError("third call")
        return {"calls": self.calls, "asof": self.last_feed["asof_ts"]}
'''


def _cycles(count: int, candles: int = 5) -> list[list[MethodCall]]:
    history = [{**FEED["candles_1m"][0], "ts": FEED["asof_ts"] - 60 * i} for i in range(candles)]
    return [[MethodCall("feed_update", ({**FEED, "asof_ts": FEED["asof_ts"] + 60 * k, "candles_1m": history},)),
             CYCLE_CALLS[1]] for k in range(count)]


def test_cycles_sent_ahead_are_answered_as_one_cycle_at_a_time(tmp_path):
    """A range run's batch of cycles in one round trip per model: the same calls in the same
    order as cycle by cycle; a raising call fails alone, a timeout or a crash cuts that model's
    list at its cycle and restarts it, and the caller makes the rest one cycle at a time."""
    models_dir = make_models_dir(tmp_path, "good", "raises", "sleeps_on_first_call", "exits_on_first_call")
    (models_dir / "counts.py").write_text(STATEFUL_MODEL)
    cycles = _cycles(6)
    everyone = frozenset({"counts", "good", "raises", "sleeps_on_first_call", "exits_on_first_call"})
    with make_runner(models_dir).open_session(INTERFACE) as session:
        pids = session.process_ids()
        ahead = session.run_cycles_ahead(cycles, timeout_seconds=1.0, model_ids=everyone - {"good"})
        one_at_a_time = [session.run_cycle(calls, timeout_seconds=1.0, skip_model_ids=frozenset(ahead)) for calls in cycles]
        later = run_cycle_waiting_for_restarts(session, cycles[1], timeout_seconds=1.0)
        restarts = session.restart_counts()

    assert set(ahead) == everyone - {"good"}  # only the models asked for
    assert [(r.status, r.output) for r in ahead["counts"]] == [
        (CallStatus.SUCCESS, {"calls": 1, "asof": FEED["asof_ts"]}),
        (CallStatus.SUCCESS, {"calls": 2, "asof": FEED["asof_ts"] + 60}),
        (CallStatus.FAILED, None),
        *[(CallStatus.SUCCESS, {"calls": k + 1, "asof": FEED["asof_ts"] + 60 * k}) for k in (3, 4, 5)],
    ]
    assert "ValueError: third call" in ahead["counts"][2].detail
    assert [r.status for r in ahead["raises"]] == [CallStatus.FAILED] * 6
    assert [(r.status, r.detail) for r in ahead["sleeps_on_first_call"]] == [(CallStatus.TIMEOUT, "timed out after 1.0 s")]
    assert [(r.status, r.detail) for r in ahead["exits_on_first_call"]] == [
        (CallStatus.FAILED, "model process exited with code 3")]
    assert wait_until_gone([pids["sleeps_on_first_call"], pids["exits_on_first_call"]]) == []
    # the models left out were not called ahead: cycle by cycle they see every cycle from the first
    assert [r["good"].status for r in one_at_a_time] == [CallStatus.SUCCESS] * 6
    assert set(one_at_a_time[0]) == {"good"}
    assert later["sleeps_on_first_call"].output == {"p_up": 0.6} and later["exits_on_first_call"].output == {"p_up": 0.4}
    assert later["counts"].output == {"calls": 7, "asof": FEED["asof_ts"] + 60}  # the same process, its state kept
    assert restarts == {"counts": 0, "good": 0, "raises": 0, "sleeps_on_first_call": 1, "exits_on_first_call": 1}


def test_cycles_sent_ahead_equal_the_same_cycles_one_at_a_time(tmp_path):
    models_dir = make_models_dir(tmp_path, "good", "echo", "raises")
    (models_dir / "counts.py").write_text(STATEFUL_MODEL)
    cycles = _cycles(40, candles=400)  # 1.4 MB of requests: far more than a pipe holds at once
    runner = make_runner(models_dir)
    with runner.open_session(INTERFACE) as session:
        ahead = session.run_cycles_ahead(cycles, 5.0, frozenset({"good", "echo", "raises", "counts"}))
    with runner.open_session(INTERFACE) as session:
        stepped = [session.run_cycle(calls, 5.0) for calls in cycles]

    def comparable(result):
        return result.status, result.output, result.detail

    for model_id in ("good", "echo", "raises", "counts"):
        assert [comparable(r) for r in ahead[model_id]] == [comparable(s[model_id]) for s in stepped], model_id

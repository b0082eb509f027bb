"""OrchestratorModelRunner against real loopback servers: a WebSocket orchestrator and gRPC model
nodes (tests/fakes/model_orchestrator.py), driven through the unmodified model-runner-client."""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from resources.model_runners.base import CallStatus, MethodCall, ModelInterface
from resources.model_runners.orchestrator import OrchestratorModelRunner, OrchestratorModelSession
from tests.fakes.model_orchestrator import (
    FAKE_MODEL_BASE_CLASS,
    AnsweringModel,
    CorruptAnswerModel,
    FakeModelNode,
    FakeOrchestrator,
    FixedAnswerModel,
    HangingModel,
    RaisingModel,
    UnrelatedModel,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

INTERFACE = ModelInterface(base_class=FAKE_MODEL_BASE_CLASS)
PREDICT = MethodCall("predict", ("BTC",), {"horizon_seconds": 60, "step_seconds": 60})
TICK = MethodCall("tick", ({"BTC": [[1_700_000_000, 37_000.5], [1_700_000_060, 37_010.0]]},))


@pytest.fixture
def orchestrator() -> Iterator[FakeOrchestrator]:
    fake = FakeOrchestrator(crunch_id="btc-up-down").start()
    yield fake
    fake.stop()


@pytest.fixture
def start_node() -> Iterator[Callable[..., FakeModelNode]]:
    nodes: list[FakeModelNode] = []

    def start(model_id: str, model: Any, **identity: Any) -> FakeModelNode:
        node = FakeModelNode(model_id, model, **identity).start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def open_session(orchestrator: FakeOrchestrator) -> Iterator[Callable[..., OrchestratorModelSession]]:
    sessions: list[OrchestratorModelSession] = []

    def open_(**settings: Any) -> OrchestratorModelSession:
        session = runner_for(orchestrator, **settings).open_session(INTERFACE)
        sessions.append(session)
        return session

    yield open_
    for session in sessions:
        session.close()


def runner_for(orchestrator: FakeOrchestrator, **settings: Any) -> OrchestratorModelRunner:
    defaults: dict[str, Any] = {"call_timeout_seconds": 2.0, "connect_timeout_seconds": 5.0}
    return OrchestratorModelRunner(
        host="127.0.0.1", port=orchestrator.port, crunch_id=orchestrator.crunch_id, **{**defaults, **settings}
    )


def wait_until(condition: Callable[[], bool], timeout_seconds: float = 10.0) -> None:
    """Poll `condition` until it holds; at the deadline fail naming it (its source line)."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_seconds} s: {_described(condition)}")
        time.sleep(0.02)


def _described(condition: Callable[[], bool]) -> str:
    import inspect

    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)


def statuses(results: dict) -> dict[str, CallStatus]:
    return {model_id: result.status for model_id, result in results.items()}


# --------------------------------------------------------------------------------------------------


def test_list_models_returns_what_the_orchestrator_announces(orchestrator, start_node):
    alice = start_node("m-1", AnsweringModel(), model_name="alpha", cruncher_id="c-1", cruncher_name="alice")
    bob = start_node("m-2", AnsweringModel(), model_name="beta", cruncher_id="c-2", cruncher_name="bob")
    orchestrator.announce(alice.announcement(), bob.announcement(state="STOPPED"))

    models = runner_for(orchestrator).list_models()

    assert [(m.model_id, m.name, m.player_id, m.player_name, m.state) for m in models] == [
        ("m-1", "alpha", "c-1", "alice", "RUNNING"),
        ("m-2", "beta", "c-2", "bob", "STOPPED"),
    ]
    assert models[0].deployment_id == alice.deployment_id
    assert models[0].meta == {"ip": "127.0.0.1", "port": alice.port}
    assert alice.received_calls == []  # listing does not touch the models
    wait_until(lambda: orchestrator.connected_clients == 0)


def test_answering_models_succeed_with_their_output(orchestrator, start_node, open_session):
    first = start_node("m-1", AnsweringModel(value=0.25))
    second = start_node("m-2", AnsweringModel(value=0.75))
    orchestrator.announce(first.announcement(), second.announcement())
    session = open_session()

    results = session.run_cycle([TICK, PREDICT], timeout_seconds=5)

    assert statuses(results) == {"m-1": CallStatus.SUCCESS, "m-2": CallStatus.SUCCESS}
    assert results["m-1"].output == {
        "value": 0.25, "subject": "BTC", "horizon_seconds": 60, "step_seconds": 60, "ticks_seen": 1,
    }
    assert results["m-2"].output["value"] == 0.75
    assert all(result.exec_time_ms > 0 and result.detail is None for result in results.values())
    # The node was set up with its base class in the node's "module.ClassName" form.
    assert first.hosted.setup_class_names == ["tests.fakes.model_orchestrator.FakeModelBase"]
    assert [call.method for call in first.received_calls] == ["tick", "predict"]
    assert first.model.ticks == [TICK.args[0]]
    assert [m.model_id for m in session.models()] == ["m-1", "m-2"]


def test_arguments_reach_the_model_with_their_types(orchestrator, start_node, open_session):
    node = start_node("m-1", AnsweringModel())
    orchestrator.announce(node.announcement())
    session = open_session()
    sent = [1.5, 7, "text", {"a": [1, 2.5]}, [1, "b"], (3, 4), True, None, np.float32(0.25), np.int64(3), {"p": np.float64(0.5)}]

    results = session.run_cycle([MethodCall("tick", (value,)) for value in sent] + [PREDICT], timeout_seconds=5)

    assert results["m-1"].status is CallStatus.SUCCESS
    received = node.model.ticks
    assert received == [1.5, 7, "text", {"a": [1, 2.5]}, [1, "b"], [3, 4], True, None, 0.25, 3, {"p": 0.5}]
    assert [type(value) for value in received] == [float, int, str, dict, list, list, bool, type(None), float, int, dict]
    assert results["m-1"].output["ticks_seen"] == len(sent)


def test_an_argument_without_a_protocol_variant_is_refused_before_any_call(orchestrator, start_node, open_session):
    node = start_node("m-1", AnsweringModel())
    orchestrator.announce(node.announcement())
    session = open_session()

    with pytest.raises(ValueError, match="tick: a positional argument cannot be sent"):
        session.run_cycle([MethodCall("tick", (object(),)), PREDICT], timeout_seconds=5)
    assert node.received_calls == []


def test_a_raising_model_fails_with_its_reason(orchestrator, start_node, open_session):
    good = start_node("good", AnsweringModel())
    bad = start_node("bad", RaisingModel("division by zero in my model"))
    orchestrator.announce(good.announcement(), bad.announcement())
    session = open_session()

    results = session.run_cycle([TICK, PREDICT], timeout_seconds=5)

    assert statuses(results) == {"good": CallStatus.SUCCESS, "bad": CallStatus.FAILED}
    assert results["bad"].detail == "predict: MODEL_FAILED: The model raised an exception: division by zero in my model"
    assert results["bad"].output is None


def test_a_model_failing_a_call_skips_the_remaining_calls(orchestrator, start_node, open_session):
    node = start_node("m-1", AnsweringModel())
    orchestrator.announce(node.announcement())
    session = open_session()

    results = session.run_cycle([MethodCall("tick", (), {"unexpected": 1, "data": None}), MethodCall("tick"), PREDICT], 5)

    # tick() without its data argument raises TypeError on the node; predict is never called.
    assert results["m-1"].status is CallStatus.FAILED
    assert results["m-1"].detail.startswith("tick: MODEL_FAILED: The model raised an exception:")
    assert [call.method for call in node.received_calls] == ["tick", "tick"]


def test_a_hanging_model_times_out_without_holding_back_the_others(orchestrator, start_node, open_session):
    quick = start_node("quick", AnsweringModel())
    slow = start_node("slow", AnsweringModel(delay_seconds=0.3))
    hanging = start_node("hanging", HangingModel(hang_seconds=30))
    orchestrator.announce(quick.announcement(), slow.announcement(), hanging.announcement())
    session = open_session()

    started = time.monotonic()
    results = session.run_cycle([TICK, PREDICT], timeout_seconds=1.0)
    elapsed_seconds = time.monotonic() - started

    assert statuses(results) == {"quick": CallStatus.SUCCESS, "slow": CallStatus.SUCCESS, "hanging": CallStatus.TIMEOUT}
    assert 0.95 <= elapsed_seconds < 1.75
    assert results["hanging"].detail == "predict: DEADLINE_EXCEEDED: Deadline Exceeded"
    assert results["quick"].exec_time_ms < 500
    assert 300 <= results["slow"].exec_time_ms < 1000

    # Next cycle the client skips the timed-out model pre-emptively: no waiting at all.
    started = time.monotonic()
    results = session.run_cycle([TICK, PREDICT], timeout_seconds=1.0)
    assert time.monotonic() - started < 0.9
    assert statuses(results) == {"quick": CallStatus.SUCCESS, "slow": CallStatus.SUCCESS, "hanging": CallStatus.TIMEOUT}
    assert results["hanging"].detail.startswith("tick: PREEMPTIVE_SKIP")

    # Then it is called again, but the node is still busy with the hung call.
    results = session.run_cycle([TICK, PREDICT], timeout_seconds=1.0)
    assert results["hanging"].status is CallStatus.TIMEOUT
    assert results["hanging"].detail == "tick: RESOURCE_EXHAUSTED: Server busy"


def test_unusable_answers_fail_with_a_reason(orchestrator, start_node, open_session):
    answers = {
        "numpy-float32": np.float32(0.5),
        "numpy-int64": np.int64(3),
        "numpy-in-dict": {"value": np.float32(0.5)},
        "set": {0.1, 0.2},
        "object": object(),
    }
    nodes = [start_node(model_id, FixedAnswerModel(answer)) for model_id, answer in answers.items()]
    nodes.append(start_node("corrupt-bytes", CorruptAnswerModel()))
    nodes.append(start_node("numpy-float64", FixedAnswerModel(np.float64(0.5))))  # a float subclass: fine
    orchestrator.announce(*(node.announcement() for node in nodes))
    session = open_session()

    results = session.run_cycle([PREDICT], timeout_seconds=5)

    assert statuses(results) == {
        "numpy-float32": CallStatus.FAILED,
        "numpy-int64": CallStatus.FAILED,
        "numpy-in-dict": CallStatus.FAILED,
        "set": CallStatus.FAILED,
        "object": CallStatus.FAILED,
        "corrupt-bytes": CallStatus.FAILED,
        "numpy-float64": CallStatus.SUCCESS,
    }
    prefix = "predict: MODEL_FAILED: The model raised an exception: "
    assert results["numpy-float32"].detail == prefix + "Unsupported data type: <class 'numpy.float32'>"
    assert results["numpy-int64"].detail == prefix + "Unsupported data type: <class 'numpy.int64'>"
    assert results["numpy-in-dict"].detail == prefix + "Data cannot be serialized to JSON: Object of type float32 is not JSON serializable"
    assert results["set"].detail == prefix + "Unsupported data type: <class 'set'>"
    assert results["corrupt-bytes"].detail.startswith("predict: undecodable answer: 'utf-8' codec can't decode")
    assert results["numpy-float64"].output == 0.5


def test_a_stopped_model_is_absent_until_it_runs_again(orchestrator, start_node, open_session):
    steady = start_node("steady", AnsweringModel())
    flaky = start_node("flaky", AnsweringModel(value=0.9))
    orchestrator.announce(steady.announcement(), flaky.announcement())
    session = open_session()
    assert statuses(session.run_cycle([PREDICT], 5)) == {"steady": CallStatus.SUCCESS, "flaky": CallStatus.SUCCESS}

    orchestrator.push_update(flaky.announcement(state="STOPPED"))
    wait_until(lambda: "flaky" not in session.connected_model_ids())

    results = session.run_cycle([PREDICT], 5)
    assert statuses(results) == {"steady": CallStatus.SUCCESS, "flaky": CallStatus.ABSENT}
    assert results["flaky"].detail == "the orchestrator reports the model STOPPED"
    assert {m.model_id: m.state for m in session.models()} == {"steady": "RUNNING", "flaky": "STOPPED"}

    orchestrator.push_update(flaky.announcement(state="RUNNING"))
    wait_until(lambda: "flaky" in session.connected_model_ids())

    results = session.run_cycle([PREDICT], 5)
    assert statuses(results) == {"steady": CallStatus.SUCCESS, "flaky": CallStatus.SUCCESS}
    assert results["flaky"].output["value"] == 0.9


def test_a_model_announced_mid_session_is_called_too(orchestrator, start_node, open_session):
    first = start_node("first", AnsweringModel())
    orchestrator.announce(first.announcement())
    session = open_session()
    late = start_node("late", AnsweringModel(value=0.1), model_name="latecomer")

    orchestrator.push_update(late.announcement())
    wait_until(lambda: "late" in session.connected_model_ids())

    results = session.run_cycle([PREDICT], 5)
    assert statuses(results) == {"first": CallStatus.SUCCESS, "late": CallStatus.SUCCESS}
    assert [m.name for m in session.models()] == ["model-first", "latecomer"]


def test_a_model_not_subclassing_the_base_class_is_reported_and_absent(orchestrator, start_node, open_session):
    good = start_node("good", AnsweringModel())
    unrelated = start_node("unrelated", UnrelatedModel())
    orchestrator.announce(good.announcement(), unrelated.announcement())
    session = open_session()

    results = session.run_cycle([PREDICT], 5)

    assert statuses(results) == {"good": CallStatus.SUCCESS, "unrelated": CallStatus.ABSENT}
    assert results["unrelated"].detail.startswith("not connected")
    assert orchestrator.wait_for_failure_reports(1) == [
        {"model_id": "unrelated", "failure_code": "BAD_IMPLEMENTATION", "failure_reason": None, "ip": "127.0.0.1"}
    ]


def test_calling_a_missing_method_fails_and_drops_the_model(orchestrator, start_node, open_session):
    node = start_node("m-1", AnsweringModel())
    orchestrator.announce(node.announcement())
    session = open_session()

    results = session.run_cycle([MethodCall("no_such_method")], 5)

    assert results["m-1"].status is CallStatus.FAILED
    assert results["m-1"].detail == 'no_such_method: BAD_IMPLEMENTATION: Method "no_such_method" not found in class "AnsweringModel"'
    assert [report["failure_code"] for report in orchestrator.wait_for_failure_reports(1)] == ["BAD_IMPLEMENTATION"]
    wait_until(lambda: "m-1" not in session.connected_model_ids())
    assert session.run_cycle([PREDICT], 5)["m-1"].status is CallStatus.ABSENT


def test_repeated_failures_get_a_model_reported_and_dropped(orchestrator, start_node, open_session):
    good = start_node("good", AnsweringModel())
    bad = start_node("bad", RaisingModel())
    orchestrator.announce(good.announcement(), bad.announcement())
    session = open_session(max_consecutive_failures=1)

    # The client drops a model once its consecutive failures exceed the maximum.
    assert session.run_cycle([PREDICT], 5)["bad"].status is CallStatus.FAILED
    assert session.run_cycle([PREDICT], 5)["bad"].status is CallStatus.FAILED
    reports = orchestrator.wait_for_failure_reports(1)
    assert [(report["model_id"], report["failure_code"]) for report in reports] == [("bad", "MULTIPLE_FAILED")]
    wait_until(lambda: "bad" not in session.connected_model_ids())

    results = session.run_cycle([PREDICT], 5)
    assert statuses(results) == {"good": CallStatus.SUCCESS, "bad": CallStatus.ABSENT}


def test_without_failure_reports_a_failing_model_stays(orchestrator, start_node, open_session):
    bad = start_node("bad", RaisingModel())
    orchestrator.announce(bad.announcement())
    session = open_session(max_consecutive_failures=1, report_failure=False)

    for _ in range(3):
        assert session.run_cycle([PREDICT], 5)["bad"].status is CallStatus.FAILED
    assert orchestrator.failure_reports == []


def test_a_model_unreachable_at_start_is_absent(orchestrator, start_node, open_session):
    good = start_node("good", AnsweringModel())
    gone = start_node("gone", AnsweringModel())
    gone.stop()
    orchestrator.announce(good.announcement(), gone.announcement())
    session = open_session(connect_timeout_seconds=1.0)  # stops waiting for the unreachable node

    results = session.run_cycle([PREDICT], 5)

    assert statuses(results) == {"good": CallStatus.SUCCESS, "gone": CallStatus.ABSENT}
    assert results["gone"].detail == "still connecting to the model node"


def test_an_unreachable_orchestrator_fails_the_session_start_in_time():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    runner = OrchestratorModelRunner(host="127.0.0.1", port=free_port, crunch_id="nobody", connect_timeout_seconds=1.0)

    started = time.monotonic()
    with pytest.raises(ConnectionError, match="announced no models within 1.0s"):
        runner.open_session(INTERFACE)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("settings", "base_class", "message"),
    [
        ({"tls_ca_cert_path": "/certs/ca.crt"}, FAKE_MODEL_BASE_CLASS, "mTLS needs"),
        ({}, "FakeModelBase", "must look like 'module:ClassName'"),
    ],
)
def test_a_bad_configuration_is_refused_before_connecting(orchestrator, settings, base_class, message):
    with pytest.raises(ValueError, match=message):
        runner_for(orchestrator, **settings).open_session(ModelInterface(base_class=base_class))
    assert orchestrator.connections_served == 0


def test_close_is_idempotent_and_ends_the_session(orchestrator, start_node):
    node = start_node("m-1", AnsweringModel())
    orchestrator.announce(node.announcement())
    with runner_for(orchestrator).open_session(INTERFACE) as session:
        assert session.run_cycle([PREDICT], 5)["m-1"].status is CallStatus.SUCCESS
        wait_until(lambda: orchestrator.connected_clients == 1)
    session.close()

    wait_until(lambda: orchestrator.connected_clients == 0)
    assert not session._loop_thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        session.run_cycle([PREDICT], 5)


def test_a_skipped_model_is_not_called_and_has_no_result(orchestrator, start_node, open_session):
    kept = start_node("kept", AnsweringModel(value=0.25))
    skipped = start_node("skipped", AnsweringModel(value=0.75))
    stopped = start_node("stopped", AnsweringModel())
    orchestrator.announce(kept.announcement(), skipped.announcement(), stopped.announcement(state="STOPPED"))
    session = open_session()

    results = session.run_cycle([TICK, PREDICT], 5, skip_model_ids=frozenset({"skipped", "stopped", "unknown"}))

    assert statuses(results) == {"kept": CallStatus.SUCCESS}  # no entry for skipped ones, ABSENT or not
    assert results["kept"].output["value"] == 0.25
    assert skipped.received_calls == []
    assert "skipped" in session.connected_model_ids()  # still connected, ready for the next cycle

    results = session.run_cycle([TICK, PREDICT], 5, skip_model_ids=frozenset({"kept"}))
    assert statuses(results) == {"skipped": CallStatus.SUCCESS, "stopped": CallStatus.ABSENT}
    assert [call.method for call in skipped.received_calls] == ["tick", "predict"]
    assert [call.method for call in kept.received_calls] == ["tick", "predict"]  # first cycle only


def test_skipping_every_model_calls_none(orchestrator, start_node, open_session):
    # The client reads an empty model list as "all models": skipping everyone must not become that.
    node = start_node("m-1", AnsweringModel())
    orchestrator.announce(node.announcement())
    session = open_session()

    assert session.run_cycle([TICK, PREDICT], 5, skip_model_ids=frozenset({"m-1"})) == {}
    assert node.received_calls == []


def test_an_answer_over_the_output_cap_fails(orchestrator, start_node, open_session):
    small = start_node("small", FixedAnswerModel({"p_up": 0.5}))
    huge = start_node("huge", FixedAnswerModel("x" * 100_000))
    exactly_at_cap = start_node("at-cap", FixedAnswerModel("y" * 998))  # 1,000 bytes with its quotes
    orchestrator.announce(small.announcement(), huge.announcement(), exactly_at_cap.announcement())
    session = open_session(max_output_bytes=1000)

    results = session.run_cycle([PREDICT], 5)

    assert statuses(results) == {"small": CallStatus.SUCCESS, "huge": CallStatus.FAILED, "at-cap": CallStatus.SUCCESS}
    assert results["huge"].detail == "output too large: 100002 bytes > 1000"
    assert results["huge"].output is None
    assert results["at-cap"].output == "y" * 998


def test_the_default_output_cap_applies_to_the_orchestrator_runner(orchestrator, start_node, open_session):
    huge = start_node("huge", FixedAnswerModel({"p_up": 0.5, "padding": "z" * 70_000}))
    orchestrator.announce(huge.announcement())
    session = open_session()

    result = session.run_cycle([PREDICT], 5)["huge"]

    assert result.status is CallStatus.FAILED
    assert result.detail.startswith("output too large: ") and result.detail.endswith(" bytes > 65536")


def test_an_answer_that_is_not_plain_json_fails(orchestrator, start_node, open_session):
    nan = start_node("nan", FixedAnswerModel(float("nan")))
    nan_inside = start_node("nan-inside", FixedAnswerModel({"p_up": float("inf")}))
    orchestrator.announce(nan.announcement(), nan_inside.announcement())
    session = open_session()

    results = session.run_cycle([PREDICT], 5)

    assert statuses(results) == {"nan": CallStatus.FAILED, "nan-inside": CallStatus.FAILED}
    assert results["nan"].detail == "output not serialisable: $ is nan (NaN and infinity are not valid JSON)"
    assert results["nan-inside"].detail == "output not serialisable: $.p_up is inf (NaN and infinity are not valid JSON)"


def test_the_next_live_run_opens_its_orchestrated_session_before_the_hour_and_takes_over(orchestrator, start_node):
    """The hour handover with orchestrated models: the next hour's live run opens its session with
    `prewarm_models` (the live window's own call) while the previous run still serves: before the
    hour it holds its WebSocket and a set-up connection to every node (the nodes outlive the runs:
    each is set up again, not restarted). The previous run keeps answering meanwhile, its close at
    the boundary reports no model and costs the new session nothing, and the new run's first cycle
    opens no new connection."""
    from contextlib import ExitStack
    from datetime import datetime, timedelta, timezone

    from crunch_assets.defs.live_window.window import prewarm_models
    from crunch_assets.defs.predictions.assets import SessionOnDemand

    nodes = [start_node(f"m-{index}", AnsweringModel(value=index / 10)) for index in range(3)]
    orchestrator.announce(*(node.announcement() for node in nodes))
    model_ids = {node.model_id for node in nodes}

    class Rules:
        def model_interface(self) -> ModelInterface:
            return INTERFACE

    class Log:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def info(self, text: str) -> None:
            self.lines.append(text)

        warning = error = info

    log = Log()
    with ExitStack() as run_a_stack, ExitStack() as run_b_stack:
        run_a = SessionOnDemand(runner_for(orchestrator), Rules(), run_a_stack)
        assert set(statuses(run_a.get().run_cycle([TICK, PREDICT], 2.0)).values()) == {CallStatus.SUCCESS}
        assert orchestrator.connections_served == 1

        run_b = SessionOnDemand(runner_for(orchestrator), Rules(), run_b_stack)
        hour = datetime.now(timezone.utc) + timedelta(seconds=30)
        assert prewarm_models(run_b, hour, 30, log) is not None
        assert orchestrator.connections_served == 2
        assert run_b.get().connected_model_ids() == model_ids  # before the hour: every node connected and set up
        assert all(node.hosted.setup_class_names == ["tests.fakes.model_orchestrator.FakeModelBase"] * 2 for node in nodes)
        assert "before the window begins" in log.lines[-1], log.lines

        # run A serves its last cycle beside B's open session
        assert set(statuses(run_a.get().run_cycle([TICK, PREDICT], 2.0)).values()) == {CallStatus.SUCCESS}
        run_a_stack.close()  # the boundary: run A ends

        results = run_b.get().run_cycle([TICK, PREDICT], 2.0)
        assert set(statuses(results).values()) == {CallStatus.SUCCESS}
        assert {model_id: result.output["value"] for model_id, result in results.items()} == {"m-0": 0.0, "m-1": 0.1, "m-2": 0.2}
        assert orchestrator.connections_served == 2  # the first cycle of the hour opened nothing
        assert orchestrator.failure_reports == []
        assert [len(node.received_calls) for node in nodes] == [6, 6, 6]  # A's two cycles, B's one: tick + predict each

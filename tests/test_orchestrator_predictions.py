"""The engine with the orchestrator runner, end to end: btc_updown's feed_records + predictions over
loopback fakes (a WebSocket orchestrator and gRPC model nodes, tests/fakes/model_orchestrator.py),
through the unmodified model-runner-client. Each kind of model behaviour lands in
crunch.predictions with the status and reason the local runner's models get."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import dagster as dg
import pytest
import sqlalchemy as sa

from competitions.btc_updown.model_base import UpDownModel
from crunch_assets.keys import ChainKeys
from crunch_assets.run_config import as_of_run_config
from crunch_assets.replay import chain_assets
from tests.fakes.model_orchestrator import FakeModelNode, FakeOrchestrator

pytestmark = pytest.mark.timeout(120)

START = datetime(2026, 11, 2, tzinfo=timezone.utc)
PARTITION = "2026-11-02-00:00"
AS_OF = START + timedelta(minutes=2)  # three cycles: 00:00, 00:01, 00:02
CYCLES = [START + timedelta(minutes=minute) for minute in range(3)]
CALL_TIMEOUT_SECONDS = 1.0
# A session start waits this long for the unreachable node's connection before giving up on it.
CONNECT_TIMEOUT_SECONDS = 1.0


class ValidModel(UpDownModel):
    def __init__(self) -> None:
        super().__init__()
        self.feed_updates = 0

    def feed_update(self, data: dict) -> None:
        super().feed_update(data)
        self.feed_updates += 1

    def predict(self, subject: str, resolve_horizon_seconds: int, step_seconds: int) -> dict:
        assert self.latest["symbol"] == subject and self.latest["candles_1m"]
        return {"p_up": 0.6}


class RaisingModel(UpDownModel):
    def predict(self, subject: str, resolve_horizon_seconds: int, step_seconds: int) -> dict:
        raise RuntimeError("model bug in predict")


class HangingModel(UpDownModel):
    """Hangs far past the call timeout; release() (called when its node stops) wakes it."""

    def __init__(self) -> None:
        super().__init__()
        self._released = threading.Event()

    def predict(self, subject: str, resolve_horizon_seconds: int, step_seconds: int) -> dict:
        self._released.wait(60)
        return {"p_up": 0.5}

    def release(self) -> None:
        self._released.set()


class GarbageModel(UpDownModel):
    def predict(self, subject: str, resolve_horizon_seconds: int, step_seconds: int) -> dict:
        return {"p_up": "x"}


@pytest.fixture
def orchestrator() -> Iterator[FakeOrchestrator]:
    fake = FakeOrchestrator(crunch_id="btc-updown").start()
    yield fake
    fake.stop()


@pytest.fixture
def nodes(orchestrator: FakeOrchestrator) -> Iterator[dict[str, FakeModelNode]]:
    models: dict[str, Any] = {
        "valid": ValidModel(),
        "raises": RaisingModel(),
        "hangs": HangingModel(),
        "garbage": GarbageModel(),
        "stopped": ValidModel(),  # a model that would answer, had the orchestrator not stopped it
        "unreachable": ValidModel(),  # announced RUNNING, but its node is down
    }
    started = {model_id: FakeModelNode(model_id, model).start() for model_id, model in models.items()}
    started["unreachable"].stop()
    orchestrator.announce(*(
        node.announcement(state="STOPPED" if model_id == "stopped" else "RUNNING") for model_id, node in started.items()
    ))
    yield started
    for node in started.values():
        node.stop()


def test_every_model_behaviour_is_recorded_through_the_orchestrator_runner(clean_database, orchestrator, nodes):
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.feeds.synthetic import SyntheticFeed
    from resources.model_runners.orchestrator import OrchestratorModelRunner

    spec = replace(SPEC, start=START)
    runner = OrchestratorModelRunner(
        host="127.0.0.1", port=orchestrator.port, crunch_id=orchestrator.crunch_id,
        call_timeout_seconds=CALL_TIMEOUT_SECONDS, connect_timeout_seconds=CONNECT_TIMEOUT_SECONDS,
    )
    defs = build_definitions(spec=spec, feed=SyntheticFeed(), model_runner=runner, automation_running=False)
    keys = ChainKeys.for_slug(spec.slug)
    assets = [chain_assets(defs, [key])[0] for key in (keys.feed_records, keys.predictions)]
    ops = [ChainKeys.op_name(key) for key in (keys.feed_records, keys.predictions)]

    result = dg.materialize(
        assets, resources=defs.resources, partition_key=PARTITION, run_config=as_of_run_config(ops, AS_OF)
    )

    assert result.success
    metadata = result.asset_materializations_for_node(ChainKeys.op_name(keys.predictions))[0].metadata
    assert metadata["cycles_run"].value == 3
    assert metadata["predictions_made"].value == 3
    assert metadata["predictions_failed"].value == 9
    assert metadata["predictions_absent"].value == 6

    engine = sa.create_engine(clean_database)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT model_id, cycle_at, status, status_reason, inference_output, exec_time_ms "
            "FROM crunch.predictions WHERE competition = :slug ORDER BY model_id, cycle_at"
        ), {"slug": spec.slug}).fetchall()
        registered = dict(connection.execute(sa.text(
            "SELECT model_id, state FROM crunch.models WHERE competition = :slug"
        ), {"slug": spec.slug}).fetchall())
    engine.dispose()

    by_model: dict[str, list] = {}
    for row in rows:
        by_model.setdefault(row.model_id, []).append(row)
    assert set(by_model) == set(nodes)
    assert all([row.cycle_at for row in model_rows] == CYCLES for model_rows in by_model.values())
    # Both absent models are listed by the session, so the engine records them.
    assert registered == {model_id: "STOPPED" if model_id == "stopped" else "RUNNING" for model_id in nodes}

    # A valid answer waits for its ground truth.
    for row in by_model["valid"]:
        assert (row.status, row.status_reason) == ("PENDING", None)
        assert row.inference_output == {"p_up": 0.6, "form": "p_up"}
        assert row.exec_time_ms > 0
    assert nodes["valid"].model.feed_updates == 3

    # The node's exception message reaches the reason.
    for row in by_model["raises"]:
        assert row.status == "FAILED"
        assert row.status_reason == (
            "error: predict: MODEL_FAILED: The model raised an exception: model bug in predict"
        )

    # A hung model times out; the client then skips it pre-emptively or finds its node still busy
    # with the hung call: each is a timeout, none holds the cycle up past its budget.
    hangs = by_model["hangs"]
    assert all(row.status == "FAILED" and row.status_reason.startswith("timeout: ") for row in hangs)
    assert hangs[0].status_reason == "timeout: predict: DEADLINE_EXCEEDED: Deadline Exceeded"

    # An answer the competition's validator refuses keeps its raw form for diagnosis.
    for row in by_model["garbage"]:
        assert row.status == "FAILED"
        assert row.status_reason == "invalid output: p_up must be a finite number, got 'x'"
        assert row.inference_output is None

    # Announced but STOPPED: never called, ABSENT with the orchestrator's word for it.
    for row in by_model["stopped"]:
        assert row.status == "ABSENT"
        assert row.status_reason == "the orchestrator reports the model STOPPED"
    assert nodes["stopped"].received_calls == []

    # Announced RUNNING but unreachable: the client keeps trying to connect (its first attempt alone
    # lasts 10 s), so it is ABSENT, and said to be still connecting, for every cycle of this run.
    for row in by_model["unreachable"]:
        assert row.status == "ABSENT"
        assert row.status_reason == "still connecting to the model node"

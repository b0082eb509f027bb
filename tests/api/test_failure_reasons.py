"""A failed prediction's public reason says what failed, never where in the participant's code: real
local models that raise (with a path in their message), fail to import, kill their process or
answer garbage are run through predictions and scores; the report API and its exports show the
public reason to anyone, the full reason (exception, file, line) to the operator's token only."""

from __future__ import annotations

import csv
import io
import re
import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import httpx
import pytest

from crunch_assets.failure_reasons import public_reason, public_score_reason
from tests.api.conftest import TOKEN, LiveServer, accounts, auth

QUICKSTARTERS = Path(__file__).resolve().parents[2] / "competitions" / "btc_updown" / "models"
START = datetime(2026, 11, 2, tzinfo=timezone.utc)
HEADER = "from competitions.btc_updown.model_base import UpDownModel\n\n\n"
BAD_MODELS = {
    "leaky": HEADER + "class Model(UpDownModel):\n    def predict(self, subject, resolve_horizon_seconds, step_seconds):\n"
                      "        raise FileNotFoundError(f'cannot read {__file__} with key SECRET123')\n",
    "broken": "raise ImportError('no module at /home/participant/private/lib.py')\n",
    "dies": HEADER + "class Model(UpDownModel):\n    def predict(self, subject, resolve_horizon_seconds, step_seconds):\n"
                     "        import os; os._exit(7)\n",
    "garbage": HEADER + "class Model(UpDownModel):\n    def predict(self, subject, resolve_horizon_seconds, step_seconds):\n"
                        "        return {'p_up': 'very high'}\n",
}
PUBLIC = {
    "leaky": "error: model raised FileNotFoundError",
    "broken": "error: the model could not start",
    "dies": "error: model process exited with code 7",
    "garbage": "invalid output: p_up must be a finite number, got 'very high'",
}
# where in the participant's code, or what it said: none of it may reach an open read
LEAKS = re.compile(r"\.py|line|SECRET123|/home/|/tmp/|participant|\bat \w+\.|predict\)")


@pytest.fixture(scope="module")
def failed_store(database_url, tmp_path_factory):
    """Three cycles predicted and scored with the quickstarters and the bad models above."""
    import sqlalchemy as sa

    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.keys import ChainKeys
    from crunch_assets.replay import chain_assets
    from crunch_assets.run_config import as_of_run_config
    from resources.feeds.synthetic import SyntheticFeed
    from resources.model_runners.local import LocalModelRunner
    from resources.store.database import CrunchDatabase, dispose_engines

    name = "crunch_failure_reasons"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.engine.make_url(database_url).set(database=name).render_as_string(hide_password=False)
    models = tmp_path_factory.mktemp("reasons") / "models"
    shutil.copytree(QUICKSTARTERS, models, ignore=shutil.ignore_patterns("__pycache__"))
    for model_id, source in BAD_MODELS.items():
        (models / f"{model_id}.py").write_text(source)
    spec = replace(SPEC, start=START)
    defs = build_definitions(spec=spec, feed=SyntheticFeed(), automation_running=False, database=CrunchDatabase(url=url),
                             model_runner=LocalModelRunner(models_dir=str(models), call_timeout_seconds=2.0))
    keys = ChainKeys.for_slug(spec.slug)
    assets = {key: chain_assets(defs, [key])[0] for key in (keys.feed_records, keys.predictions, keys.scores)}
    as_of, partition = START + timedelta(minutes=2), "2026-11-02-00:00"
    ops = [ChainKeys.op_name(k) for k in (keys.feed_records, keys.predictions)]
    assert dg.materialize([assets[keys.feed_records], assets[keys.predictions]], resources=defs.resources,
                          partition_key=partition, run_config=as_of_run_config(ops, as_of)).success
    assert dg.materialize([assets[keys.feed_records]], resources=defs.resources, partition_key=partition,
                          run_config=as_of_run_config(ops[:1], as_of + timedelta(minutes=1))).success
    assert dg.materialize([assets[keys.scores]], resources=defs.resources, partition_key=partition,
                          run_config=as_of_run_config([ChainKeys.op_name(keys.scores)], as_of + timedelta(minutes=1))).success
    yield spec, url
    dispose_engines()
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(scope="module")
def reasons_api(failed_store):
    from crunch_assets.api import ReportCompetition, create_app
    from resources.store.database import CrunchDatabase

    spec, url = failed_store
    app = create_app([ReportCompetition(spec, accounts(), CrunchDatabase(url=url))], api_token=TOKEN, read_env=False)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def _failed(client: httpx.Client, **headers) -> dict[str, list[dict]]:
    response = client.get("/competitions/btc_updown/predictions", params={"status": "FAILED", "limit": 1000}, headers=headers)
    assert response.status_code == 200, response.text
    by_model: dict[str, list[dict]] = {}
    for prediction in response.json()["predictions"]:
        by_model.setdefault(prediction["model_id"], []).append(prediction)
    return by_model


def test_open_reads_say_what_failed_and_not_where(reasons_api):
    by_model = _failed(reasons_api)
    assert set(by_model) == set(BAD_MODELS) and all(len(rows) == 3 for rows in by_model.values())
    for model_id, rows in by_model.items():
        for row in rows:
            assert row["status_reason"] == PUBLIC[model_id]
            assert row["score"]["failed_reason"] == f"FAILED: {PUBLIC[model_id]}"
            assert "status_detail" not in row and "failed_detail" not in row["score"]
            assert not LEAKS.search(row["status_reason"]), row
    export = reasons_api.get("/competitions/btc_updown/models/leaky/export",
                             params={"start": START.isoformat(), "end": (START + timedelta(hours=1)).isoformat()})
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert len(rows) == 3 and {r["status_reason"] for r in rows} == {PUBLIC["leaky"]}
    assert not LEAKS.search(export.text)


def test_the_operator_reads_the_whole_reason(reasons_api):
    by_model = _failed(reasons_api, **auth())
    for row in by_model["leaky"]:
        assert row["status_reason"] == PUBLIC["leaky"]
        detail = row["status_detail"]
        assert detail.startswith("error: FileNotFoundError: cannot read ") and "SECRET123" in detail
        assert re.search(r"\(at leaky\.py:\d+ in predict\)$", detail), detail
        assert row["score"]["failed_detail"] == f"FAILED: {detail}"
    assert all("ImportError" in row["status_detail"] and "/home/participant" in row["status_detail"]
               for row in by_model["broken"])
    # a wrong token is refused, not read as anonymous
    response = reasons_api.get("/competitions/btc_updown/predictions", params={"status": "FAILED"}, headers=auth("not-the-token"))
    assert response.status_code == 403


@pytest.mark.parametrize(("status", "stored", "shown"), [
    # the local worker (describe_exception) and runner
    ("FAILED", "error: ValueError: boom (at model.py:12 in predict)", "error: model raised ValueError"),
    ("FAILED", "error: ValueError (at model.py:12 in predict)", "error: model raised ValueError"),
    ("FAILED", "error: mypkg.errors.Bad: /srv/models/x.py line 3", "error: model raised mypkg.errors.Bad"),
    ("FAILED", "error: model process killed by signal 9 (SIGKILL)", "error: model process killed by signal 9 (SIGKILL)"),
    ("FAILED", "error: output too large: reply over 1048576 bytes", "error: output too large: reply over 1048576 bytes"),
    ("FAILED", "error: protocol error: reply for cycle 'x'", "error: the model broke the runner's protocol"),
    ("FAILED", "error: could not start: did not start within 20.0 s", "error: the model could not start"),
    ("FAILED", "timeout: timed out after 5.0 s", "timeout: timed out after 5.0 s"),
    ("FAILED", "timeout: anything (at model.py:3 in f)", "timeout: the model did not answer in time"),
    # the orchestrator
    ("FAILED", "error: predict: MODEL_FAILED: The model raised an exception: model bug in predict",
     "error: predict: the model raised an exception"),
    ("FAILED", "error: predict: model-runner-client error: RuntimeError('x at /a/b.py')",
     "error: predict: the model runner client failed on this model"),
    ("FAILED", "error: predict: undecodable answer: bad bytes", "error: predict: the model's output could not be decoded"),
    ("FAILED", "error: output not serialisable: <object at 0x7f>", "error: the model's output is not JSON"),
    ("FAILED", "error: output too large: 2000000 bytes > 1000000", "error: output too large: 2000000 bytes > 1000000"),
    ("FAILED", "timeout: predict: DEADLINE_EXCEEDED: Deadline Exceeded", "timeout: predict: DEADLINE_EXCEEDED: Deadline Exceeded"),
    ("FAILED", "timeout: no answer within the cycle budget of 5.0s", "timeout: no answer within the cycle budget of 5.0s"),
    # the engine and the competition
    ("FAILED", "quarantined: not called until 2026-11-02T01:00:00+00:00", "quarantined: not called until 2026-11-02T01:00:00+00:00"),
    ("FAILED", "invalid output: p_up: Field required", "invalid output: p_up: Field required"),
    ("ABSENT", "the orchestrator reports the model STOPPED", "the orchestrator reports the model STOPPED"),
    # shapes it does not know show the kind alone
    ("FAILED", "error: ??? /srv/x.py:3", "error: the model failed"),
    ("FAILED", "something new: /srv/x.py:3", "the model failed"),
    ("FAILED", "error: ValueError: " + "x" * 5000, "error: model raised ValueError"),
    ("PENDING", None, None),
])
def test_public_reason_of_each_stored_shape(status, stored, shown):
    assert public_reason(status, stored) == shown
    if stored is not None and status in ("FAILED", "ABSENT"):
        assert public_score_reason(f"{status}: {stored}") == f"{status}: {shown}"
    assert public_score_reason("scoring error: ZeroDivisionError: division by zero") == \
        "scoring error: ZeroDivisionError: division by zero"  # the competition's own words

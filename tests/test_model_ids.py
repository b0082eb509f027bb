"""One model-id grammar (resources/model_ids.py): a model is refused at registration, with the
reason, when the report API could not serve its id; so every model that is ranked and paid can get
its scores, export, breakdown and proof over real HTTP. Real model processes, the embedded
PostgreSQL, real Dagster materializations, a real uvicorn."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import dagster as dg
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crunch_assets.keys import ChainKeys
from crunch_assets.replay import chain_assets
from resources.model_ids import MODEL_ID_MAX_CHARS, MODEL_ID_PATTERN, is_model_id, model_id_problem
from resources.model_runners.local import scan_models
from tests.api.conftest import LiveServer
from tests.rewards_fixtures import MODEL_HEADER, MODELS, competition, materialize_hours, spec_for, write_models
from tests.test_orchestrator_model_runner import (  # noqa: F401 - pytest fixtures
    INTERFACE,
    AnsweringModel,
    open_session,
    orchestrator,
    runner_for,
    start_node,
)

START = datetime(2026, 11, 20, tzinfo=timezone.utc)
# ids the API could not serve: a space, a quote, non-ASCII, a slash's stand-in, a leading dot's
REFUSED = {"coin v2": "' '", "it's": "\"'\"", "modèle": "'è'", "tab\there": "'\\t'", "=sign": "starts with '='"}


@pytest.mark.parametrize("model_id", ["oracle", "oracle-v2.1", "a", "A:b@c+d=e", "0", "x" * MODEL_ID_MAX_CHARS])
def test_ids_that_fit(model_id):
    assert model_id_problem(model_id) is None and is_model_id(model_id)


@pytest.mark.parametrize("model_id, reason", [
    ("", "empty"), ("x" * (MODEL_ID_MAX_CHARS + 1), f"at most {MODEL_ID_MAX_CHARS}"), ("a/b", "'/'"),
    ("..", "starts with '.'"), (".hidden", "starts with '.'"), ("_private", "starts with '_'"),
    ("ok\n", "'\\n'"), ("nul\x00", "'\\x00'"), ("ｆｕｌｌ", "'ｆ'"), ("٣", "'٣'"),
    *REFUSED.items(),
])
def test_ids_that_do_not_fit_say_why(model_id, reason):
    problem = model_id_problem(model_id)
    assert problem is not None and reason in problem and not is_model_id(model_id)


@given(st.text(max_size=MODEL_ID_MAX_CHARS + 5))
@settings(max_examples=500, deadline=None)
def test_the_grammar_is_the_api_pattern(text):
    """The Python check and the pattern FastAPI enforces (pydantic's engine) agree on any text."""
    from typing import Annotated

    from pydantic import Field, TypeAdapter, ValidationError

    adapter = TypeAdapter(Annotated[str, Field(pattern=MODEL_ID_PATTERN)])
    try:
        adapter.validate_python(text)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == is_model_id(text)


def _write_model_file(directory, name: str, body: str = MODELS["coin"]) -> None:
    (directory / f"{name}.py").write_text(
        MODEL_HEADER + "\nclass Model(UpDownModel):\n    def predict(self, subject, resolve_horizon_seconds, step_seconds):\n"
        + body + "\n")


def test_discovery_refuses_a_file_whose_name_is_not_an_id(tmp_path, caplog):
    models = write_models(tmp_path / "models", ["coin"])
    for name in REFUSED:
        _write_model_file(models, name)
    (models / "bad package").mkdir()
    (models / "bad package" / "__init__.py").write_text("")
    (models / "_helper.py").write_text("")  # private, ignored as before: not a refusal
    found, refused = scan_models(models)
    assert list(found) == ["coin"]
    assert set(refused) == {f"{name}.py" for name in REFUSED} | {"bad package"}
    for name, shown in REFUSED.items():
        assert shown in refused[f"{name}.py"]
    assert all(f"model {name!r}" in caplog.text for name in refused)


def test_the_operator_sees_refused_models_in_doctor(tmp_path, monkeypatch):
    import competitions.btc_updown.definitions as btc

    from crunch_assets.scaffold.doctor import doctor_competition

    models = write_models(tmp_path / "models", ["coin"])
    _write_model_file(models, "coin v2")
    monkeypatch.setattr(btc, "MODELS_DIR", models)
    monkeypatch.delenv("CRUNCH_BTC_UPDOWN_RUNNER", raising=False)
    report = doctor_competition("btc_updown")
    problems = [p for p in report.problems if "coin v2" in str(p)]
    assert len(problems) == 1 and "' '" in str(problems[0]) and "rename" in str(problems[0])


def _model_ids_with_predictions(url: str) -> set[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        found = set(connection.execute(sa.text("SELECT DISTINCT model_id FROM crunch.predictions")).scalars())
    engine.dispose()
    return found


def test_a_model_the_api_cannot_serve_is_never_registered_and_every_paid_model_gets_its_proof(
        clean_database, tmp_path):
    """Today's bug: `coin v2.py` ran, was ranked and paid, and every per-model endpoint answered
    422 for it. Now it is refused at registration (visible on the registry's materialization) and
    never called; every model that is paid gets its scores, export, breakdown and proof."""
    from crunch_assets.api import ReportCompetition, create_app
    from resources.payout_accounts import PayoutAccounts
    from resources.store.database import CrunchDatabase

    models = write_models(tmp_path / "models", ["oracle", "coin"])
    (models / "oracle.py").rename(models / "oracle-v2.1.py")  # dots and a hyphen fit
    for name in REFUSED:
        _write_model_file(models, name)
    spec = spec_for(START, checkpoint_interval_seconds=3600)
    accounts = PayoutAccounts(crunch_pubkey="CrunchTestPubkey1111111111111111111111111111")
    defs = competition(spec, models, payout_accounts=accounts)
    keys = ChainKeys.for_slug(spec.slug)
    instance = dg.DagsterInstance.ephemeral()

    registry = dg.materialize(chain_assets(defs, [keys.model_registry]), resources=defs.resources, instance=instance)
    assert registry.success
    metadata = instance.get_latest_materialization_event(keys.model_registry).asset_materialization.metadata
    assert metadata["models"].value == 2
    assert sorted(r.data["model_id"] for r in metadata["registry"].records) == ["coin", "oracle-v2.1"]
    refused = {r.data["name"]: r.data["reason"] for r in metadata["refused_models"].records}
    assert set(refused) == {f"{name}.py" for name in REFUSED}
    assert "' '" in refused["coin v2.py"] and "'è'" in refused["modèle.py"]

    assert materialize_hours(defs, spec, ["feed_records"], START, START + timedelta(hours=1), instance=instance).success
    assert materialize_hours(defs, spec, ["predictions", "scores"], START, START, instance=instance).success
    for name in ("snapshots", "leaderboard"):
        assert dg.materialize(chain_assets(defs, [getattr(keys, name)]), resources=defs.resources,
                              partition_key=START.strftime("%Y-%m-%d"), instance=instance).success
    assert dg.materialize(chain_assets(defs, [keys.emission_checkpoints]), resources=defs.resources,
                          partition_key=START.strftime("%Y-%m-%d-%H:%M"), instance=instance).success
    assert _model_ids_with_predictions(clean_database) == {"coin", "oracle-v2.1"}

    app = create_app([ReportCompetition(spec, accounts, CrunchDatabase(url=clean_database))], api_token=None, read_env=False)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        checkpoint = client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"][0]
        paid = {row["model_id"] for row in checkpoint["reward_split"]}
        assert paid == {"coin", "oracle-v2.1"}
        cycle_at = quote((START + timedelta(minutes=5)).isoformat())
        for model_id in paid:
            path = quote(model_id, safe="")
            assert client.get(f"/competitions/btc_updown/models/{path}/scores").status_code == 200
            export = client.get(f"/competitions/btc_updown/models/{path}/export?start={quote(START.isoformat())}"
                                f"&end={quote((START + timedelta(hours=1)).isoformat())}")
            assert export.status_code == 200 and model_id in export.text
            base = f"/competitions/btc_updown/checkpoints/{checkpoint['id']}/models/{path}"
            assert client.get(f"{base}/breakdown").json()["model_id"] == model_id
            proof = client.get(f"{base}/proof?cycle_at={cycle_at}")
            assert proof.status_code == 200, proof.text
            assert proof.json()["verified"] is True and proof.json()["merkle_root"] == checkpoint["merkle_root"]
        for name in REFUSED:  # what the API answers for such an id: why it could never be served
            assert client.get(f"/competitions/btc_updown/models/{quote(name, safe='')}/scores").status_code == 422


def test_an_orchestrator_announcement_with_an_unservable_id_is_ignored(orchestrator, start_node, open_session):  # noqa: F811
    good = start_node("m-1", AnsweringModel())
    bad = start_node("m 2", AnsweringModel())
    orchestrator.announce(good.announcement(), bad.announcement())
    assert [m.model_id for m in runner_for(orchestrator).list_models()] == ["m-1"]
    session = open_session()
    from tests.test_orchestrator_model_runner import PREDICT, TICK

    results = session.run_cycle([TICK, PREDICT], timeout_seconds=5)
    assert list(results) == ["m-1"] and [m.model_id for m in session.models()] == ["m-1"]
    assert bad.received_calls == []

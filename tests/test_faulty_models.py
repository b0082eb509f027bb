"""Participants' models that raise, hang, kill their process or answer garbage become FAILED
predictions with their reason, scored at the failure value, while everyone else is scored."""

import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from crunch_assets.keys import ChainKeys
from crunch_assets.run_config import as_of_run_config
from crunch_assets.replay import chain_assets

QUICKSTARTERS = Path(__file__).resolve().parents[1] / "competitions" / "btc_updown" / "models"
START = datetime(2026, 11, 2, tzinfo=timezone.utc)

BAD_MODELS = {
    "raises": "def predict(self, subject, resolve_horizon_seconds, step_seconds):\n        raise RuntimeError('model bug')",
    "hangs": "def predict(self, subject, resolve_horizon_seconds, step_seconds):\n        import time; time.sleep(30)",
    "dies": "def predict(self, subject, resolve_horizon_seconds, step_seconds):\n        import os; os._exit(7)",
    "garbage": "def predict(self, subject, resolve_horizon_seconds, step_seconds):\n        return {'p_up': 'very high'}",
}


@pytest.fixture
def models_dir(tmp_path) -> Path:
    directory = tmp_path / "models"
    shutil.copytree(QUICKSTARTERS, directory, ignore=shutil.ignore_patterns("__pycache__"))
    for name, method in BAD_MODELS.items():
        (directory / f"{name}.py").write_text(
            "from competitions.btc_updown.model_base import UpDownModel\n\n\n"
            f"class Model(UpDownModel):\n    {method}\n"
        )
    return directory


def test_faulty_models_fail_alone(clean_database, models_dir):
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.feeds.synthetic import SyntheticFeed
    from resources.model_runners.local import LocalModelRunner

    spec = replace(SPEC, start=START)
    runner = LocalModelRunner(models_dir=str(models_dir), call_timeout_seconds=1.0)
    defs = build_definitions(spec=spec, feed=SyntheticFeed(), model_runner=runner, automation_running=False)
    keys = ChainKeys.for_slug(spec.slug)
    assets = {key: chain_assets(defs, [key])[0] for key in (keys.feed_records, keys.predictions, keys.scores)}
    as_of = START + timedelta(minutes=2)  # three cycles: 00:00, 00:01, 00:02
    partition = "2026-11-02-00:00"
    ops = [ChainKeys.op_name(k) for k in (keys.feed_records, keys.predictions)]
    result = dg.materialize(
        [assets[keys.feed_records], assets[keys.predictions]], resources=defs.resources,
        partition_key=partition, run_config=as_of_run_config(ops, as_of),
    )
    assert result.success
    metadata = result.asset_materializations_for_node(ChainKeys.op_name(keys.predictions))[0].metadata
    assert metadata["cycles_run"].value == 3
    assert metadata["predictions_made"].value == 9 and metadata["predictions_failed"].value == 12
    # the feed must cover the last horizon before scoring
    dg.materialize([assets[keys.feed_records]], resources=defs.resources, partition_key=partition,
                   run_config=as_of_run_config(ops[:1], as_of + timedelta(minutes=1)))
    scored = dg.materialize([assets[keys.scores]], resources=defs.resources, partition_key=partition,
                            run_config=as_of_run_config([ChainKeys.op_name(keys.scores)], as_of + timedelta(minutes=1)))
    assert scored.success

    engine = sa.create_engine(clean_database)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT p.model_id, p.status, p.status_reason, s.value, s.success, s.failed_reason "
            "FROM crunch.predictions p JOIN crunch.scores s ON s.prediction_id = p.id ORDER BY p.cycle_at"
        )).fetchall()
    engine.dispose()
    by_model: dict[str, list] = {}
    for row in rows:
        by_model.setdefault(row.model_id, []).append(row)
    assert set(by_model) == {"mean_reversion", "trend_following", "gaussian_density", *BAD_MODELS}
    assert all(len(v) == 3 for v in by_model.values())
    for good in ("mean_reversion", "trend_following", "gaussian_density"):
        assert all(r.status == "PENDING" and r.success and 0.0 <= r.value <= 1.0 for r in by_model[good])  # answered, scored
    for bad in BAD_MODELS:
        assert all(r.status == "FAILED" and not r.success and r.value == 0.0 for r in by_model[bad])
        assert all(r.failed_reason.startswith("FAILED: ") for r in by_model[bad])
    assert all("RuntimeError: model bug" in r.status_reason for r in by_model["raises"])
    assert all(r.status_reason.startswith("timeout:") for r in by_model["hangs"])
    assert all("exited with code 7" in r.status_reason for r in by_model["dies"])
    assert all("invalid output: p_up must be a finite number" in r.status_reason for r in by_model["garbage"])


def test_a_model_cannot_publish_the_coordinators_secrets(clean_database, tmp_path, monkeypatch):
    """Issue: a model process received the coordinator's environment and returned it as its
    output, which the public /predictions served (CRUNCH_API_TOKEN, the database URL). Now what it
    returns (here: the message of its exception, a prediction's public status_reason) is stored as
    before, and holds nothing of the coordinator's."""
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.feeds.synthetic import SyntheticFeed
    from resources.model_runners.local import LocalModelRunner

    secrets = {"CRUNCH_API_TOKEN": "token-that-must-not-leak-1f3a", "CRUNCH_DATABASE_URL": clean_database,
               "CRUNCH_ALERT_WEBHOOK_URL": "https://hooks.example/must-not-leak-77c2"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    models = tmp_path / "models"
    models.mkdir()
    (models / "leaks.py").write_text(
        "import os\nfrom competitions.btc_updown.model_base import UpDownModel\n\n\n"
        "class Model(UpDownModel):\n"
        "    def predict(self, subject, resolve_horizon_seconds, step_seconds):\n"
        "        raise ValueError(' '.join(f'{k}={v}' for k, v in sorted(os.environ.items())))\n"
    )
    spec = replace(SPEC, start=START)
    runner = LocalModelRunner(models_dir=str(models), call_timeout_seconds=5.0)
    defs = build_definitions(spec=spec, feed=SyntheticFeed(), model_runner=runner, automation_running=False)
    keys = ChainKeys.for_slug(spec.slug)
    assets = [chain_assets(defs, [key])[0] for key in (keys.feed_records, keys.predictions)]
    ops = [ChainKeys.op_name(k) for k in (keys.feed_records, keys.predictions)]
    result = dg.materialize(assets, resources=defs.resources, partition_key="2026-11-02-00:00",
                            run_config=as_of_run_config(ops, START))
    assert result.success
    engine = sa.create_engine(clean_database)
    with engine.connect() as connection:
        stored = connection.execute(sa.text(
            "SELECT status, status_reason, meta::text FROM crunch.predictions WHERE model_id = 'leaks'")).fetchall()
    engine.dispose()
    assert len(stored) == 1
    text = " ".join(str(value) for value in stored[0])
    assert stored[0].status == "FAILED" and "PYTHONPATH=" in text  # it did publish its environment: the contract's
    for value in secrets.values():
        assert value not in text

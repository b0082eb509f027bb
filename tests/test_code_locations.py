"""Every code location in workspace.yaml loads, and the CLI materializes against the embedded
PostgreSQL, through dagster.yaml's storage."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _workspace_modules() -> list[str]:
    workspace = yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text())
    return [entry["python_module"]["module_name"] for entry in workspace["load_from"]]


@pytest.mark.parametrize("module_name", _workspace_modules())
def test_every_code_location_loads(module_name):
    import importlib

    module = importlib.import_module(module_name)
    dg.Definitions.validate_loadable(module.defs)
    slug = module_name.split(".")[-2]
    keys = module.defs.resolve_asset_graph().get_all_asset_keys()
    assert keys and all(key.path[0] == slug for key in keys)  # keys are global: prefixed with the slug
    names = [s.name for s in module.defs.sensors] + [s.name for s in module.defs.schedules]
    assert names and all(name.startswith(f"{slug}__") for name in names)


def test_workspace_validates_with_the_dagster_cli(database_url, tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT, env={**os.environ, "DAGSTER_HOME": str(_dagster_home(tmp_path))},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def _dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


def test_cli_materialize_against_the_embedded_database(clean_database, tmp_path):
    home = _dagster_home(tmp_path)
    partition = "2026-11-01-00:00"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "asset", "materialize",
         "-m", "competitions.btc_updown.definitions",
         "--select", "btc_updown/feed_records,btc_updown/predictions", "--partition", partition],
        cwd=PROJECT_ROOT, env={**os.environ, "DAGSTER_HOME": str(home)},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    engine = sa.create_engine(clean_database)
    with engine.connect() as connection:
        predictions = connection.execute(sa.text(
            "SELECT count(*), count(DISTINCT cycle_at), count(DISTINCT model_id) FROM crunch.predictions"
        )).one()
        candles = connection.execute(sa.text("SELECT count(*) FROM crunch.feed_records")).scalar()
    engine.dispose()
    assert tuple(predictions) == (180, 60, 3)
    assert candles >= 60
    # the run is recorded in the Dagster instance that dagster.yaml put on the same PostgreSQL
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["btc_updown", "predictions"]))
    assert event is not None and event.dagster_event.partition == partition
    assert event.asset_materialization.metadata["cycles_run"].value == 60

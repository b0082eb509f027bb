"""The demo's settings file (<data dir>/demo.env), read by `crunch-dagster` in a second shell:
it carries the demo's settings only, the shell always wins, and it never reaches another
database. The end-to-end case (the README's commands against a running demo) is in
tests/test_planned_stop.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crunch_assets.demo_settings import (
    DemoSettingsError,
    demo_settings_path,
    load_demo_settings,
    read_demo_settings,
    write_demo_settings,
)

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_ENVIRON = {"CRUNCH_BTC_UPDOWN_START": "2026-12-06T18:00:00+00:00", "CRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY": "DemoCrunch1",
                "CRUNCH_BTC_UPDOWN_COMPUTE_PROVIDER_PUBKEY": "DemoCompute1", "CRUNCH_API_TOKEN": "not-a-demo-setting",
                "CRUNCH_BTC_UPDOWN_MODEL_SANDBOX": "off"}


def test_the_file_holds_the_demos_settings_only_and_the_shell_wins(tmp_path):
    path = write_demo_settings(tmp_path, ["btc_updown", "crypto_density"], DEMO_ENVIRON)
    assert read_demo_settings(path) == {k: v for k, v in DEMO_ENVIRON.items()
                                        if k.endswith(("_START", "_PUBKEY"))}  # no token, no sandbox switch
    shell = {"CRUNCH_DATA_DIR": str(tmp_path), "CRUNCH_BTC_UPDOWN_START": "2026-01-01T00:00:00+00:00",
             "CRUNCH_COMPUTE_PROVIDER_PUBKEY": "SharedCompute"}
    loaded = load_demo_settings(shell)
    assert loaded == {"CRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY": "DemoCrunch1"}  # the competition's own and the shared one win
    assert shell["CRUNCH_BTC_UPDOWN_START"] == "2026-01-01T00:00:00+00:00"
    assert "CRUNCH_BTC_UPDOWN_COMPUTE_PROVIDER_PUBKEY" not in shell


def test_an_external_database_or_another_data_dir_never_gets_the_demos_settings(tmp_path):
    write_demo_settings(tmp_path, ["btc_updown"], DEMO_ENVIRON)
    assert load_demo_settings({"CRUNCH_DATA_DIR": str(tmp_path), "CRUNCH_DATABASE_URL": "postgresql://db/x"}) == {}
    assert load_demo_settings({"CRUNCH_DATA_DIR": str(tmp_path / "elsewhere")}) == {}


@pytest.mark.parametrize("line", ["CRUNCH_DATABASE_URL=postgresql://evil/x", "CRUNCH_BTC_UPDOWN_MODEL_SANDBOX=off",
                                  "CRUNCH_CRUNCH_PUBKEY=Shared", "export CRUNCH_BTC_UPDOWN_START=x",
                                  "CRUNCH_BTC_UPDOWN_START='unterminated", "CRUNCH_BTC_UPDOWN_START=two words"])
def test_any_other_line_is_refused_by_its_line_number(tmp_path, line):
    demo_settings_path(tmp_path).write_text(f"# a comment\nCRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY=DemoCrunch1\n{line}\n")
    with pytest.raises(DemoSettingsError, match=r"demo\.env:3: "):
        load_demo_settings({"CRUNCH_DATA_DIR": str(tmp_path)})


def test_the_command_line_refuses_a_wrong_file_by_name_and_serve_never_reads_it(tmp_path):
    demo_settings_path(tmp_path).write_text("CRUNCH_DATABASE_URL=postgresql://evil/x\n")
    env = {"PATH": "/usr/bin:/bin", "CRUNCH_DATA_DIR": str(tmp_path)}
    cli = [sys.executable, "-m", "crunch_assets.cli"]
    refused = subprocess.run([*cli, "checkpoints", "list", "btc_updown"], env=env, cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "demo.env:1: expected CRUNCH_<SLUG>_<NAME>=value" in refused.stderr, refused.stderr
    serve = subprocess.run([*cli, "serve", "--help"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert serve.returncode == 0 and serve.stderr == "", serve.stderr

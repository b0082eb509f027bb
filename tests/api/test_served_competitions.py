"""Which competitions `crunch-dagster api` serves: every competition of the workspace (before: only
btc_updown, so crypto_density and a scaffolded competition had no API and no page: 404)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from crunch_assets.api.competitions import WorkspaceError, workspace_slugs

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_the_workspace_names_the_competitions(tmp_path):
    assert workspace_slugs(PROJECT_ROOT / "workspace.yaml") == ["btc_updown", "crypto_density"]
    other = tmp_path / "workspace.yaml"
    other.write_text("load_from:\n  - python_module:\n      module_name: competitions.btc_updown.definitions\n"
                     "      location_name: btc_updown\n  - python_module:\n      module_name: tools.housekeeping\n"
                     "      location_name: housekeeping\n")
    with pytest.raises(WorkspaceError, match="code location 'housekeeping' is not a competition module"):
        workspace_slugs(other)
    with pytest.raises(WorkspaceError, match="missing.yaml"):
        workspace_slugs(tmp_path / "missing.yaml")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_api_serves_every_competition_of_the_workspace(database_url, tmp_path):
    port = _free_port()
    from tests.api.conftest import role_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUNCH_")}
    env.update(role_env(database_url))
    env["CRUNCH_DATA_DIR"] = str(tmp_path)
    server = subprocess.Popen([str(BIN / "crunch-dagster"), "api", "--port", str(port), "--log-level", "warning"],
                              cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:  # polling for readiness with a deadline
            assert server.poll() is None, server.stderr.read()
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.5)
        listed = httpx.get(f"{url}/competitions").json()
        assert listed["default"] == "btc_updown"
        assert [c["slug"] for c in listed["competitions"]] == ["btc_updown", "crypto_density"]
        page = httpx.get(f"{url}/page/crypto_density")
        assert page.status_code == 200 and "lower is better" in page.text
        assert 'href="/page/btc_updown"' in page.text and 'aria-current="page" class="current">crypto_density' in page.text
        assert httpx.get(f"{url}/competitions/crypto_density/reports/checkpoints").status_code == 200
        assert [c["crunch_id"] for c in httpx.get(f"{url}/info").json()["competitions"]] == ["btc_updown", "crypto_density"]
    finally:
        server.terminate()
        server.wait(timeout=60)

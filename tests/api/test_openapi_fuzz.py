"""schemathesis over the report API's OpenAPI schema: every operation, bounded generated examples
(valid and invalid), sent over real HTTP with the operator token to a server on a copy of the
replayed store. No response may be a server error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import auth, serve

EXAMPLES_PER_OPERATION = 12


@pytest.fixture(scope="module")
def fuzz_server(module_database_url):
    with serve(module_database_url) as server:
        yield server


def test_the_schema_lists_every_operation(fuzz_server):
    paths = httpx.get(f"{fuzz_server.url}/openapi.json").json()["paths"]
    reference = ["/leaderboard", "/models", "/models/global", "/models/params", "/predictions", "/feeds", "/snapshots",
                 "/checkpoints", "/checkpoints/{checkpoint_id}/emission", "/checkpoints/{checkpoint_id}/emission/cli-format",
                 "/emissions/latest", "/schema", "/checkpoints/{checkpoint_id}/confirm", "/checkpoints/{checkpoint_id}/status",
                 "/checkpoints/{checkpoint_id}/models/{model_id}/breakdown",
                 "/checkpoints/{checkpoint_id}/models/{model_id}/proof", "/models/{model_id}/export", "/lag"]
    for path in reference:
        assert "/reports" + path in paths and "/competitions/{slug}" + path in paths, path
    assert "/health" in paths
    assert paths["/reports/checkpoints/{checkpoint_id}/confirm"]["post"]["security"] == [{"HTTPBearer": []}]


def test_no_operation_answers_with_a_server_error(fuzz_server, tmp_path):
    """The schemathesis CLI as a subprocess (its pytest plugin does not run under pytest 9): the
    schema's examples, the coverage phase (boundary and invalid values of every parameter) and
    generated examples for every operation, all with the operator token."""
    command = [
        str(Path(sys.executable).with_name("st")), "run", f"{fuzz_server.url}/openapi.json",
        "--checks", "not_a_server_error", "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(EXAMPLES_PER_OPERATION), "--workers", "1", "--seed", "20261201",
        "--header", f"Authorization: {auth()['Authorization']}", "--request-timeout", "120",
        "--suppress-health-check", "all", "--report-junit-path", str(tmp_path / "junit.xml"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=tmp_path,  # its cache stays out of the checkout
                            env={**os.environ, "NO_COLOR": "1"})
    summary = result.stdout[-6000:]
    (tmp_path / "schemathesis.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, summary + result.stderr[-2000:]
    junit = (tmp_path / "junit.xml").read_text()
    cases = re.findall(r"<testcase ", junit)
    assert len(cases) >= 50, summary  # every operation of both prefixes was exercised
    assert "<failure" not in junit and "<error" not in junit, summary

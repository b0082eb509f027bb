"""The production files load and agree: deploy/dagster.yaml makes a real instance with the
container launcher installed, its workspace serves every competition of workspace.yaml over gRPC,
and the compose file runs a code server for each; the supervised deployment's generated files."""

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from sqlalchemy.engine import make_url

from crunch_assets.serve import ServeConfigError, ServeOptions, programs, read_code_locations, write_serve_files

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = PROJECT_ROOT / "deploy"


def _competitions() -> set[str]:
    return {location.name for location in read_code_locations(PROJECT_ROOT / "workspace.yaml")}


def test_the_production_instance_loads_with_the_container_launcher(database_url, tmp_path, monkeypatch):
    pytest.importorskip("dagster_docker", reason="the deploy extra is not installed: pip install -e '.[deploy]'")
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_docker import DockerRunLauncher

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    # Dagster's storage connects as its own role, from the environment (conftest set the test server's)
    assert make_url(os.environ["CRUNCH_DAGSTER_DATABASE_URL"]).username == "crunch_dagster"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_launcher, DockerRunLauncher)
        assert instance.run_launcher.networks == ["crunch"]
        # a run connects as the engine; the migrations' URL never reaches a run container
        assert {"CRUNCH_ENGINE_DATABASE_URL", "CRUNCH_DAGSTER_DATABASE_URL"} <= set(instance.run_launcher.env_vars)
        assert "CRUNCH_DATABASE_URL" not in instance.run_launcher.env_vars
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert limits == [{"key": "crunch/competition", "value": {"applyLimitPerUniqueValue": True}, "limit": 4}]
        # a dead live run is replaced by the cycle sensor: a resume would run beside the replacement
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_launcher.supports_check_run_worker_health and instance.run_launcher.supports_resume_run
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_storage.get_runs() is not None  # the storage really is that database
    # no secret is written in the file itself
    assert "postgresql://" not in (DEPLOY / "dagster.yaml").read_text()


def test_the_production_instance_needs_its_database_url(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.delenv("CRUNCH_DAGSTER_DATABASE_URL", raising=False)
    with pytest.raises(Exception, match="CRUNCH_DAGSTER_DATABASE_URL"):
        dg.DagsterInstance.from_config(str(home))


def test_every_competition_is_a_code_server_in_production():
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    served = {entry["grpc_server"]["location_name"]: entry["grpc_server"] for entry in workspace["load_from"]}
    assert set(served) == _competitions()
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for name, server in served.items():
        service = compose["services"][server["host"]]
        command = service["command"]
        assert command[command.index("-p") + 1] == str(server["port"]) and name in command
        assert "DAGSTER_CURRENT_IMAGE" in service["environment"]
    # only nginx publishes ports, on loopback unless told otherwise
    published = {name: svc["ports"] for name, svc in compose["services"].items() if svc.get("ports")}
    assert list(published) == ["nginx"] and all(port.startswith("${CRUNCH_PUBLIC_BIND:-127.0.0.1}:") for port in published["nginx"])
    assert "--read-only" in compose["services"]["webserver_read_only"]["command"]
    # the migrations' URL (deploy/migrate.env) goes to the migrate service only, which the code servers wait for
    readers = [name for name, svc in compose["services"].items() if "migrate.env" in str(svc.get("env_file", ""))]
    assert readers == ["migrate"] and compose["services"]["migrate"]["command"] == ["crunch-dagster", "migrate"]
    assert all(compose["services"][f"code_{name}"]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
               for name in served)
    assert not any(line.startswith("CRUNCH_DATABASE_URL=") for line in (DEPLOY / "crunch.env.example").read_text().splitlines())


def test_serve_writes_a_grpc_workspace_and_a_supervisor_config(tmp_path):
    options = ServeOptions(data_dir=tmp_path, webserver_port=3900, read_only_port=3901, code_server_base_port=4900,
                           api_port=8900, api_command="{bin}/crunch-dagster api --host {host} --port {port}")
    locations = write_serve_files(options)
    workspace = yaml.safe_load(options.workspace_file.read_text())
    assert [entry["grpc_server"]["location_name"] for entry in workspace["load_from"]] == [loc.name for loc in locations]
    conf = options.supervisord_conf.read_text()
    for program in ("db", "webserver", "webserver_read_only", "daemon", "api", *(f"code_{loc.name}" for loc in locations)):
        assert f"[program:{program}]" in conf
    assert "autorestart=true" in conf and f"stdout_logfile={tmp_path / 'logs'}" in conf
    assert (options.dagster_home / "dagster.yaml").read_text() == (PROJECT_ROOT / "dagster.yaml").read_text()
    assert "CRUNCH_DATABASE_URL" not in conf  # secrets stay in the environment
    without_db = programs(locations, ServeOptions(data_dir=tmp_path, embedded_database=False, api_port=None))
    assert "db" not in without_db and "api" not in without_db


def test_serve_rejects_a_workspace_it_cannot_serve(tmp_path):
    bad = tmp_path / "workspace.yaml"
    bad.write_text("load_from:\n  - grpc_server: {host: x, port: 1}\n")
    with pytest.raises(ServeConfigError, match="python_module and python_file"):
        read_code_locations(bad)
    bad.write_text("load_from: []\n")
    with pytest.raises(ServeConfigError, match="no code location"):
        read_code_locations(bad)
    with pytest.raises(ServeConfigError, match="no workspace file"):
        read_code_locations(tmp_path / "missing.yaml")


def test_the_cli_has_serve_and_db():
    from click.testing import CliRunner

    from crunch_assets.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and "supervisord" in result.output
    result = runner.invoke(main, ["db", "--help"])
    assert result.exit_code == 0


def test_nginx_fronts_the_report_api_in_production():
    """Every template nginx mounts has each of its placeholders set, and the API's upstream is the
    `api` service's port; the API leaves per-address limits to nginx."""
    import re

    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    nginx = compose["services"]["nginx"]
    templates = [volume.split(":")[0] for volume in nginx["volumes"] if volume.split(":")[0].endswith(".template")]
    assert "./nginx/api.conf.template" in templates
    for template in templates:
        for name in set(re.findall(r"\$\{(CRUNCH_\w+)\}", (DEPLOY / template).read_text())):
            assert name in nginx["environment"], (template, name)
    host, port = nginx["environment"]["CRUNCH_API_UPSTREAM"].split(":")
    command = compose["services"][host]["command"]
    assert command[:2] == ["crunch-dagster", "api"] and command[command.index("--port") + 1] == port
    assert command[command.index("--max-connections-per-client") + 1] == "0"
    listen = nginx["environment"]["CRUNCH_API_LISTEN"]
    assert any(p.endswith(f":{listen}:{listen}") for p in nginx["ports"])


# --- the report API of a served workspace reads the specs that workspace runs ----------------------

def test_serve_gives_the_api_the_served_workspace(tmp_path):
    workspace = tmp_path / "fast.yaml"
    workspace.write_text(f"load_from:\n  - python_file:\n      relative_path: {PROJECT_ROOT / 'bench' / 'chaos_competition.py'}\n"
                         "      location_name: btc_updown\n")
    api = programs(read_code_locations(workspace), ServeOptions(data_dir=tmp_path, workspace=workspace))["api"]["command"]
    assert api[1:2] == ["api"] and api[api.index("--workspace") + 1] == str(workspace)


def test_lag_of_a_served_workspace_reads_the_scopes_it_runs(tmp_path, clean_database):
    """`serve --workspace bench/...chaos_competition.py` runs btc_updown with 30 s cycles (scope
    BTC-60-30); its API used to load competitions/btc_updown (BTC-60-60), so /lag reported the
    cycles of a scope nobody runs (none) and ignored the stored ones. Real HTTP, real CLI."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from datetime import datetime, timedelta, timezone

    import requests

    from crunch_assets.api import load_report_competition
    from crunch_assets.cli.common import load_workspace_competitions
    from resources.store.database import CrunchDatabase
    from resources.store.rows import CycleWrite, InputRow

    workspace = tmp_path / "fast.yaml"
    workspace.write_text(f"load_from:\n  - python_file:\n      relative_path: {PROJECT_ROOT / 'bench' / 'chaos_competition.py'}\n"
                         "      location_name: btc_updown\n")
    assert [scope.key for scope in load_report_competition("btc_updown").spec.scopes] == ["BTC-60-60"]  # what it served
    [(_, spec)] = load_workspace_competitions(workspace)
    assert [scope.key for scope in spec.scopes] == ["BTC-60-30"]
    cycle_at = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=45)
    cycle_at -= timedelta(seconds=cycle_at.second % 30)
    CrunchDatabase().competition("btc_updown").write_cycles(
        [CycleWrite(InputRow("BTC-60-30", cycle_at, cycle_at + timedelta(seconds=60), {}, spec.scopes[0].as_dict()), [])], [])

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    from tests.api.conftest import role_env

    env = {**os.environ, **role_env(clean_database)}
    server = subprocess.Popen([str(Path(sys.executable).with_name("crunch-dagster")), "api", "--port", str(port),
                               "--workspace", str(workspace), "--log-level", "warning"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                lag = requests.get(f"http://127.0.0.1:{port}/competitions/btc_updown/lag", timeout=10)
                break
            except requests.ConnectionError:
                assert server.poll() is None, server.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the API did not answer"
                time.sleep(0.2)
        assert lag.status_code == 200, lag.text
        last_cycle = lag.json()["last_cycle"]
        assert list(last_cycle) == ["BTC-60-30"]
        assert datetime.fromisoformat(last_cycle["BTC-60-30"]["at"]) == cycle_at
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0  # SIGTERM: a clean stop

"""The production topology on loopback, with real processes: `crunch-dagster serve` runs the code
server (gRPC), a separate webserver, a read-only webserver and the daemon under supervisord, with
the production instance config (deploy/dagster.yaml: QueuedRunCoordinator with a limit per
competition, run monitoring, run retries) on the embedded PostgreSQL and the default launcher in
place of the container one. A cycle runs end to end through the queue; the read-only UI refuses a
launch the operators' UI accepts; nginx asks for the right password; a killed live run worker is
failed by run monitoring, replaced by the cycle sensor and alerted to a webhook; the lag checks
are recorded without runs."""

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from chaos import Deployment, Store, wait_for  # noqa: E402
from resources.database_url import DATABASE_ENV_VARS  # noqa: E402
from tests.fakes.webhook import Webhook  # noqa: E402
from tests.ports import deployment_ports, free_ports  # noqa: E402

pytestmark = pytest.mark.system

CYCLE_SECONDS = 30  # 20 s cycles on 60 s candles are refused at load (one cycle in three unresolvable)
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on UnauthorizedError { message } ... on PythonError { message } } }"""
REGISTRY_JOB = {"repositoryLocationName": "btc_updown", "repositoryName": "__repository__", "jobName": "btc_updown__model_registry_job"}


def production_instance_config(path: Path) -> Path:
    """deploy/dagster.yaml with the embedded database and the default launcher (no Docker here)."""
    config = yaml.safe_load((PROJECT_ROOT / "deploy" / "dagster.yaml").read_text())
    config["storage"]["custom"]["config"] = {}
    config["run_launcher"] = {"module": "resources.run_launcher", "class": "CrunchRunLauncher"}
    config["compute_logs"]["config"] = {}
    config["run_monitoring"].update(max_resume_run_attempts=0, poll_interval_seconds=5)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def deployment(webhook):
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-topology-"))
    data_dir.chmod(0o755)
    instance_config = production_instance_config(data_dir / "production_dagster.yaml")
    previous = {k: os.environ.get(k) for k in ("CRUNCH_ALERT_WEBHOOK_URL",)}
    os.environ["CRUNCH_ALERT_WEBHOOK_URL"] = webhook.url
    ports = deployment_ports()
    deployment = Deployment(data_dir, CYCLE_SECONDS, ports["webserver"], ports=ports)
    deployment.extra_args = ["--instance-config", str(instance_config)]
    deployment.start()
    store = Store(deployment.pgdata)
    try:
        wait_for("the first stored cycle", store.latest_stored_cycle, 300)
        wait_for("the UI", lambda: deployment.http_ok(deployment.ports["webserver"]), 300)
        wait_for("the read-only UI", lambda: deployment.http_ok(deployment.ports["webserver_read_only"]), 300)
        yield deployment, store
    finally:
        store.dispose()
        deployment.stop()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(data_dir, ignore_errors=True)


def graphql(port: int, query: str, variables: dict | None = None, **kwargs) -> dict:
    response = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}},
                             timeout=60, **kwargs)
    response.raise_for_status()
    return response.json()


def test_code_locations_are_served_over_grpc_to_a_separate_webserver(deployment):
    deployment, _ = deployment
    workspace = yaml.safe_load((deployment.data_dir / "serve" / "workspace.yaml").read_text())
    assert workspace["load_from"] == [{"grpc_server": {"host": "127.0.0.1", "port": deployment.ports["code"], "location_name": "btc_updown"}}]
    status = deployment.supervisor_status()
    assert {name for name, (state, _) in status.items() if state == "RUNNING"} >= {
        "db", "code_btc_updown", "webserver", "webserver_read_only", "daemon"}
    pids = {status[name][1] for name in ("code_btc_updown", "webserver", "daemon")}
    assert len(pids) == 3  # three processes, not one `dagster dev`
    answer = graphql(deployment.port, "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                                      "locationOrLoadError { __typename } } } } }")
    entries = answer["data"]["workspaceOrError"]["locationEntries"]
    assert [(e["name"], e["loadStatus"], e["locationOrLoadError"]["__typename"]) for e in entries] == [
        ("btc_updown", "LOADED", "RepositoryLocation")]
    # health endpoints: the webserver's, and the daemon's heartbeat check
    assert deployment.http_ok(deployment.port, "/server_info")
    env = {**os.environ, "DAGSTER_HOME": str(deployment.data_dir / "serve" / "dagster_home"),
           "CRUNCH_DATA_DIR": str(deployment.data_dir)}
    for name in DATABASE_ENV_VARS:  # the deployment's own embedded server, as its programs use it
        env.pop(name, None)
    liveness = subprocess.run([str(Path(sys.executable).with_name("dagster-daemon")), "liveness-check"],
                              env=env, capture_output=True, text=True, timeout=120)
    assert liveness.returncode == 0, liveness.stdout + liveness.stderr


def test_a_cycle_runs_end_to_end_through_the_run_queue(deployment):
    deployment, store = deployment
    started = datetime.now(timezone.utc)
    wait_for("a cycle stored after the test began", lambda: (c := store.latest_stored_cycle()) and c >= started, 180)
    rows = store.query("SELECT count(*), count(DISTINCT model_id) FROM crunch.predictions WHERE cycle_at = :c",
                       c=store.latest_stored_cycle())
    assert rows[0] == (3, 3)
    wait_for("scores", lambda: (store.query("SELECT count(*) FROM crunch.scores") or [(0,)])[0][0] > 0, 240)
    # every run went through the QueuedRunCoordinator and carries its competition's tag; the
    # cycles ran in live window runs (one per hour, not one per cycle)
    enqueued = store.query("SELECT count(DISTINCT e.run_id) FROM public.event_logs e JOIN public.runs r ON r.run_id = e.run_id "
                           "WHERE e.dagster_event_type = 'PIPELINE_ENQUEUED' AND r.pipeline_name = 'btc_updown__live_job'")[0][0]
    live_runs = store.query("SELECT count(*) FROM public.runs WHERE pipeline_name = 'btc_updown__live_job'")[0][0]
    assert 1 <= live_runs <= 3 and enqueued == live_runs  # this hour's, maybe the next one's, maybe a replacement
    tagged = store.query("SELECT count(*) FROM public.run_tags t JOIN public.runs r ON r.run_id = t.run_id "
                         "WHERE r.pipeline_name = 'btc_updown__live_job' AND t.key = 'crunch/competition' AND t.value = 'btc_updown'")[0][0]
    assert tagged == live_runs
    assert store.query("SELECT count(*) FROM public.runs WHERE pipeline_name = 'btc_updown__cycle_job'")[0][0] == 0


def test_the_read_only_ui_refuses_a_launch_the_operators_ui_accepts(deployment):
    deployment, store = deployment
    refused = graphql(deployment.ports["webserver_read_only"], LAUNCH, {"params": {"selector": REGISTRY_JOB, "runConfigData": {}}})
    assert refused["data"]["launchRun"]["__typename"] == "UnauthorizedError", refused
    accepted = graphql(deployment.port, LAUNCH, {"params": {"selector": REGISTRY_JOB, "runConfigData": {}}})
    assert accepted["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", accepted
    run_id = accepted["data"]["launchRun"]["run"]["runId"]
    wait_for("the launched run to succeed", lambda: (store.query(
        "SELECT status FROM public.runs WHERE run_id = :r", r=run_id) or [("",)])[0][0] == "SUCCESS", 180)


def test_a_killed_live_run_worker_is_failed_replaced_and_alerted(deployment, webhook):
    """Run monitoring fails the run whose worker died; the cycle sensor (not Dagster's run retries,
    which would start a second live run) starts the window again; the failure is alerted."""
    deployment, store = deployment
    run_id = wait_for("a live run in flight", store.live_run_in_flight, 120, 0.1)
    pid = wait_for("its worker pid", lambda: store.run_worker_pid(run_id), 60, 0.1)
    os.kill(pid, 9)
    killed_at = datetime.now(timezone.utc)
    wait_for("run monitoring to fail the run", lambda: (store.query(
        "SELECT status FROM public.runs WHERE run_id = :r", r=run_id) or [("",)])[0][0] == "FAILURE", 120)
    replacement = wait_for("the cycle sensor's replacement", lambda: store.query(
        "SELECT run_id FROM public.run_tags WHERE key = 'dagster/run_key' AND value LIKE :k", k=f"%:after:{run_id}"), 120)
    wait_for("a cycle due after the kill stored", lambda: (c := store.latest_stored_cycle()) and c >= killed_at, 180)
    assert store.query("SELECT status FROM public.runs WHERE run_id = :r", r=replacement[0][0])[0][0] in ("STARTED", "SUCCESS")
    assert store.query("SELECT count(*) FROM public.run_tags WHERE key = 'dagster/parent_run_id' AND value = :r",
                       r=run_id)[0][0] == 0  # no retry beside the replacement
    wait_for("the alert", lambda: any(body.get("run_id") == run_id for body in webhook.bodies), 120)
    alert = next(body for body in webhook.bodies if body.get("run_id") == run_id)
    assert alert["competition"] == "btc_updown" and alert["job"] == "btc_updown__live_job"


def test_lag_checks_are_recorded_live_without_runs(deployment):
    deployment, store = deployment
    rows = wait_for("a lag verdict on the stored cycles", lambda: store.query(
        "SELECT run_id, execution_status FROM public.asset_check_executions "
        "WHERE check_name = 'cycles_on_time' AND execution_status = 'SUCCEEDED'"), 240)
    assert all(run_id in ("", None) for run_id, _ in rows)  # recorded by the lag sensor, no run
    names = {row[0] for row in store.query("SELECT DISTINCT check_name FROM public.asset_check_executions")}
    assert {"cycles_on_time", "scores_on_time", "checkpoints_on_time"} <= names
    assert store.query("SELECT count(*) FROM public.runs WHERE pipeline_name = '__ASSET_JOB'")[0][0] == 0


# --- nginx in front of both UIs (deploy/nginx/crunch.conf.template) --------------------------------

def _ssha(password: str) -> str:
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def _self_signed(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))


def render_nginx_template(text: str, values: dict[str, str]) -> str:
    """envsubst restricted to CRUNCH_* names, as the nginx image does with NGINX_ENVSUBST_FILTER."""
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    assert "${CRUNCH_" not in text
    return text


@pytest.fixture(scope="module")
def nginx(deployment):
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light; .ci/run installs it)")
    deployment, _ = deployment
    # nginx's workers read the password files as its unprivileged user, as in the nginx image
    root = Path(tempfile.mkdtemp(prefix="crunch-nginx-"))
    (root / "certs").mkdir()
    _self_signed(root / "certs")
    (root / "htpasswd.operators").write_text(f"alice:{_ssha('operator-secret')}\n")
    (root / "htpasswd.viewers").write_text(f"bob:{_ssha('viewer-secret')}\n")
    for path in (root, root / "certs"):
        path.chmod(0o755)
    for path in (root / "htpasswd.operators", root / "htpasswd.viewers"):
        path.chmod(0o644)
    ports = dict(zip(("operators", "viewers"), free_ports(2), strict=True))
    server = render_nginx_template((PROJECT_ROOT / "deploy" / "nginx" / "crunch.conf.template").read_text(), {
        "CRUNCH_OPERATORS_UPSTREAM": f"127.0.0.1:{deployment.port}",
        "CRUNCH_VIEWERS_UPSTREAM": f"127.0.0.1:{deployment.ports['webserver_read_only']}",
        "CRUNCH_OPERATORS_LISTEN": f"127.0.0.1:{ports['operators']}",
        "CRUNCH_VIEWERS_LISTEN": f"127.0.0.1:{ports['viewers']}",
        "CRUNCH_NGINX_DIR": str(root),
    })
    (root / "nginx.conf").write_text(
        f"worker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{\n access_log off;\n client_body_temp_path {root}/body;\n proxy_temp_path {root}/proxy;\n"
        f" fastcgi_temp_path {root}/fastcgi;\n uwsgi_temp_path {root}/uwsgi;\n scgi_temp_path {root}/scgi;\n"
        f"{server}\n}}\n"
    )
    process = subprocess.Popen([binary, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def answering():
        try:
            requests.get(f"https://127.0.0.1:{ports['viewers']}/server_info", verify=False, timeout=5)
            return True
        except requests.ConnectionError:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited: {process.stdout.read().decode()}") from None
            return False

    wait_for("nginx", answering, 30)
    yield ports
    process.terminate()
    process.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)


def test_nginx_lets_each_role_in_to_its_own_ui_only(nginx):
    import urllib3

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    operators, viewers = (f"https://127.0.0.1:{nginx[role]}" for role in ("operators", "viewers"))
    assert requests.get(f"{operators}/server_info", verify=False, timeout=30).status_code == 401
    assert requests.get(f"{viewers}/server_info", verify=False, timeout=30).status_code == 401
    assert requests.get(f"{operators}/server_info", auth=("bob", "viewer-secret"), verify=False, timeout=30).status_code == 401
    assert requests.get(f"{operators}/server_info", auth=("alice", "wrong"), verify=False, timeout=30).status_code == 401
    assert requests.get(f"{operators}/server_info", auth=("alice", "operator-secret"), verify=False, timeout=30).status_code == 200
    assert requests.get(f"{viewers}/server_info", auth=("bob", "viewer-secret"), verify=False, timeout=30).status_code == 200
    # a viewer who got in still cannot launch anything
    answer = requests.post(f"{viewers}/graphql", auth=("bob", "viewer-secret"), verify=False, timeout=60,
                           json={"query": LAUNCH, "variables": {"params": {"selector": REGISTRY_JOB, "runConfigData": {}}}}).json()
    assert answer["data"]["launchRun"]["__typename"] == "UnauthorizedError"

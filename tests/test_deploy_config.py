"""The production files load and agree: deploy/dagster.yaml makes a real instance with the
container launcher installed, its workspace serves every competition of workspace.yaml over gRPC,
and the compose file runs a code server for each; the supervised deployment's generated files.

deploy/crunch.env.example sets what each competition needs (every competition loads with it) and
every role's URL (the migrations' in deploy/migrate.env.example alone), the Docker launcher forwards
exactly what runs read and can launch with it; the runs and the report API share the directory of
published roots; the Helm values make an instance with dagster-k8s's K8sRunLauncher and the same
policy as deploy/dagster.yaml, a code server per competition, and use only keys the chart defines."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from sqlalchemy.engine import make_url

from crunch_assets.serve import ServeConfigError, ServeOptions, programs, read_code_locations, write_serve_files
from tests.ports import free_ports

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
    webserver, read_only, code, api = free_ports(4)  # written into the files only, never bound here
    options = ServeOptions(data_dir=tmp_path, webserver_port=webserver, read_only_port=read_only, code_server_base_port=code,
                           api_port=api, api_command="{bin}/crunch-dagster api --host {host} --port {port}")
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


# --- the environment an operator fills in: deploy/crunch.env.example ------------------------------

API_ONLY = {"CRUNCH_API_DATABASE_URL", "CRUNCH_API_TOKEN", "CRUNCH_API_ACTOR"}  # read by the report API alone
SENSORS_ONLY = {"CRUNCH_ALERT_WEBHOOK_URL"}  # posted by the code servers' run failure sensors
PER_COMPETITION = ("FEED", "RUNNER", "ORCHESTRATOR_CRUNCH_ID", "CRUNCH_PUBKEY")
# role -> (its variable, the login deploy/postgres/init-roles.sh creates for it)
ROLE_LOGINS = {"engine": ("CRUNCH_ENGINE_DATABASE_URL", "crunch_engine"), "api": ("CRUNCH_API_DATABASE_URL", "crunch_api"),
               "dagster": ("CRUNCH_DAGSTER_DATABASE_URL", "crunch_dagster")}


def env_example(name: str = "crunch.env.example") -> tuple[dict[str, str], set[str]]:
    """The variables set in an example environment file, and those only mentioned in a comment."""
    text = (DEPLOY / name).read_text()
    values = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", text, re.M))
    commented = set(re.findall(r"^#\s*([A-Z0-9_]+)=", text, re.M))
    return values, commented


def filled_in(values: dict[str, str]) -> dict[str, str]:
    """The example as an operator fills it in (CHANGE_ME replaced)."""
    return {key: value.replace("CHANGE_ME", "pw") for key, value in values.items()}


def test_the_environment_example_sets_what_every_competition_needs():
    values, _ = env_example()
    for slug in _competitions():
        prefix = f"CRUNCH_{slug.upper()}_"
        missing = [prefix + name for name in PER_COMPETITION if prefix + name not in values]
        assert not missing, f"crunch.env.example lacks {missing}"
    assert values["CRUNCH_DAGSTER_DATABASE_URL"].endswith("?options=-csearch_path%3Dpublic")
    assert {key for key, value in values.items() if "CHANGE_ME" in value} == {
        *(variable for variable, _ in ROLE_LOGINS.values()), *(f"CRUNCH_{slug.upper()}_CRUNCH_PUBKEY" for slug in _competitions())}


def test_every_role_has_its_url_and_login_and_only_migrate_has_the_owners():
    """docs/operations.md#database-roles: each part connects as its own role, the migrations' URL
    reaches the migrate step alone. Each URL names the login deploy/postgres/init-roles.sh creates
    for that role (with the compose secret of that name), on the compose database."""
    values, _ = env_example()
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    database = compose["services"]["postgres"]["environment"]
    init_roles = (DEPLOY / "postgres" / "init-roles.sh").read_text()
    created = set(re.search(r"^for role in ([a-z ]+); do$", init_roles, re.M).group(1).split())
    assert created == set(ROLE_LOGINS)
    for role, (variable, login) in ROLE_LOGINS.items():
        url = make_url(values[variable].replace("CHANGE_ME", "pw"))
        assert (url.username, url.host, url.port, url.database) == (login, "postgres", 5432, database["POSTGRES_DB"]), variable
        assert login == f"crunch_{role}" and f"{login}_password" in compose["services"]["postgres"]["secrets"]
    assert "CRUNCH_DATABASE_URL" not in values
    migrate, _ = env_example("migrate.env.example")
    assert set(migrate) == {"CRUNCH_DATABASE_URL"}
    owner = make_url(migrate["CRUNCH_DATABASE_URL"].replace("CHANGE_ME", "pw"))
    assert (owner.username, owner.host, owner.database) == (database["POSTGRES_USER"], "postgres", database["POSTGRES_DB"])
    # the role URLs of one file agree on the server and database (the API refuses them otherwise)
    assert len({(make_url(values[v]).host, make_url(values[v]).port, make_url(values[v]).database)
                for v, _ in ROLE_LOGINS.values()}) == 1


def test_the_runs_and_the_api_share_the_published_roots():
    """docs/operations.md "Published roots": the gate (the API) refuses a checkpoint whose root is
    not in the file the checkpoint's run appended to, so both must see the same directory. Each
    run container is a new container: without a shared volume every root would be published
    into a container deleted with its run, and the API would refuse every checkpoint."""
    values, _ = env_example()
    directory = values["CRUNCH_ROOT_PUBLICATION_DIR"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    launcher = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]
    assert "CRUNCH_ROOT_PUBLICATION_DIR" in launcher["env_vars"]

    def volume_at(mounts: list[str]) -> str | None:
        return next((mount.split(":")[0] for mount in mounts if mount.split(":")[1] == directory), None)

    in_runs = volume_at(launcher["container_kwargs"]["volumes"])
    in_api = volume_at(compose["services"]["api"].get("volumes", []))
    assert in_runs and in_runs == in_api, (in_runs, in_api)
    assert compose["volumes"][in_runs]["name"] == in_runs  # the run containers mount it by that name
    assert directory in (DEPLOY / "Dockerfile").read_text()  # created in the image, owned by its user


@pytest.mark.integration  # imports every code location in a subprocess
def test_every_competition_loads_with_the_example_environment():
    """What a code server and a run do first: import the competition with crunch.env's values. A
    setting missing or wrong (an orchestrator without its crunch id, a bad feed) fails here."""
    values, _ = env_example()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRUNCH_")}
    env.update(filled_in(values), CRUNCH_AUTOMATION="off", PYTHONPATH=str(PROJECT_ROOT))
    modules = [location.module for location in read_code_locations(PROJECT_ROOT / "workspace.yaml")]
    script = ("import importlib, json, sys\n"
              "from crunch_assets.settings import CompetitionSettings\n"
              "out = {}\n"
              "for module in sys.argv[1:]:\n"
              "    defs = importlib.import_module(module).defs\n"
              "    resources = defs.resources\n"
              "    out[module] = {k: type(v).__name__ for k, v in resources.items() if k in ('feed', 'model_runner')}\n"
              "print(json.dumps(out))\n")
    result = subprocess.run([sys.executable, "-c", script, *modules], env=env, cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    for module in modules:
        assert loaded[module] == {"feed": "BinanceFeed", "model_runner": "OrchestratorModelRunner"}, (module, loaded[module])


def test_the_docker_launcher_forwards_exactly_what_runs_read_and_can_launch(monkeypatch):
    """dagster-docker turns each listed name into the run container's variable, from the daemon's
    environment, and refuses the launch if one is unset: so each must be set in crunch.env."""
    pytest.importorskip("dagster_docker", reason="the deploy extra is not installed: pip install -e '.[deploy]'")
    from dagster._core.utils import parse_env_var

    values, commented = env_example()
    forwarded = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]["env_vars"]
    assert set(forwarded) == set(values) - API_ONLY - SENSORS_ONLY
    assert not set(forwarded) & commented
    for key in list(os.environ):
        if key.startswith("CRUNCH_"):
            monkeypatch.delenv(key)
    for key, value in filled_in(values).items():
        monkeypatch.setenv(key, value)
    assert dict(parse_env_var(name) for name in forwarded)["CRUNCH_BTC_UPDOWN_RUNNER"] == "orchestrator"


def test_compose_serves_every_competition_through_the_api_and_gives_every_service_the_environment():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    api = compose["services"]["api"]["command"]
    assert {api[i + 1] for i, part in enumerate(api) if part == "--slug"} == _competitions()
    for name, service in compose["services"].items():
        if name not in ("postgres", "nginx"):
            files = service["env_file"]
            assert files == "crunch.env" or (name == "migrate" and files == ["crunch.env", "migrate.env"]), name
    # the API connects as a role the migrations grant: it starts after them, as the code servers do
    assert compose["services"]["api"]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}


# --- Helm: deploy/helm/values.yaml -------------------------------------------------------------

HELM = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text()) if (DEPLOY / "helm" / "values.yaml").exists() else {}
# The keys the chart's values.schema.json defines for the sections the values set, copied from
# dagster-io/dagster helm/dagster/values.schema.json at commit bdb8547fab497826eeec292bc160b549a0a329ef
# (the chart is not on PyPI and its 1.13.27 tag could not be fetched here; those objects forbid any
# other key: "additionalProperties": false where marked *).
CHART_KEYS = {
    "": {"dagsterWebserver", "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret",
         "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets", "computeLogManager",
         "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox", "migrate", "telemetry", "serviceAccount",
         "global", "retention", "additionalInstanceConfig"},
    "postgresql": {"image", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword", "postgresqlDatabase",
                   "postgresqlParams", "postgresqlScheme", "service"},
    "dagster-user-deployments": {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    "deployment": {"name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
                   "deploymentNamespace", "port", "env", "envConfigMaps", "envSecrets", "annotations", "nodeSelector",
                   "affinity", "tolerations", "podSecurityContext", "securityContext", "resources", "livenessProbe",
                   "readinessProbe", "startupProbe", "labels", "volumeMounts", "volumes", "schedulerName",
                   "initContainers", "sidecarContainers"},
    "dagsterDaemon*": {"enabled", "image", "runCoordinator", "heartbeatTolerance", "env", "envConfigMaps", "envSecrets",
                       "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
                       "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe", "annotations",
                       "runMonitoring", "runRetries", "sensors", "schedules", "schedulerName", "volumeMounts", "volumes",
                       "initContainerResources"},
    "runCoordinator*": {"enabled", "type", "config"},
    "sensors": {"useThreads", "numWorkers", "numSubmitWorkers"},
    "telemetry*": {"enabled"},
    "global": {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName"},
}


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _snake_keys(mapping: dict) -> dict:
    return {_camel_to_snake(key): value for key, value in mapping.items()}


def chart_instance_config(values: dict, kubeconfig: Path) -> dict:
    """The dagster.yaml the chart writes from `values` for the sections they set, as its templates
    do (dagster-io/dagster helm/dagster/templates/configmap-instance.yaml and helpers/instance/
    _postgresql.tpl, _run-launcher.tpl, _run-coordinator.tpl): camelCase keys become the instance's
    snake_case ones; the release's own names stand in for the chart's."""
    postgresql = values["postgresql"]
    daemon = values["dagsterDaemon"]
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    postgres_db = {"username": postgresql["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
                   "hostname": postgresql["postgresqlHost"], "db_name": postgresql["postgresqlDatabase"],
                   "port": postgresql["service"]["port"], "params": postgresql.get("postgresqlParams", {})}
    monitoring = daemon["runMonitoring"]
    retention = values["retention"]
    return {
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage", "config": {"postgres_db": postgres_db}},
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": {
            "load_incluster_config": False, "kubeconfig_file": str(kubeconfig),  # the chart: in-cluster
            "job_namespace": "crunch", "image_pull_policy": k8s.get("imagePullPolicy", "Always"),
            "service_account_name": "crunch-dagster", "dagster_home": "/opt/dagster/dagster_home",
            "instance_config_map": "crunch-dagster-instance", "postgres_password_secret": values["global"]["postgresqlSecretName"],
            "env_secrets": [secret["name"] for secret in k8s.get("envSecrets", [])],
            "volume_mounts": k8s.get("volumeMounts", []), "volumes": k8s.get("volumes", [])}},
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": daemon["runCoordinator"]["type"],
                            "config": _snake_keys(daemon["runCoordinator"]["config"]["queuedRunCoordinator"])},
        "run_monitoring": {key: value for key, value in _snake_keys(monitoring).items()},
        "run_retries": _snake_keys(daemon["runRetries"]),
        "sensors": _snake_keys(daemon["sensors"]),
        "schedules": _snake_keys(daemon["schedules"]),
        "telemetry": values["telemetry"],
        "retention": {kind: {"purge_after_days": retention[kind]["purgeAfterDays"]} for kind in ("schedule", "sensor")},
    }


def test_the_helm_values_use_only_keys_the_chart_defines():
    assert set(HELM) <= CHART_KEYS[""], set(HELM) - CHART_KEYS[""]
    assert set(HELM["postgresql"]) <= CHART_KEYS["postgresql"]
    assert set(HELM["dagster-user-deployments"]) <= CHART_KEYS["dagster-user-deployments"]
    for deployment in HELM["dagster-user-deployments"]["deployments"]:
        assert set(deployment) <= CHART_KEYS["deployment"], set(deployment) - CHART_KEYS["deployment"]
    assert set(HELM["dagsterDaemon"]) <= CHART_KEYS["dagsterDaemon*"]
    assert set(HELM["dagsterDaemon"]["runCoordinator"]) <= CHART_KEYS["runCoordinator*"]
    assert set(HELM["dagsterDaemon"]["sensors"]) <= CHART_KEYS["sensors"]
    assert set(HELM["telemetry"]) <= CHART_KEYS["telemetry*"] and set(HELM["global"]) <= CHART_KEYS["global"]


def test_helm_runs_a_code_server_per_competition_with_the_secrets():
    modules = {location.name: location.module for location in read_code_locations(PROJECT_ROOT / "workspace.yaml")}
    deployments = HELM["dagster-user-deployments"]["deployments"]
    served = {}
    for deployment in deployments:
        args = deployment["dagsterApiGrpcArgs"]
        served[args[args.index("-m") + 1]] = deployment
        assert deployment["envSecrets"] == [{"name": "crunch-secrets"}]
        assert deployment["name"] == re.sub("_", "-", next(name for name, module in modules.items() if module == args[args.index("-m") + 1]))
    assert set(served) == set(modules.values())
    for section in (HELM["dagsterWebserver"], HELM["dagsterDaemon"], HELM["runLauncher"]["config"]["k8sRunLauncher"]):
        assert {"name": "crunch-secrets"} in section["envSecrets"]


def test_the_helm_instance_loads_with_the_k8s_launcher_and_the_compose_policy(database_url, tmp_path, monkeypatch):
    """The instance the chart writes from the values, loaded by DagsterInstance with dagster-k8s's
    K8sRunLauncher (config checked by its own schema) and the storage config checked by
    dagster-postgres's; its policy (queue, monitoring, retries, retention, sensors) equals
    deploy/dagster.yaml's but for what the chart cannot set."""
    pytest.importorskip("dagster_k8s", reason="the deploy extra is not installed: pip install -e '.[deploy]'")
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres.run_storage import PostgresRunStorage

    kubeconfig = tmp_path / "kubeconfig"  # no cluster is contacted: the launcher only reads it
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bed",
        "clusters": [{"name": "bed", "cluster": {"server": "https://kubernetes.invalid"}}],
        "users": [{"name": "bed", "user": {"token": "x"}}],
        "contexts": [{"name": "bed", "context": {"cluster": "bed", "user": "bed"}}]}))
    config = chart_instance_config(HELM, kubeconfig)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "from-the-postgresql-secret")  # the chart mounts it from that secret
    storage = process_config(PostgresRunStorage.config_type(), config.pop("run_storage")["config"])
    assert storage.success, storage.errors
    assert storage.value["postgres_db"]["params"] == {"options": "-csearch_path=public"}
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({
        "storage": {"custom": {"module": "resources.instance_storage", "class": "CrunchPostgresStorage", "config": {}}},
        **config}))
    with dg.DagsterInstance.from_config(str(home)) as instance:  # as the dagster role (conftest's URL)
        assert isinstance(instance.run_launcher, K8sRunLauncher)
        assert instance.run_launcher.supports_check_run_worker_health  # a dead run pod is seen and failed
        assert instance.run_launcher._env_secrets == ["crunch-secrets"]
        # the run pods publish roots where crunch.env.example says, on a claim the API mounts too
        directory = env_example()[0]["CRUNCH_ROOT_PUBLICATION_DIR"]
        [mount] = [m for m in instance.run_launcher.volume_mounts if m["mountPath"] == directory]
        [volume] = [v for v in instance.run_launcher.volumes if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"]
        helm_policy = {
            "queue": instance.get_concurrency_config().run_queue_config,
            "monitoring": (instance.run_monitoring_enabled, instance.run_monitoring_start_timeout_seconds,
                           instance.run_monitoring_cancel_timeout_seconds, instance.run_monitoring_max_resume_run_attempts,
                           instance.run_monitoring_poll_interval_seconds),
            "retries": (instance.run_retries_enabled, instance.run_retries_max_retries,
                        instance.run_retries_retry_on_asset_or_op_failure),
            "retention": instance.get_tick_retention_settings,
            "sensors": instance.get_settings("sensors"), "schedules": instance.get_settings("schedules"),
            "telemetry": instance.telemetry_enabled,
        }
    compose_home = tmp_path / "compose"
    compose_home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", compose_home / "dagster.yaml")
    pytest.importorskip("dagster_docker")
    with dg.DagsterInstance.from_config(str(compose_home)) as instance:
        compose_policy = {
            "queue": instance.get_concurrency_config().run_queue_config,
            "monitoring": (instance.run_monitoring_enabled, instance.run_monitoring_start_timeout_seconds,
                           instance.run_monitoring_cancel_timeout_seconds, instance.run_monitoring_max_resume_run_attempts,
                           instance.run_monitoring_poll_interval_seconds),
            "retries": (instance.run_retries_enabled, instance.run_retries_max_retries,
                        instance.run_retries_retry_on_asset_or_op_failure),
            "retention": instance.get_tick_retention_settings,
            "sensors": instance.get_settings("sensors"), "schedules": instance.get_settings("schedules"),
            "telemetry": instance.telemetry_enabled,
        }
        assert instance.run_monitoring_max_runtime_seconds == 21600  # the chart cannot set it (see the values' header)
    from dagster._core.scheduler.instigation import InstigatorType as Kind

    for kind in (Kind.SENSOR, Kind.SCHEDULE):
        assert helm_policy["retention"](kind) == compose_policy["retention"](kind), kind
    helm_policy.pop("retention"), compose_policy.pop("retention")
    assert helm_policy == compose_policy


def test_the_documented_database_url_keeps_dagster_off_the_store_schema(database_url):
    """A login named crunch (as Dagster's was in deploy/ before the roles) puts the store's schema
    `crunch` first on PostgreSQL's default search_path, so Dagster's unqualified `snapshots` read the
    store's table (the multi-host bed found it: every sensor tick failed). The documented Dagster
    URL's options pin search_path=public, whatever its login is named."""
    import secrets

    import sqlalchemy as sa
    from urllib.parse import parse_qs, urlsplit

    values, _ = env_example()
    options = parse_qs(urlsplit(values["CRUNCH_DAGSTER_DATABASE_URL"]).query)["options"]
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    database = "search_path_probe"
    password = secrets.token_hex(16)  # every connection to the test server needs one
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {database}"))
        connection.execute(sa.text(f"CREATE DATABASE {database}"))
        exists = connection.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = 'crunch'")).first()
        connection.execute(sa.text(f"{'ALTER' if exists else 'CREATE'} ROLE crunch LOGIN PASSWORD '{password}'"))
    as_crunch = sa.engine.make_url(database_url).set(username="crunch", password=password, database=database)
    try:
        setup = sa.create_engine(sa.engine.make_url(database_url).set(database=database), isolation_level="AUTOCOMMIT")
        with setup.connect() as connection:
            connection.execute(sa.text("CREATE TABLE public.snapshots (snapshot_id text)"))  # Dagster's
            connection.execute(sa.text("CREATE SCHEMA crunch AUTHORIZATION crunch"))
            connection.execute(sa.text("CREATE TABLE crunch.snapshots (model_id text)"))  # the store's
            connection.execute(sa.text("GRANT USAGE ON SCHEMA public TO crunch; GRANT SELECT ON public.snapshots TO crunch"))
        setup.dispose()

        def resolves(url) -> str:
            engine = sa.create_engine(url)
            with engine.connect() as connection:
                found = connection.execute(sa.text(
                    "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.oid = to_regclass('snapshots')")).scalar()
            engine.dispose()
            return found

        assert resolves(as_crunch) == "crunch"  # the defect, without the option: the store's table
        assert resolves(as_crunch.update_query_dict({"options": options[0]})) == "public"  # Dagster's
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        admin.dispose()


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
    from crunch_assets.code_locations import load_workspace_competitions
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

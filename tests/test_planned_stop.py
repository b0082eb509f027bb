"""A SIGTERM or SIGINT to the command's own process (what a process manager or `kill PID` sends,
not a Ctrl-C to the whole process group) stops everything `crunch-dagster api`, `crunch-dagster
serve` and the demo started: the servers, the code servers, the daemon, the live runs and their
model processes, and the embedded PostgreSQL. A stop mid-hour is planned, not a failure: the live
run ends CANCELED (no red run, no alert), and the next start goes on from there.

Real processes throughout. This test process is a child subreaper while a command runs, so that
every process the command started, orphaned or not, stays below it and can be counted. The store
is read afterwards by a process of its own (it attaches to the embedded server and detaches)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
import requests

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from chaos import Deployment, Store, server_processes, wait_for  # noqa: E402
from resources.database_url import DATABASE_ENV_VARS  # noqa: E402

BIN = Path(sys.executable).parent
PR_SET_CHILD_SUBREAPER = 36
pytestmark = pytest.mark.system

# How long a stop may take on this (shared, loaded) machine: the run's cancel, each program's stop.
STOP_BOUND_SECONDS = 240
AFTER_STOP_SECONDS = 30

QUERY_SCRIPT = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import sqlalchemy as sa
from resources.database_url import start_embedded_server
url = start_embedded_server(Path(sys.argv[2]))
engine = sa.create_engine(url)
with engine.connect() as connection:
    print(json.dumps([[list(row) for row in connection.execute(sa.text(sql))] for sql in json.loads(sys.argv[3])], default=str))
engine.dispose()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fresh_data_dir(prefix: str) -> Path:
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)  # the embedded server runs as its own user when root
    return directory


@contextlib.contextmanager
def adopting_orphans():
    """Yields a function listing the live processes below this one that were not there before:
    while inside, orphans of the command's tree come back here instead of init. At the end,
    whatever is left is killed (a failing test leaves nothing behind) and reaped."""
    libc = ctypes.CDLL(None, use_errno=True)
    before = {child.pid for child in psutil.Process().children(recursive=True)}

    def started_since() -> list[psutil.Process]:
        found = []
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.pid not in before and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child)
        return found

    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield started_since
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        left = started_since()
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(left, timeout=10)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def command_line(process) -> str:
    """The process's command line, or "" once it has exited (a survivor list is a snapshot)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def describe(processes) -> list[str]:
    out = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            out.append(f"{process.pid} {' '.join(process.cmdline())[:160]}")
    return out


def query_store(data_dir: Path, *sql: str) -> list[list[list]]:
    """Each statement's rows, read by a process of its own on the data directory's server."""
    env = {k: v for k, v in os.environ.items() if k not in (*DATABASE_ENV_VARS, "DAGSTER_HOME")}
    done = subprocess.run([sys.executable, "-c", QUERY_SCRIPT, str(PROJECT_ROOT), str(data_dir), json.dumps(list(sql))],
                          env={**env, "CRUNCH_DATA_DIR": str(data_dir)}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_stopped_cleanly(process: subprocess.Popen, survivors, data_dir: Path, live_run_ids: list[str],
                           signum: int) -> None:
    """Send `signum` to the command's process alone; then: it exits 0 within the bound, nothing it
    started survives, no server of its data directory runs, the live runs are CANCELED (no run
    failed, none in flight) and no prediction was stored after the stop."""
    asked_at = time.monotonic()
    os.kill(process.pid, signum)
    try:
        code = process.wait(timeout=STOP_BOUND_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_BOUND_SECONDS} s after {signal.Signals(signum).name}: {describe(survivors())}")
    stopped_at = datetime.now(timezone.utc)
    stop_seconds = time.monotonic() - asked_at
    assert code == 0, code
    left = wait_for("every process the command started to end", lambda: not survivors(), AFTER_STOP_SECONDS) and []
    assert left == [], describe(survivors())
    assert server_processes(data_dir / "pgdata") == []
    runs, in_flight, failed, late = query_store(
        data_dir,
        "SELECT run_id, status FROM public.runs WHERE pipeline_name LIKE '%live_job'",
        "SELECT run_id, status FROM public.runs WHERE status IN ('NOT_STARTED', 'QUEUED', 'STARTING', 'STARTED', 'CANCELING')",
        "SELECT run_id, pipeline_name FROM public.runs WHERE status = 'FAILURE'",
        f"SELECT count(*) FROM crunch.predictions WHERE created_at > '{stopped_at.isoformat()}'",
    )
    statuses = dict(map(tuple, runs))
    assert all(statuses[run_id] == "CANCELED" for run_id in live_run_ids), statuses
    assert in_flight == [] and failed == [], (in_flight, failed)
    assert late == [[0]]
    print(f"{signal.Signals(signum).name}: stopped in {stop_seconds:.1f} s; runs {statuses}")


# --- crunch-dagster api --------------------------------------------------------------------------------

@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_api_stops_with_its_embedded_server(signum):
    """The API started the embedded server (it was its first user): SIGTERM used to end it by the
    signal uvicorn raised again after its shutdown, before its exit handlers, so the server kept
    running with nobody to stop it."""
    data_dir = fresh_data_dir("crunch-api-stop-")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in (*DATABASE_ENV_VARS, "DAGSTER_HOME")}
    with adopting_orphans() as survivors:
        api = subprocess.Popen([str(BIN / "crunch-dagster"), "api", "--port", str(port), "--log-level", "warning"],
                               env={**env, "CRUNCH_DATA_DIR": str(data_dir)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)

        def healthy():
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json().get("database") == "reachable"
            except (requests.RequestException, ValueError):
                assert api.poll() is None, api.stderr.read().decode()[-3000:]
                return False

        wait_for("the API and its database", healthy, 240)
        assert server_processes(data_dir / "pgdata")
        os.kill(api.pid, signum)
        assert api.wait(timeout=60) == 0
        wait_for("the embedded server to stop with its last user", lambda: not server_processes(data_dir / "pgdata"), 30)
        assert wait_for("nothing left", lambda: not survivors(), 30)
    shutil.rmtree(data_dir, ignore_errors=True)


# --- crunch-dagster serve ------------------------------------------------------------------------------

def live_run_storing_cycles(store: Store, deployment: Deployment, timeout_seconds: float = 420) -> str:
    """The live run in flight once it has stored a cycle and its model processes run."""
    run_id = wait_for("a live run in flight", store.live_run_in_flight, timeout_seconds, 1)
    since = datetime.now(timezone.utc)
    wait_for("a cycle stored by it", lambda: (c := store.latest_stored_cycle()) and c >= since - timedelta(seconds=1),
             timeout_seconds, 1)
    return store.live_run_in_flight() or run_id


@pytest.mark.timeout(1800)
def test_serve_stops_everything_on_sigterm_and_goes_on_at_the_next_start():
    data_dir = fresh_data_dir("crunch-serve-stop-")
    ports = {"webserver": free_port(), "webserver_read_only": free_port(), "code": free_port(), "api": free_port()}
    with adopting_orphans() as survivors:
        deployment = Deployment(data_dir, 30, ports["webserver"], ports=ports)
        deployment.start()
        store = Store(deployment.pgdata)
        try:
            first_run = live_run_storing_cycles(store, deployment)
            models = [p for p in survivors() if "local_worker" in command_line(p)]
            assert models, describe(survivors())
            # the report API of this deployment reads the scope it runs (BTC-60-30, not btc_updown's BTC-60-60)
            lag = requests.get(f"http://127.0.0.1:{ports['api']}/competitions/btc_updown/lag", timeout=60).json()
            assert list(lag["last_cycle"]) == ["BTC-60-30"] and lag["last_cycle"]["BTC-60-30"]["at"] is not None, lag
            last_cycle = store.latest_stored_cycle()
        finally:
            store.dispose()
        assert_stopped_cleanly(deployment.process, survivors, data_dir, [first_run], signal.SIGTERM)

        # the next start: the cycle sensor replaces the canceled window's run and goes on storing cycles
        deployment.start()
        store = Store(deployment.pgdata)
        try:
            replacement = wait_for("the canceled run's replacement", lambda: store.query(
                "SELECT run_id FROM public.run_tags WHERE key = 'dagster/run_key' AND value LIKE :k",
                k=f"%:after:{first_run}"), 420, 1)[0][0]
            wait_for("cycles stored after the restart", lambda: (c := store.latest_stored_cycle()) and c > last_cycle, 420, 1)
            second_run = store.live_run_in_flight()
        finally:
            store.dispose()
        assert_stopped_cleanly(deployment.process, survivors, data_dir, [first_run, second_run or replacement], signal.SIGINT)
    shutil.rmtree(data_dir, ignore_errors=True)


# --- the demo --------------------------------------------------------------------------------------------

@pytest.mark.timeout(1500)
def test_the_demo_stops_everything_on_sigterm_to_its_launcher():
    """scripts/demo_launcher.py (what ./scripts/demo runs) with btc_updown live; its history replay
    is marked done (it is not what this test stops) and crypto_density's automation is off (the
    machine is small): a live run with its model processes, `dagster dev` with its daemon,
    webserver and code servers, the API, the embedded server."""
    data_dir = fresh_data_dir("crunch-demo-stop-")
    this_hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    (data_dir / "demo_start").write_text(this_hour.isoformat())
    (data_dir / "demo_history_done").write_text("skipped by the test")
    env = {k: v for k, v in os.environ.items()
           if k not in (*DATABASE_ENV_VARS, "DAGSTER_HOME") and not k.startswith("CRUNCH_BTC_UPDOWN_")}
    env.update(CRUNCH_DATA_DIR=str(data_dir), CRUNCH_API_PORT=str(free_port()), CRUNCH_UI_PORT=str(free_port()),
               CRUNCH_CRYPTO_DENSITY_AUTOMATION="off", CRUNCH_BTC_UPDOWN_AUTOMATION="on")
    store = Store(data_dir / "pgdata")
    with adopting_orphans() as survivors:
        launcher = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "scripts" / "demo_launcher.py")], env=env,
                                    cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        try:
            run_id = wait_for("a live run in flight", store.live_run_in_flight, 600, 1)
            since = datetime.now(timezone.utc)
            wait_for("a cycle stored by it", lambda: (c := store.latest_stored_cycle()) and c >= since - timedelta(seconds=1),
                     300, 1)
            run_id = store.live_run_in_flight() or run_id
            assert [p for p in survivors() if "local_worker" in command_line(p)], describe(survivors())
        finally:
            store.dispose()
        assert_stopped_cleanly(launcher, survivors, data_dir, [run_id], signal.SIGTERM)
    shutil.rmtree(data_dir, ignore_errors=True)


# --- the demo from a second shell ----------------------------------------------------------------------

README_TX_HASH = "5DemoReadmeTx0123456789"
# What the demo prints before its UI is up: its own lines (API, each competition's replay and its
# end, the UI), never a run's debug events or a library's warning.
DEMO_START_LINES_BOUND = 12
DEMO_LINES_BOUND = 20


def readme_checkpoint_commands() -> list[list[str]]:
    """README.md's checkpoint commands, as written there (`<hash>` filled in)."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    commands = ["checkpoints list btc_updown",
                "checkpoints submit btc_updown 1 --tx-hash <hash>",
                "checkpoints advance btc_updown 1 CLAIMABLE",
                "checkpoints advance btc_updown 1 PAID"]
    for command in commands:
        assert f".venv/bin/crunch-dagster {command}" in readme, command
    return [command.replace("<hash>", README_TX_HASH).split() for command in commands]


@pytest.mark.timeout(1200)
def test_the_readmes_checkpoint_commands_work_from_a_second_shell_while_the_demo_runs():
    """scripts/demo_launcher.py with two hours of history (two hourly checkpoints of btc_updown
    built for the demo's emission accounts; crypto_density's replay marked done, automation off:
    the machine is small). A second process whose environment has none of the demo's settings,
    nor XDG_RUNTIME_DIR, runs the README's commands: each succeeds, without a warning; the gate
    still refuses a key the shell sets otherwise, naming the cause. The demo's terminal carries
    its own lines only."""
    data_dir = fresh_data_dir("crunch-demo-second-shell-")
    two_hours_ago = (datetime.now(timezone.utc) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    (data_dir / "demo_start").write_text(two_hours_ago.isoformat())
    (data_dir / "demo_history_done_crypto_density").write_text("skipped by the test")
    base = {k: v for k, v in os.environ.items()
            if k not in (*DATABASE_ENV_VARS, "DAGSTER_HOME", "XDG_RUNTIME_DIR")
            and not k.startswith(("CRUNCH_BTC_UPDOWN_", "CRUNCH_CRYPTO_DENSITY_"))}
    base["CRUNCH_DATA_DIR"] = str(data_dir)
    demo_env = {**base, "CRUNCH_API_PORT": str(free_port()), "CRUNCH_UI_PORT": str(free_port()),
                "CRUNCH_CRYPTO_DENSITY_AUTOMATION": "off", "CRUNCH_BTC_UPDOWN_AUTOMATION": "off"}
    terminal = data_dir / "demo_terminal.log"

    def crunch_dagster(args: list[str], **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "crunch-dagster"), *args], env={**base, **extra_env}, cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=300)

    with adopting_orphans() as survivors, terminal.open("w") as out:
        launcher = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "scripts" / "demo_launcher.py")], env=demo_env,
                                    cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for("the demo's UI line", lambda: "demo: Dagster UI on" in terminal.read_text() or launcher.poll() is not None,
                     900, 1)
            assert launcher.poll() is None, terminal.read_text()[-3000:]
            started = terminal.read_text().splitlines()
            assert len(started) <= DEMO_START_LINES_BOUND, started
            assert [line for line in started if not line.startswith("demo: ")] == [], started

            listing, submitted, claimable, paid = readme_checkpoint_commands()
            done = crunch_dagster(listing)
            assert done.returncode == 0 and done.stderr == "", done.stderr
            assert "#2 " in done.stdout and "#1 " in done.stdout and "PENDING" in done.stdout, done.stdout

            # the shell wins over the demo's file: a different key set there is refused, and says so
            refused = crunch_dagster(["checkpoints", "submit", "btc_updown", "1", "--tx-hash", README_TX_HASH],
                                     CRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY="SomeoneElsesCrunch111111111111111111111111111")
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert "CRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY (or CRUNCH_CRUNCH_PUBKEY) is 'SomeoneElsesCrunch" in refused.stderr
            assert "rebuild the checkpoint" in refused.stderr
            unset = crunch_dagster(["checkpoints", "submit", "btc_updown", "1", "--tx-hash", README_TX_HASH],
                                   CRUNCH_CRUNCH_PUBKEY="")
            assert unset.returncode == 1 and "no crunch public key is configured in this process: set" in unset.stderr, \
                unset.stderr
            assert "rebuild" not in unset.stderr.split("no crunch public key")[1].split(";")[0]

            for command, status in ((submitted, "SUBMITTED"), (claimable, "CLAIMABLE"), (paid, "PAID")):
                done = crunch_dagster(command)
                assert done.returncode == 0 and done.stderr == "", (command, done.stdout, done.stderr)
                assert f"-> {status}" in done.stdout, done.stdout
            done = crunch_dagster(listing)
            first = next(line for line in done.stdout.splitlines() if line.startswith("#1 "))
            assert " PAID " in first and first.endswith(f"tx {README_TX_HASH}"), done.stdout

            # `dagster dev` has been up for as long as these commands took: a warning of Dagster's own
            # daemon at most, no Python warning, no debug event
            shown = terminal.read_text().splitlines()
            assert len(shown) <= DEMO_LINES_BOUND, shown
            assert [line for line in shown if "Warning:" in line or " - DEBUG - " in line] == [], shown
        finally:
            if launcher.poll() is None:
                assert_stopped_cleanly(launcher, survivors, data_dir, [], signal.SIGTERM)
    shutil.rmtree(data_dir, ignore_errors=True)


# --- the pieces ---------------------------------------------------------------------------------------

TREE_SCRIPT = r"""
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from crunch_assets.cli.lifetime import become_subreaper, end_descendants, stop_on_signals, StopRequested

assert become_subreaper()
read, write = os.pipe()
child = os.fork()
if child == 0:  # a child that leaves a detached, SIGTERM-ignoring grandchild behind (as a model can)
    if os.fork() == 0:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(write, f"{os.getpid()}\n".encode())
        while True:
            time.sleep(1)
    os._exit(0)
grandchild = int(os.fdopen(read).readline())
os.waitpid(child, 0)  # the child has exited (reaped): the grandchild is an orphan now
orphan_parent = int(open(f"/proc/{grandchild}/stat").read().rsplit(")", 1)[1].split()[1])
signals = []
with stop_on_signals() as state:
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except StopRequested as stop:
        signals.append(str(stop))
        os.kill(os.getpid(), signal.SIGINT)  # a second signal during the stop: recorded, not raised
        time.sleep(0.2)
    killed = end_descendants(grace_seconds=1)
alive = os.path.exists(f"/proc/{grandchild}") and open(f"/proc/{grandchild}/stat").read().rsplit(")", 1)[1].split()[0] not in "ZX"
print(json.dumps({"orphan_parent": orphan_parent, "me": os.getpid(), "killed": killed, "grandchild": grandchild,
                  "alive": alive, "signals": signals, "received": state.received}))
"""


def test_an_orphan_that_ignores_sigterm_comes_back_and_is_killed():
    done = subprocess.run([sys.executable, "-c", TREE_SCRIPT, str(PROJECT_ROOT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["orphan_parent"] == result["me"]  # adopted by the subreaper, not by init
    assert result["grandchild"] in result["killed"] and not result["alive"]
    assert result["signals"] == ["SIGTERM"] and result["received"] == [signal.SIGTERM, signal.SIGINT]

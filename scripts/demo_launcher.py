"""The demo (run by ./scripts/demo): the report API and participant page on :8000 for every
competition of workspace.yaml, the previous 24 hours of synthetic history of each replayed into the
store on its first start (hourly checkpoints, so a leaderboard with history, checkpoints and their
reward split are there at once), then the Dagster UI on :3000 with every competition running live.

Demo defaults, each overridden by the environment: the competition starts 24 h before the first
start (kept in .crunch/demo_start, so restarts keep the same partitions), hourly checkpoints, and
demo emission accounts. Ctrl-C, or SIGTERM to this process alone, stops everything it started: the
servers, the live runs (cancelled, not failed) and their model processes, the code servers and the
embedded PostgreSQL (see stop_demo).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DEMO_CRUNCH_PUBKEY = "DemoCrunch1111111111111111111111111111111111"
DEMO_COMPUTE_PUBKEY = "DemoCompute111111111111111111111111111111111"
HISTORY_HOURS = 24


def data_dir() -> Path:
    configured = os.environ.get("CRUNCH_DATA_DIR")
    return Path(configured).expanduser().resolve() if configured else PROJECT_ROOT / ".crunch"


def demo_start() -> datetime:
    """The competition's first hour: 24 h before the first demo start, remembered afterwards."""
    marker = data_dir() / "demo_start"
    if marker.exists():
        return datetime.fromisoformat(marker.read_text().strip())
    start = (datetime.now(timezone.utc) - timedelta(hours=HISTORY_HOURS)).replace(minute=0, second=0, microsecond=0)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(start.isoformat())
    return start


def workspace_competitions() -> list[str]:
    """Every competition of the checkout's workspace.yaml (a scaffolded one included)."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from crunch_assets.api.competitions import workspace_slugs

    return workspace_slugs(PROJECT_ROOT / "workspace.yaml")


def set_demo_defaults() -> None:
    """The demo's settings into this process's environment (its children inherit them), and into
    <data dir>/demo.env, where `crunch-dagster` in a second shell reads them (see
    crunch_assets/demo_settings.py)."""
    from crunch_assets.demo_settings import write_demo_settings

    os.environ.pop("DAGSTER_HOME", None)  # dagster dev then reads ./dagster.yaml (storage on the store's PostgreSQL)
    slugs = workspace_competitions()
    for slug in slugs:
        prefix = f"CRUNCH_{slug.upper()}_"
        os.environ.setdefault(prefix + "START", demo_start().isoformat())
        os.environ.setdefault(prefix + "CHECKPOINT_INTERVAL_SECONDS", "3600")
        os.environ.setdefault(prefix + "CRUNCH_PUBKEY", DEMO_CRUNCH_PUBKEY)
        os.environ.setdefault(prefix + "COMPUTE_PROVIDER_PUBKEY", DEMO_COMPUTE_PUBKEY)
    write_demo_settings(data_dir(), slugs, os.environ)


def history_marker(slug: str) -> Path:
    # btc_updown's marker predates the others (the demo replayed it alone)
    return data_dir() / ("demo_history_done" if slug == "btc_updown" else f"demo_history_done_{slug}")


def replay_history_once() -> None:
    """Replay [start, the current hour) of every competition of the workspace once (a marker per
    competition under .crunch/); the live cycles take over from the current hour."""
    import dagster as dg

    from crunch_assets.code_locations import load_competition
    from crunch_assets.replay import replay

    for slug in workspace_competitions():
        marker = history_marker(slug)
        if marker.exists():
            print(f"demo: {slug}: history already replayed ({marker.read_text().strip()})", flush=True)
            continue
        defs, spec = load_competition(slug)
        start = spec.start
        end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        if end <= start:
            continue
        print(f"demo: {slug}: replaying {start.isoformat()} .. {end.isoformat()} of synthetic history", flush=True)
        began = time.monotonic()
        with dg.DagsterInstance.from_config(str(PROJECT_ROOT)) as instance:  # the UI shows these materializations
            timings = replay(defs, spec, start, end, instance=instance, quiet=True)  # its runs' events are in the UI
        marker.write_text(f"{start.isoformat()} .. {end.isoformat()}")
        print(f"demo: {slug}: history replayed in {time.monotonic() - began:.0f} s, "
              f"{len(timings.checkpoints)} checkpoint(s)", flush=True)


def dagster_dev_environment() -> dict[str, str]:
    """`dagster dev` warns at each start that it is superseded by `dg dev` (a separate package the
    demo does not need): that one warning is filtered, by its text, for it and its children."""
    superseded = "ignore:Function `dev_command` is superseded"
    existing = os.environ.get("PYTHONWARNINGS")
    return {**os.environ, "PYTHONWARNINGS": f"{existing},{superseded}" if existing else superseded}


class ChildExited(Exception):
    pass


def main() -> int:
    """Start the API, replay the history once, start `dagster dev`, and supervise both. The
    children run in sessions of their own, so that a Ctrl-C in the terminal reaches this process
    only: SIGINT and SIGTERM (what a process manager or `kill PID` sends) are both a planned stop
    (see stop_demo)."""
    os.chdir(PROJECT_ROOT)
    sys.path.insert(0, str(PROJECT_ROOT))
    from crunch_assets.cli.lifetime import StopRequested, become_subreaper, stop_on_signals, wait_reaping

    set_demo_defaults()
    become_subreaper()  # an orphan of the demo's tree (a model process whose run died) comes back here
    api_port = os.environ.get("CRUNCH_API_PORT", "8000")
    ui_port = os.environ.get("CRUNCH_UI_PORT", "3000")
    children: dict[str, subprocess.Popen] = {}
    code = 0
    with stop_on_signals() as signals:
        try:
            children["api"] = subprocess.Popen(
                [str(VENV_BIN / "crunch-dagster"), "api", "--host", "127.0.0.1", "--port", api_port, "--log-level", "warning"],
                start_new_session=True)
            print(f"demo: report API and participant page on http://127.0.0.1:{api_port} (OpenAPI: /docs)", flush=True)
            replay_history_once()
            if signals.requested:  # the replay's runs took the interrupt as their own
                raise StopRequested(signals.received[0])
            # The daemon's and webserver's own log at WARNING: a line per sensor tick and per run check is
            # noise in a terminal (the UI shows ticks and runs); runs log INFO (dagster.yaml's python_logs).
            children["dagster dev"] = subprocess.Popen(
                [str(VENV_BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", ui_port,
                 "--log-level", "warning"],
                env=dagster_dev_environment(), start_new_session=True)
            print(f"demo: Dagster UI on http://127.0.0.1:{ui_port}", flush=True)
            exited = wait_reaping(children.values())
            name = next(name for name, child in children.items() if child is exited)
            raise ChildExited(f"{name} exited with {exited.returncode}")
        except StopRequested as stop:
            print(f"demo: {stop}: stopping everything the demo started", flush=True)
        except ChildExited as exited:
            print(f"demo: {exited}; stopping", flush=True)
            code = 1
        stop_demo(children)
    return code


def stop_demo(children: dict[str, subprocess.Popen]) -> None:
    """A planned stop, in order: `dagster dev` stops its daemon and webserver (nothing new is
    launched); the runs in flight are cancelled through Dagster (CANCELED, not a red FAILURE; the
    next start's cycle sensor starts the window again); the API stops; whatever is left below
    this process (code servers, run workers, model processes) is ended; runs still in flight are
    marked CANCELED; the embedded PostgreSQL stops once nothing uses it."""
    from crunch_assets.cli.lifetime import RunKeeper, end_descendants, server_pids, stop_embedded_server

    def log(line: str) -> None:
        print(f"demo: {line}", flush=True)

    pgdata = None if os.environ.get("CRUNCH_DATABASE_URL") else data_dir() / "pgdata"
    keeper = RunKeeper(dict(os.environ), instance_dir=PROJECT_ROOT, log=log)  # loads while `dagster dev` stops
    try:
        dev = children.get("dagster dev")
        if dev is not None and dev.poll() is None:
            dev.send_signal(signal.SIGINT)  # its daemon and webserver stop; its code servers wait for their runs
            _wait(dev, STOP_WAIT_SECONDS, log)
        api = children.get("api")
        if api is not None and api.poll() is None:
            api.send_signal(signal.SIGTERM)
        keeper.cancel()
        if api is not None:
            _wait(api, STOP_WAIT_SECONDS, log)
        end_descendants(lambda: {keeper.process.pid if keeper.process else 0, *server_pids(pgdata)}, log=log)
        keeper.settle()
    finally:
        keeper.close()
    end_descendants(lambda: server_pids(pgdata), log=log)
    if pgdata is not None:
        stop_embedded_server(pgdata, log=log)  # unless this process still uses it (the replay): then at its exit
    end_descendants(log=log)
    log("stopped")


STOP_WAIT_SECONDS = 60


def _wait(child: subprocess.Popen, timeout_seconds: float, log) -> None:
    try:
        child.wait(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        log(f"{child.args[0]} did not stop within {timeout_seconds} s; it is ended with the rest")


if __name__ == "__main__":
    sys.exit(main())

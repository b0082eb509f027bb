"""The demo (run by ./scripts/demo): the report API and participant page on :8000 for every
competition of workspace.yaml, the previous 24 hours of synthetic history of each replayed into the
store on its first start (hourly checkpoints, so a leaderboard with history, checkpoints and their
reward split are there at once), then the Dagster UI on :3000 with every competition running live.

Demo defaults, each overridden by the environment: the competition starts 24 h before the first
start (kept in .crunch/demo_start, so restarts keep the same partitions), hourly checkpoints, and
demo emission accounts. Ctrl-C (or SIGTERM) stops both servers.
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
    os.environ.pop("DAGSTER_HOME", None)  # dagster dev then reads ./dagster.yaml (storage on the store's PostgreSQL)
    for slug in workspace_competitions():
        prefix = f"CRUNCH_{slug.upper()}_"
        os.environ.setdefault(prefix + "START", demo_start().isoformat())
        os.environ.setdefault(prefix + "CHECKPOINT_INTERVAL_SECONDS", "3600")
        os.environ.setdefault(prefix + "CRUNCH_PUBKEY", DEMO_CRUNCH_PUBKEY)
        os.environ.setdefault(prefix + "COMPUTE_PROVIDER_PUBKEY", DEMO_COMPUTE_PUBKEY)


def history_marker(slug: str) -> Path:
    # btc_updown's marker predates the others (the demo replayed it alone)
    return data_dir() / ("demo_history_done" if slug == "btc_updown" else f"demo_history_done_{slug}")


def replay_history_once() -> None:
    """Replay [start, the current hour) of every competition of the workspace once (a marker per
    competition under .crunch/); the live cycles take over from the current hour."""
    import dagster as dg

    from crunch_assets.cli.common import load_competition
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
            timings = replay(defs, spec, start, end, instance=instance)
        marker.write_text(f"{start.isoformat()} .. {end.isoformat()}")
        print(f"demo: {slug}: history replayed in {time.monotonic() - began:.0f} s, "
              f"{len(timings.checkpoints)} checkpoint(s)", flush=True)


def main() -> int:
    os.chdir(PROJECT_ROOT)
    set_demo_defaults()
    api_port = os.environ.get("CRUNCH_API_PORT", "8000")
    ui_port = os.environ.get("CRUNCH_UI_PORT", "3000")
    children: list[subprocess.Popen] = []

    def stop(*_args) -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    children.append(subprocess.Popen([str(VENV_BIN / "crunch-dagster"), "api", "--host", "127.0.0.1", "--port", api_port,
                                      "--log-level", "warning"]))
    print(f"demo: report API and participant page on http://127.0.0.1:{api_port} (OpenAPI: /docs)", flush=True)
    replay_history_once()
    children.append(subprocess.Popen([str(VENV_BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
                                      "-p", ui_port]))
    print(f"demo: Dagster UI on http://127.0.0.1:{ui_port}", flush=True)
    while True:
        for child in children:
            if child.poll() is not None:
                print(f"demo: {child.args[0]} exited with {child.returncode}; stopping", flush=True)
                stop()
        time.sleep(1)  # supervision poll, not synchronisation


if __name__ == "__main__":
    sys.exit(main())

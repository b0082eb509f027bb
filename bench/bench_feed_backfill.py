"""Benchmark a feed backfill end to end: N days of 1-minute candles for several subjects, paged
from a local fake Binance (real HTTP on 127.0.0.1) through `BinanceFeed.fetch_candles`, then
written into a fresh embedded PostgreSQL through `FeedStore.store_fetch` (the feed asset's write
path: records, fetched span and watermark in one transaction).

    .venv/bin/python bench/bench_feed_backfill.py --days 30 --subjects BTC,ETH,SOL --repeat 5 [--smoke]

Writes go in chunks of `--chunk-hours`, one `store_fetch` per subject and chunk: with 24, what one
backfill run of a day of the hourly `feed_records` asset writes. Each repeat empties feed_records first, so every run writes into
an empty table; a second pass per run rewrites the same candles, which must change no row.
Figures are printed per run, then medians. `--insert-path` measures the multi-row INSERT instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Sequence

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(PROJECT_ROOT))
from bench import benchkit  # noqa: E402

WRITE_TARGET_RECORDS_PER_SECOND = 50_000


@dataclass
class BackfillRun:
    records: int
    fetch_seconds: float  # HTTP request -> body read (the fake server's work included)
    parse_seconds: float  # JSON decoding + rows -> validated candles + paging
    write_seconds: float  # store_fetch, commits included
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

    As the feed asset writes: per chunk of chunk_hours and subject, one `FeedStore.store_fetch`
    (records, fetched span and watermark in one transaction)."""
    import sqlalchemy as sa

    from resources.feeds.base import CANDLE, FeedStream
    from resources.store.feeds import FeedStore

    store = FeedStore(engine)
    chunk = timedelta(hours=chunk_hours)
    first = min(candles[0].ts_event for candles in candles_by_subject.values() if candles)
    last = max(candles[-1].ts_event for candles in candles_by_subject.values() if candles)
    # Slices per chunk computed before the clock starts: only the write is timed.
    writes = []
    chunk_start = first
    while chunk_start <= last:
        chunk_end = chunk_start + chunk
        for subject, candles in candles_by_subject.items():
            stream = FeedStream(source, subject, CANDLE, candles[0].granularity_seconds if candles else 60)
            writes.append((stream, [c for c in candles if chunk_start <= c.ts_event < chunk_end], (chunk_start, chunk_end)))
        chunk_start = chunk_end
    written = 0
    with engine.connect() as connection:  # writes run one at a time: the pool hands this one back
        backend_pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    cpu_began = time.process_time() + _process_cpu_seconds(backend_pid)
    began = time.perf_counter()
    for stream, candles, span in writes:
        written += store.store_fetch(stream, candles, span).written
    wall_seconds = time.perf_counter() - began
    with engine.connect() as connection:
        same_backend = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() == backend_pid
    cpu_seconds = time.process_time() + _process_cpu_seconds(backend_pid) - cpu_began
    if not same_backend:
        cpu_seconds = float("nan")  # another backend did some of the work: its CPU is not counted
    return written, wall_seconds, cpu_seconds


def run_once(engine, subjects: Sequence[str], days: float, chunk_hours: float) -> BackfillRun:
    import sqlalchemy as sa

    from bench.bench_feed_fetch import run_fetch

    with engine.begin() as connection:
        connection.execute(sa.text("TRUNCATE crunch.feed_records, crunch.feed_spans, crunch.feed_ingestion_state"))
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--subjects", default="BTC,ETH,SOL")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--chunk-hours", type=float, default=24, help="hours of candles per write transaction")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--insert-path", action="store_true",
                        help="baseline: write every batch with the multi-row INSERT instead of COPY")
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.days, args.subjects, args.repeat, args.chunk_hours = 1, "BTC,ETH", 2, 6
    benchkit.smoke_banner(args)
    if args.insert_path:
        from resources.store import feeds

        feeds.COPY_MIN_RECORDS = sys.maxsize
    subjects = [subject.strip() for subject in args.subjects.split(",") if subject.strip()]

    data_dir = benchkit.fresh_data_dir("crunch-bench-feed-")
    benchkit.use_embedded_server(data_dir)
    from resources.store.database import engine_for

    engine = engine_for()  # starts the server and migrates the schema
    runs: list[BackfillRun] = []
    try:
        benchkit.conditions(
            f"backfill {args.days:g} days x {len(subjects)} subjects ({', '.join(subjects)}), 1-minute candles, "
            f"fake Binance -> embedded PostgreSQL, one store_fetch per subject and {args.chunk_hours:g} h"
            f"{' (multi-row INSERT baseline)' if args.insert_path else ''}")
        for number in range(1, args.repeat + 1):
            run = run_once(engine, subjects, args.days, args.chunk_hours)
            runs.append(run)
            print(f"run {number}/{args.repeat} [{benchkit.load_text()}]")
            print(report(run))
    finally:
        benchkit.stop_embedded_server(data_dir)
    if len(runs) > 1:
        median = BackfillRun(**{
            name: statistics.median(getattr(run, name) for run in runs) for name in BackfillRun.__dataclass_fields__
        })
        print(f"median of {len(runs)} runs")
        print(report(median))
    write_rates = benchkit.band([run.write_records_per_second for run in runs])
    verdict = "meets" if write_rates.median >= WRITE_TARGET_RECORDS_PER_SECOND else "MISSES"
    benchkit.figure(f"write path: {write_rates.describe('records/s', 0)}; {verdict} the "
                    f"{WRITE_TARGET_RECORDS_PER_SECOND:,}/s target")
    cpu_rates = [run.records / run.write_cpu_seconds for run in runs if run.write_cpu_seconds == run.write_cpu_seconds]
    if cpu_rates:  # NaN when another backend did part of the writing
        benchkit.figure("write path per CPU-second (this process + its server backend; what a loaded machine moves "
                        f"least): {benchkit.band(cpu_rates).describe('records/CPU-s', 0)}")
    benchkit.figure(f"whole backfill: {benchkit.band([run.records_per_second for run in runs]).describe('records/s', 0)}")
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

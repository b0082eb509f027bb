"""Benchmark the fetch/parse half of a backfill: N days of 1-minute candles for several subjects,
paged from a local fake Binance (real HTTP on 127.0.0.1, the real BTC/USD CSV reused cyclically and
shifted/scaled per subject).

    .venv/bin/python bench/bench_feed_fetch.py --days 30 --subjects BTC,ETH,SOL [--repeat 5] [--smoke]

`run_fetch(subjects, days)` returns the candles and the timings, for a benchmark that also writes
them to PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(PROJECT_ROOT))
from bench import benchkit  # noqa: E402

from resources.feeds.base import Candle  # noqa: E402
from resources.feeds.binance import BinanceFeed  # noqa: E402
from tests.fakes.feed_servers import (  # noqa: E402
    BINANCE_SYMBOLS,
    FakeBinanceServer,
    binance_in_subprocess,
    binance_series_for_subjects,
    load_csv_candles,
)

SECONDS_PER_DAY = 86_400


@dataclass
class FetchTimings:
    wall_seconds: float = 0.0
    http_seconds: float = 0.0  # request sent -> body read (includes the fake server's work)
    decode_seconds: float = 0.0  # JSON decoding
    parse_seconds: float = 0.0  # rows -> validated Candles, paging logic (wall - http - decode - sleep)
    retry_sleep_seconds: float = 0.0
    requests: int = 0
    pages: int = 0
    candles: int = 0
    skipped: int = 0
    bytes_received: int = 0
    per_subject_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def records_per_second(self) -> float:
        return self.candles / self.wall_seconds if self.wall_seconds else 0.0


def default_start() -> datetime:
    """Midnight UTC of the CSV's first day (2025-01-07)."""
    first_ts = load_csv_candles()[0].ts
    return datetime.fromtimestamp(first_ts - first_ts % SECONDS_PER_DAY, tz=timezone.utc)


def run_fetch(
    subjects: Sequence[str] = ("BTC", "ETH", "SOL"),
    days: float = 30,
    *,
    base_url: str | None = None,
    start: datetime | None = None,
    server_in_subprocess: bool = True,
) -> tuple[dict[str, list[Candle]], FetchTimings]:
    """Backfill [start, start + days) for each subject through BinanceFeed.fetch_candles.

    Without base_url a fake Binance serving exactly that window is started (in its own process by
    default, so its JSON work does not share this process's GIL) and stopped afterwards.
    """
    start = start or default_start()
    end = start + timedelta(days=days)
    with ExitStack() as stack:
        if base_url is None:
            start_ts = int(start.timestamp())
            if server_in_subprocess:
                base_url = stack.enter_context(binance_in_subprocess(subjects, start_ts=start_ts, days=days))
            else:
                server = FakeBinanceServer(binance_series_for_subjects(subjects, start_ts=start_ts, days=days))
                base_url = stack.enter_context(server).url
        feed = BinanceFeed(base_url=base_url, symbols={subject: BINANCE_SYMBOLS.get(subject, f"{subject}USDT")
                                                       for subject in subjects})
        stack.callback(feed.close)
        feed.validate_subjects(list(subjects))
        as_of = max(end, datetime.now(timezone.utc))
        candles_by_subject: dict[str, list[Candle]] = {}
        timings = FetchTimings()
        wall_started = time.perf_counter()
        for subject in subjects:
            subject_started = time.perf_counter()
            result = feed.fetch_candles(subject, start, end, as_of=as_of)
            timings.per_subject_seconds[subject] = time.perf_counter() - subject_started
            candles_by_subject[subject] = result.records
            timings.pages += result.pages_fetched
            timings.candles += len(result.records)
            timings.skipped += len(result.skipped)
        timings.wall_seconds = time.perf_counter() - wall_started
        stats = feed.http_stats()  # before the feed's clients are closed
    timings.http_seconds = stats.http_seconds
    timings.decode_seconds = stats.decode_seconds
    timings.retry_sleep_seconds = stats.sleep_seconds
    timings.requests = stats.requests
    timings.bytes_received = stats.bytes_received
    timings.parse_seconds = max(0.0, timings.wall_seconds - stats.http_seconds - stats.decode_seconds
                                - stats.sleep_seconds)
    return candles_by_subject, timings


def report(timings: FetchTimings, *, subjects: Sequence[str], days: float) -> str:
    def share(seconds: float) -> str:
        return f"{seconds:7.3f} s ({100 * seconds / timings.wall_seconds:5.1f} %)" if timings.wall_seconds else "-"

    lines = [
        f"backfill {days:g} days x {len(subjects)} subjects ({', '.join(subjects)}), 1-minute candles, fake Binance",
        f"  candles        {timings.candles:,} ({timings.skipped} skipped) in {timings.pages} pages / "
        f"{timings.requests} requests, {timings.bytes_received / 1e6:.1f} MB",
        f"  wall           {timings.wall_seconds:7.3f} s -> {timings.records_per_second:,.0f} records/s",
        f"  http fetch     {share(timings.http_seconds)}",
        f"  json decode    {share(timings.decode_seconds)}",
        f"  parse+validate {share(timings.parse_seconds)}",
        "  per subject    " + ", ".join(f"{subject} {seconds:.3f} s"
                                       for subject, seconds in timings.per_subject_seconds.items()),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--subjects", default="BTC,ETH,SOL")
    parser.add_argument("--repeat", type=int, default=5, help="runs (a fresh fake server each)")
    parser.add_argument("--in-process", action="store_true", help="run the fake server in this process")
    parser.add_argument("--json", type=Path, help="also write the timings of every run here")
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.days, args.subjects, args.repeat = 1, "BTC,ETH", 3
    benchkit.smoke_banner(args)
    subjects = [subject.strip() for subject in args.subjects.split(",") if subject.strip()]
    benchkit.conditions(f"fetch {args.days:g} days x {len(subjects)} subjects from a fake Binance on loopback")
    runs = []
    failed = False
    for run in range(args.repeat):
        candles_by_subject, timings = run_fetch(subjects, args.days, server_in_subprocess=not args.in_process)
        expected = int(args.days * 1440)
        missing = {subject: expected - len(candles) for subject, candles in candles_by_subject.items()
                   if len(candles) != expected}
        print(f"run {run + 1}/{args.repeat} [{benchkit.load_text()}]")
        print(report(timings, subjects=subjects, days=args.days))
        if missing:
            print(f"  FAILED: candles missing per subject: {missing}")
            failed = True
        runs.append({**asdict(timings), "records_per_second": timings.records_per_second})
    benchkit.figure(f"fetch + parse: {benchkit.band([r['records_per_second'] for r in runs]).describe('records/s', 0)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"subjects": subjects, "days": args.days, "runs": runs}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

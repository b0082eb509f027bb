"""Replay throughput: N days of real BTC/USD candles through the whole asset chain (the path a
backfill takes) with M local models (copies of the three quickstarters, each in its own process),
on a fresh embedded PostgreSQL; then the storage each prediction costs.

    .venv/bin/python bench/bench_replay.py [--days 7] [--models 10] [--profile out.prof]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
CSV = PROJECT_ROOT.parent / "shared" / "data" / "btcusd_bitstamp_1min_2025-01-07_2025-02-02.csv"
QUICKSTARTERS = PROJECT_ROOT / "competitions" / "btc_updown" / "models"


def models_dir(count: int, root: Path) -> Path:
    """`count` models: the quickstarters, then numbered copies of them."""
    directory = root / "models"
    directory.mkdir()
    sources = sorted(QUICKSTARTERS.glob("[!_]*.py"))
    for i in range(count):
        source = sources[i % len(sources)]
        shutil.copy(source, directory / (f"{source.stem}.py" if i < len(sources) else f"{source.stem}_{i}.py"))
    return directory


def storage_per_prediction(engine) -> tuple[int, dict[str, int]]:
    import sqlalchemy as sa

    with engine.connect() as connection:
        sizes = {t: connection.execute(sa.text(f"SELECT pg_total_relation_size('crunch.{t}')")).scalar_one()
                 for t in ("predictions", "scores", "inputs")}
        predictions = connection.execute(sa.text("SELECT count(*) FROM crunch.predictions")).scalar_one()
    return predictions, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--days-per-run", type=int,
                        help="days each step's run covers (default: the whole range in one run, as a UI backfill does)")
    parser.add_argument("--profile", help="write a cProfile of the replay to this file")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-bench-"))
    data_dir.chmod(0o755)
    os.environ.pop("CRUNCH_DATABASE_URL", None)
    os.environ["CRUNCH_DATA_DIR"] = str(data_dir)
    import logging

    logging.getLogger("dagster").setLevel(logging.WARNING)
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.replay import replay
    from resources.feeds.csv_replay import CsvReplayFeed
    from resources.model_runners.local import LocalModelRunner
    from resources.store.database import engine_for

    start = datetime(2025, 1, 7, 1, tzinfo=timezone.utc)
    spec = replace(SPEC, start=start, checkpoint_interval_seconds=86400)
    runner = LocalModelRunner(models_dir=str(models_dir(args.models, data_dir)), call_timeout_seconds=5.0)
    defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(CSV)), model_runner=runner, automation_running=False)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    began = time.perf_counter()
    timings = replay(defs, spec, start, start + timedelta(days=args.days), days_per_run=args.days_per_run or args.days)
    total = time.perf_counter() - began
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    cycles = args.days * 1440
    predictions = cycles * args.models
    print(f"replayed {args.days} day(s) = {cycles:,} cycles x {args.models} models = {predictions:,} predictions "
          f"in {total:.1f} s ({predictions / total:,.0f} predictions/s end to end)")
    for step, seconds in timings.seconds_by_step.items():
        rate = f"  ({predictions / seconds:,.0f} predictions/s)" if step in ("predictions", "scores") else ""
        print(f"  {step:<24} {seconds:6.1f} s{rate}")
    count, sizes = storage_per_prediction(engine_for())
    per = {table: size / count for table, size in sizes.items()}
    print(f"storage per prediction (tables, indexes, TOAST): {sum(per.values()):,.0f} bytes = "
          + ", ".join(f"{table} {value:,.0f}" for table, value in per.items()))


if __name__ == "__main__":
    main()

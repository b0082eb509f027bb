"""Replay throughput: N days of real BTC/USD candles through the whole asset chain (the path a
backfill takes) with M local models (copies of the three quickstarters, each in its own process),
on the embedded PostgreSQL with Dagster on the deployment's storage (the checkout's dagster.yaml);
then the storage each prediction costs.

Each of --repeats replays into an emptied competition store (Dagster's history stays, as a
deployment's does); the whole replay and each step are reported as a noise band.

    .venv/bin/python bench/bench_replay.py [--days 7] [--models 10] [--repeats 3] [--days-per-run N] [--profile out.prof] [--smoke]
"""

import argparse
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench import benchkit  # noqa: E402

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


def empty_store(url: str) -> None:
    """The competition store dropped (migrated again on first use), as a fresh deployment's."""
    import sqlalchemy as sa

    from resources.store.database import dispose_engines

    dispose_engines()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS crunch CASCADE"))
    engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7, help="days of cycles (a multiple of 1/24)")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--days-per-run", type=int,
                        help="days each step's run covers (default: the whole range in one run, as a UI backfill does)")
    parser.add_argument("--checkpoint-hours", type=int, default=24, help="the checkpoint period (hours)")
    parser.add_argument("--profile", help="write a cProfile of the last replay to this file")
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.smoke:  # two repeats: the second replays into an emptied store
        args.days, args.models, args.repeats, args.checkpoint_hours = 3 / 24, 2, 2, 1
    benchkit.smoke_banner(args)
    args.hours = round(args.days * 24)
    if args.hours < 1 or abs(args.hours - args.days * 24) > 1e-6:
        parser.error("--days must be a whole number of hours (a multiple of 1/24)")
    benchkit.quiet_dagster()
    with benchkit.embedded_server("crunch-bench-replay-") as (data_dir, url):
        return run(args, data_dir, url)


def run(args, data_dir: Path, url: str) -> int:
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.replay import replay
    from resources.feeds.csv_replay import CsvReplayFeed
    from resources.model_runners.local import LocalModelRunner
    from resources.store.database import engine_for

    days_per_run = args.days_per_run or max(1, -(-args.hours // 24))
    benchkit.conditions(f"replay {args.days:g} day(s) x {args.models} models, whole chain, {days_per_run} day(s) a run, "
                        f"checkpoints every {args.checkpoint_hours} h, Dagster on PostgreSQL (dagster.yaml), "
                        "embedded PostgreSQL 18")
    start = datetime(2025, 1, 7, 1, tzinfo=timezone.utc)
    spec = replace(SPEC, start=start, checkpoint_interval_seconds=3600 * args.checkpoint_hours)
    runner = LocalModelRunner(models_dir=str(models_dir(args.models, data_dir)), call_timeout_seconds=5.0)
    defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(CSV)), model_runner=runner, automation_running=False)
    cycles = args.hours * 60
    predictions = cycles * args.models
    totals: list[float] = []
    by_step: dict[str, list[float]] = defaultdict(list)
    with benchkit.dagster_instance(data_dir) as instance:
        for attempt in range(args.repeats):
            empty_store(url)
            profiler = None
            if args.profile and attempt == args.repeats - 1:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            began = time.perf_counter()
            timings = replay(defs, spec, start, start + timedelta(hours=args.hours), instance=instance,
                             days_per_run=days_per_run)
            totals.append(time.perf_counter() - began)
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile)
            for step, seconds in timings.seconds_by_step.items():
                by_step[step].append(seconds)
            print(f"  replay {attempt + 1}/{args.repeats}: {totals[-1]:.1f} s [{benchkit.load_text()}]", flush=True)
    count, sizes = storage_per_prediction(engine_for())
    if count != predictions:
        print(f"FAILED: {count:,} predictions stored, {predictions:,} expected")
        return 1
    whole = benchkit.band(totals)
    benchkit.figure(f"replayed {args.days:g} day(s) = {cycles:,} cycles x {args.models} models = {predictions:,} predictions: "
                    f"{whole.describe('s', 1)} = {predictions / whole.median:,.0f} predictions/s end to end")
    for step, seconds in by_step.items():
        step_band = benchkit.band(seconds)
        rate = f" = {predictions / step_band.median:,.0f} predictions/s" if step in ("predictions", "scores") else ""
        print(f"  {step:<24} {step_band.describe('s', 1)}{rate}")
    per = {table: size / count for table, size in sizes.items()}
    benchkit.figure(f"storage per prediction (tables, indexes, TOAST): {sum(per.values()):,.0f} bytes = "
                    + ", ".join(f"{table} {value:,.0f}" for table, value in per.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

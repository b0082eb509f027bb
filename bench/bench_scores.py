"""Scores step throughput: N days x M models of stored predictions (real BTC/USD candles), then the
scores asset over the whole range in one run, timed alone (median of --repeat fresh scorings).

    .venv/bin/python bench/bench_scores.py [--days 3] [--models 10] [--repeat 3] [--profile out.prof]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench.bench_replay import CSV, models_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="crunch-bench-"))
    data_dir.chmod(0o755)
    os.environ.pop("CRUNCH_DATABASE_URL", None)
    os.environ["CRUNCH_DATA_DIR"] = str(data_dir)
    import dagster as dg
    import sqlalchemy as sa

    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.keys import ChainKeys
    from crunch_assets.partitions import build_partitions
    from crunch_assets.replay import materialize_range
    from resources.feeds.csv_replay import CsvReplayFeed
    from resources.model_runners.local import LocalModelRunner
    from resources.store.database import engine_for

    start = datetime(2025, 1, 7, 1, tzinfo=timezone.utc)
    end = start + timedelta(days=args.days)
    spec = replace(SPEC, start=start)
    runner = LocalModelRunner(models_dir=str(models_dir(args.models, data_dir)), call_timeout_seconds=5.0)
    defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(CSV)), model_runner=runner, automation_running=False)
    keys, partitions = ChainKeys.for_slug(spec.slug), build_partitions(spec)
    first, last = partitions.hour_key(start), partitions.hour_key(end - timedelta(hours=1))
    instance = dg.DagsterInstance.ephemeral()  # one, as a deployment has: not built again per run
    materialize_range(defs, [keys.feed_records], first, partitions.hour_key(end), instance)
    materialize_range(defs, [keys.predictions], first, last, instance)
    engine = engine_for()
    with engine.connect() as connection:
        predictions = connection.execute(sa.text("SELECT count(*) FROM crunch.predictions")).scalar_one()
    seconds = []
    for attempt in range(args.repeat):
        with engine.begin() as connection:  # score the same predictions afresh
            connection.execute(sa.text("DELETE FROM crunch.scores"))
            connection.execute(sa.text("UPDATE crunch.inputs SET status = 'RECEIVED', actuals = NULL, failure_value = NULL"))
        profiler = None
        if args.profile and attempt == args.repeat - 1:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        began = time.perf_counter()
        materialize_range(defs, [keys.scores], first, last, instance)
        seconds.append(time.perf_counter() - began)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
    with engine.connect() as connection:
        scored = connection.execute(sa.text("SELECT count(*) FROM crunch.scores")).scalar_one()
    assert scored == predictions, (scored, predictions)
    median = statistics.median(seconds)
    print(f"scores step: {predictions:,} predictions ({args.days} days x {args.models} models) in median {median:.2f} s "
          f"(runs: {', '.join(f'{s:.2f}' for s in seconds)}) = {predictions / median:,.0f} predictions/s")


if __name__ == "__main__":
    main()

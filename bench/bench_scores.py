"""Scores step throughput: N days x M models of stored predictions (real BTC/USD candles), then the
scores asset over the whole range in one run, timed alone: --repeat fresh scorings of the same
predictions, reported as a noise band (min / median / max, the spread, the regression it can see).

Dagster runs on the deployment's storage (the checkout's dagster.yaml: PostgreSQL, the store's
server), one instance for all runs, as a deployment has. Besides wall time it reports the CPU
seconds of this process and of the PostgreSQL server per 1,000 predictions and the predictions per
CPU-second of both, which a loaded machine moves much less than wall time.

    .venv/bin/python bench/bench_scores.py [--days 3] [--models 10] [--repeat 5] [--profile out.prof] [--smoke]
"""

import argparse
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench import benchkit  # noqa: E402
from bench.bench_replay import CSV, models_dir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=3, help="days of cycles (a multiple of 1/24)")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile")
    benchkit.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.smoke:
        args.days, args.models, args.repeat = 2 / 24, 2, 3
    benchkit.smoke_banner(args)
    hours = round(args.days * 24)
    if hours < 1:
        parser.error("--days must cover at least one hour")
    benchkit.quiet_dagster()
    with benchkit.embedded_server("crunch-bench-scores-") as (data_dir, _url):
        return run(args, hours, data_dir)


def run(args, hours: int, data_dir: Path) -> int:
    import sqlalchemy as sa

    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.keys import ChainKeys
    from crunch_assets.partitions import build_partitions
    from crunch_assets.replay import materialize_range
    from resources.feeds.csv_replay import CsvReplayFeed
    from resources.model_runners.local import LocalModelRunner
    from resources.store.database import engine_for

    benchkit.conditions(f"scores step, {hours} h x {args.models} models, Dagster on PostgreSQL (dagster.yaml), "
                        "embedded PostgreSQL 18")
    start = datetime(2025, 1, 7, 1, tzinfo=timezone.utc)
    end = start + timedelta(hours=hours)
    spec = replace(SPEC, start=start)
    runner = LocalModelRunner(models_dir=str(models_dir(args.models, data_dir)), call_timeout_seconds=5.0)
    defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(CSV)), model_runner=runner, automation_running=False)
    keys, partitions = ChainKeys.for_slug(spec.slug), build_partitions(spec)
    first, last = partitions.hour_key(start), partitions.hour_key(end - timedelta(hours=1))
    with benchkit.dagster_instance(data_dir) as instance:  # one, as a deployment has: not built again per run
        materialize_range(defs, [keys.feed_records], first, partitions.hour_key(end), instance)
        materialize_range(defs, [keys.predictions], first, last, instance)
        engine = engine_for()
        with engine.connect() as connection:
            predictions = connection.execute(sa.text("SELECT count(*) FROM crunch.predictions")).scalar_one()
        meter = benchkit.CpuMeter(data_dir / "pgdata")
        seconds, own_cpu, server_cpu = [], [], []
        for attempt in range(args.repeat):
            with engine.begin() as connection:  # score the same predictions afresh
                connection.execute(sa.text("DELETE FROM crunch.scores"))
                connection.execute(sa.text("UPDATE crunch.inputs SET status = 'RECEIVED', actuals = NULL, failure_value = NULL"))
            profiler = None
            if args.profile and attempt == args.repeat - 1:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            cpu_before = meter.read()
            began = time.perf_counter()
            materialize_range(defs, [keys.scores], first, last, instance)
            seconds.append(time.perf_counter() - began)
            cpu_after = meter.read()
            own_cpu.append(cpu_after[0] - cpu_before[0])
            server_cpu.append(cpu_after[1] - cpu_before[1])
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile)
            print(f"  scoring {attempt + 1}/{args.repeat}: {seconds[-1]:.2f} s = {predictions / seconds[-1]:,.0f} predictions/s "
                  f"[{benchkit.load_text()}]", flush=True)
        with engine.connect() as connection:
            scored = connection.execute(sa.text("SELECT count(*) FROM crunch.scores")).scalar_one()
    if scored != predictions:
        print(f"FAILED: {scored} scores for {predictions} predictions")
        return 1
    rates = benchkit.band([predictions / s for s in seconds])
    benchkit.figure(f"scores step: {predictions:,} predictions ({hours} h x {args.models} models): "
                    f"{rates.describe('predictions/s', 0)}")
    benchkit.figure("predictions per CPU-second (this process + PostgreSQL; what a loaded machine moves least): "
                    + benchkit.band([predictions / (own + server) for own, server in zip(own_cpu, server_cpu)]).describe(
                        "predictions/CPU-s", 0))
    per_thousand = 1000 / predictions
    benchkit.figure("CPU per 1,000 predictions: this process "
                    + benchkit.band([c * per_thousand for c in own_cpu]).describe("s", 3)
                    + "; PostgreSQL " + benchkit.band([c * per_thousand for c in server_cpu]).describe("s", 3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

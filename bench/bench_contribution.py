"""What ensembles, the metrics and contribution cost, at 10, 100 and 1,000 models over a week of
btc_updown's 60 s cycles (10,080 cycles), on the engine's own functions (no database: the store's
reads are measured by bench_rollups.py and bench_copies.py):

- rollup: `metrics.hour_statistics` of every hour of the week (what the rollups compute once per
  hour: IC, hit rate, returns, turnover, correlations with the field and the ensemble, drawdown, fnc
  and the leave-one-out contribution, N rebuilds of the ensemble per cycle), CPU seconds, and per
  hour (what a live rollup pays when an hour changes);
- build: `ensembles.cycle_rows` for every cycle (the ensemble of each cycle, built with its predictions);
- checkpoint: `checkpoints.payout_entries` of the week from its hourly snapshots, today (tiered, no
  metrics) against the contribution emission (the period's contribution and diversity read from
  the snapshots' statistics): medians and the ratio (target <= 2 at 100 models).

Answers are synthetic (seeded): each model's p_up = 0.5 + its skill x the true direction + noise,
2 % of answers missing. At 1,000 models the rollup is measured over --big-hours hours and scaled to
the week (printed as such).

    .venv/bin/python bench/bench_contribution.py [--models 10,100,1000] [--days 7] [--repeats 3] [--big-hours 6]
    .venv/bin/python bench/bench_contribution.py --smoke      # a few seconds: 10 and 100 models, 2 hours
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench import benchkit  # noqa: E402

START = datetime(2026, 11, 16, tzinfo=timezone.utc)


def world(models: int, hours: int, seed: int = 20261116):
    """(spec, rules, cycles by hour): resolved cycles with every model's answer, score and the
    ensemble's prediction as the engine builds it."""
    from competitions.btc_updown import logic
    from competitions.btc_updown.definitions import ENSEMBLES, METRICS, RULES, SPEC
    from crunch_assets import ensembles, metrics
    from crunch_assets.spec import EmissionPolicy
    from resources.store.rows import PredictionRow

    spec = replace(SPEC, ensembles=ENSEMBLES, metrics=METRICS, emission=EmissionPolicy.contribution())
    scope = spec.scopes[0]
    rng = random.Random(seed)
    skill = [rng.uniform(-0.05, 0.2) for _ in range(models)]
    ids = [f"model_{i:04d}" for i in range(models)]
    by_hour = []
    for h in range(hours):
        cycles = []
        for minute in range(60):
            at = START + timedelta(hours=h, minutes=minute)
            up = rng.random() < 0.5
            truth = {"y_up": up, "return": (1 if up else -1) * rng.uniform(1e-5, 1e-3)}
            rows = []
            for i, model in enumerate(ids):
                if rng.random() < 0.02:
                    rows.append(PredictionRow(model, "ABSENT", "no answer"))
                    continue
                p = min(1.0, max(0.0, 0.5 + skill[i] * (1 if up else -1) + rng.gauss(0, 0.1)))
                rows.append(PredictionRow(model, "PENDING", None, None, {"p_up": p, "form": "p_up"}))
            rows += ensembles.cycle_rows(spec, scope, rows)
            answers = {}
            for row in rows:
                value = logic.brier_skill(scope, row.inference_output, truth)["value"] if row.status == "PENDING" else 0.0
                answers[row.model_id] = metrics.StoredAnswer(row.status, row.inference_output, row.meta, value,
                                                             row.status == "PENDING")
            cycles.append(metrics.ResolvedCycle(scope.key, at, truth, 0.0, answers))
        by_hour.append(cycles)
    return spec, RULES, by_hour


def cpu() -> float:
    return time.process_time()


def bench_build(spec, by_hour) -> float:
    """CPU seconds to build every cycle's ensemble from its stored rows."""
    from crunch_assets import ensembles
    from resources.store.rows import PredictionRow

    scope = spec.scopes[0]
    rows_by_cycle = [[PredictionRow(m, a.status, None, None, a.output) for m, a in c.answers.items()
                      if not m.startswith("__")] for cycles in by_hour for c in cycles]
    began = cpu()
    for rows in rows_by_cycle:
        ensembles.cycle_rows(spec, scope, rows)
    return cpu() - began


def bench_rollup(spec, rules, by_hour) -> tuple[float, list, dict]:
    """CPU seconds for the hourly statistics of every hour; the snapshots carrying them."""
    from crunch_assets import metrics
    from resources.store.rows import SnapshotRow

    read = metrics.readers(spec, rules)
    scope = spec.scopes[0]
    began = cpu()
    stats = [metrics.hour_statistics(spec, scope, cycles, read) for cycles in by_hour]
    seconds = cpu() - began
    snapshots = []
    for cycles, hour_stats in zip(by_hour, stats):
        hour = cycles[0].cycle_at.replace(minute=0)
        values = {}
        for cycle in cycles:
            for model, answer in cycle.answers.items():
                values.setdefault(model, []).append(answer.value or 0.0)
        for model, v in values.items():
            snapshots.append(SnapshotRow(model, scope.key, hour, hour + timedelta(hours=1), len(v), math.fsum(v), 0.0,
                                         {}, {"scored": len(v)}, {"metrics": hour_stats.get(model, {})}))
    return seconds, snapshots, stats


def bench_checkpoint(spec, rules, snapshots, hours: int, repeats: int) -> tuple[float, float]:
    """Median wall seconds of payout_entries over the period: today's (tiered, no metrics) and with
    the contribution emission."""
    from crunch_assets.defs.checkpoints.assets import payout_entries
    from crunch_assets.spec import EmissionPolicy, MetricsPolicy
    from resources.store.rows import CycleRollupRow

    scope = spec.scopes[0]
    rollups = [CycleRollupRow(scope.key, START + timedelta(hours=h), START + timedelta(hours=h + 1), 60, 0, 0.0)
               for h in range(hours)]
    end = START + timedelta(hours=hours)
    today = replace(spec, ensembles=(), metrics=MetricsPolicy(), emission=EmissionPolicy.tiered())
    plain = [replace(s, meta={}) for s in snapshots if not s.model_id.startswith("__")]
    times = {"today": [], "contribution": []}
    for _ in range(repeats):
        for label, which, rows in (("today", today, plain), ("contribution", spec, snapshots)):
            began = time.perf_counter()
            payout_entries(which, rules, None, rows, rollups, START, end, registry=[])
            times[label].append(time.perf_counter() - began)
    return statistics.median(times["today"]), statistics.median(times["contribution"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="10,100,1000")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big-hours", type=int, default=6, help="hours measured at 1,000 models (scaled to --days)")
    parser.add_argument("--smoke", action="store_true", help="10 and 100 models over 2 hours, one repeat")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.days, args.repeats, args.big_hours = "10,100", 2 / 24, 1, 2
    week_hours = round(args.days * 24)
    benchkit.smoke_banner(args)
    benchkit.conditions(f"bench_contribution: {week_hours} hours of 60 s cycles, in memory")
    print(f"{'models':>7} {'hours':>5} {'build CPU s':>11} {'rollup CPU s':>12} {'per hour s':>10} "
          f"{'scaled to period s':>18} {'payout today s':>14} {'with contribution s':>19} {'added s':>8}")
    for models in (int(m) for m in args.models.split(",")):
        hours = week_hours if models < 1000 else min(week_hours, args.big_hours)
        spec, rules, by_hour = world(models, hours)
        build = bench_build(spec, by_hour)
        rollup, snapshots, _ = bench_rollup(spec, rules, by_hour)
        if hours < week_hours:  # the checkpoint reads a whole period: the measured hours repeated, shifted by whole hours
            snapshots = [replace(s, period_start=s.period_start + timedelta(hours=k),
                                 period_end=s.period_end + timedelta(hours=k))
                         for k in range(0, week_hours, hours) for s in snapshots
                         if s.period_start + timedelta(hours=k) < START + timedelta(hours=week_hours)]
        today, contribution = bench_checkpoint(spec, rules, snapshots, week_hours, args.repeats)
        scaled = rollup / hours * week_hours
        benchkit.figure(f"{models:>7} {hours:>5} {build:>11.2f} {rollup:>12.2f} {rollup / hours:>10.3f} "
                        f"{scaled:>18.1f}{'*' if hours < week_hours else ' '} {today:>14.3f} {contribution:>19.3f} "
                        f"{contribution - today:>8.3f}")
    print("* measured over fewer hours and scaled. payout columns: checkpoints.payout_entries over the whole period "
          "(the part of a checkpoint the contribution emission changes; a checkpoint also reads the period, hashes "
          "its scores and runs copy detection: bench_rollups.py, bench_copies.py)")
    benchkit.figure("done")


if __name__ == "__main__":
    main()

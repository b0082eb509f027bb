"""Replay a time range through a competition's asset chain in one process, exactly as a backfill
would (same assets, same partitions, no as_of): used by tests and benchmarks.

In production, a replay is a backfill launched from the UI or `dagster asset materialize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from crunch_assets.assets import ChainKeys
from crunch_assets.partitions import build_partitions
from crunch_assets.spec import CompetitionSpec

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass
class ReplayTimings:
    seconds_by_step: dict[str, float]


def chain_assets(defs: dg.Definitions, keys: list[dg.AssetKey]) -> list[dg.AssetsDefinition]:
    """The definitions' assets for `keys`, unbound (to materialize with defs.resources)."""
    return [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and set(a.keys) & set(keys)]


def _materialize_range(
    defs: dg.Definitions, keys: list[dg.AssetKey], first_key: str, last_key: str, instance: dg.DagsterInstance | None
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        chain_assets(defs, keys),
        resources=defs.resources,
        instance=instance,
        tags={RANGE_START_TAG: first_key, RANGE_END_TAG: last_key},
    )


def replay(
    defs: dg.Definitions,
    spec: CompetitionSpec,
    start: datetime,
    end: datetime,
    instance: dg.DagsterInstance | None = None,
    days_per_run: int = 1,
) -> ReplayTimings:
    """Materialize [start, end) (hour boundaries): feed (one hour further, for the last horizons),
    predictions, scores, then snapshots and leaderboards of the days touched, then every closed
    checkpoint period inside the range."""
    import time

    partitions = build_partitions(spec)
    keys = ChainKeys.for_slug(spec.slug)
    timings: dict[str, float] = {}

    def timed(step: str, fn) -> None:
        began = time.perf_counter()
        fn()
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - began

    chunk = timedelta(days=days_per_run)
    cursor = start
    while cursor < end:
        chunk_end = min(cursor + chunk, end)
        first, last = partitions.hour_key(cursor), partitions.hour_key(chunk_end - timedelta(hours=1))
        feed_last = partitions.hour_key(chunk_end)
        timed("feed_records", lambda: _materialize_range(defs, [keys.feed_records], first, feed_last, instance))
        timed("predictions", lambda: _materialize_range(defs, [keys.predictions], first, last, instance))
        timed("scores", lambda: _materialize_range(defs, [keys.scores], first, last, instance))
        cursor = chunk_end
    day = start.replace(hour=0)
    while day < end:
        key = partitions.day_key(day)
        timed("snapshots+leaderboard", lambda: _materialize_range(defs, [keys.snapshots, keys.leaderboard], key, key, instance))
        day += timedelta(days=1)
    checkpoint_defs = partitions.checkpoint
    for key in checkpoint_defs.get_partition_keys():
        window = checkpoint_defs.time_window_for_partition_key(key)
        if window.start >= start.replace(hour=0) and window.end <= end:
            timed("emission_checkpoints", lambda: _materialize_range(defs, [keys.emission_checkpoints], key, key, instance))
    return ReplayTimings(timings)

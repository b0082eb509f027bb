"""Replay a time range through a competition's asset chain in one process, exactly as a backfill
does (same assets, same partitions, no as_of): used by tests, benchmarks and `crunch-dagster replay`.

In production a replay is a backfill launched from the UI, or
`dagster asset materialize --partition-range A...B` from the command line.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

import dagster as dg

from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import build_partitions
from crunch_assets.spec import CompetitionSpec

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


# The runs' console logger at WARNING: a command's progress bar and summary are its output (the
# runs' full logs are in the instance).
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class ReplayTimings:
    seconds_by_step: dict[str, float] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)


def chain_assets(defs: dg.Definitions, keys: list[dg.AssetKey]) -> list[dg.AssetsDefinition]:
    """The definitions' assets for `keys`, unbound (to materialize with defs.resources)."""
    return [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and set(a.keys) & set(keys)]


def materialize_range(
    defs: dg.Definitions, keys: list[dg.AssetKey], first_key: str, last_key: str,
    instance: dg.DagsterInstance | None = None, run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        chain_assets(defs, keys),
        resources=defs.resources,
        instance=instance,
        tags={RANGE_START_TAG: first_key, RANGE_END_TAG: last_key},
        run_config=run_config,
    )


def deployment_instance() -> dg.DagsterInstance:
    """The Dagster instance of this deployment, the one its UI shows: $DAGSTER_HOME's when set
    (`crunch-dagster serve` sets it to a copy of dagster.yaml), otherwise the checkout's
    dagster.yaml (what ./scripts/demo's `dagster dev` reads). Both keep Dagster's storage on the
    competition store's PostgreSQL, so a replay from a second shell shows in the running UI."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    from resources.database_url import PROJECT_ROOT

    return dg.DagsterInstance.from_config(str(PROJECT_ROOT))


def replay(
    defs: dg.Definitions,
    spec: CompetitionSpec,
    start: datetime,
    end: datetime,
    instance: dg.DagsterInstance | None = None,
    days_per_run: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
    quiet: bool = False,
) -> ReplayTimings:
    """Materialize [start, end) (hour boundaries): the feed (up to the last resolutions), predictions
    and scores a chunk at a time, then snapshots and leaderboards of the days touched, then every
    closed checkpoint period inside the range, in order. `quiet`: the runs log warnings only to
    the console."""
    partitions = build_partitions(spec)
    keys = ChainKeys.for_slug(spec.slug)
    timings = ReplayTimings()
    instance = instance or dg.DagsterInstance.ephemeral()

    def timed(step: str, keys_: list[dg.AssetKey], first_key: str, last_key: str) -> None:
        began = time.perf_counter()
        materialize_range(defs, keys_, first_key, last_key, instance, run_config=QUIET_RUN_CONFIG if quiet else None)
        timings.seconds_by_step[step] = timings.seconds_by_step.get(step, 0.0) + time.perf_counter() - began

    horizon = timedelta(seconds=spec.max_horizon_seconds)
    chunk = timedelta(days=days_per_run)
    total_chunks = max(1, -(-int((end - start).total_seconds()) // int(chunk.total_seconds())))
    cursor, done = start, 0
    while cursor < end:
        chunk_end = min(cursor + chunk, end)
        first, last = partitions.hour_key(cursor), partitions.hour_key(chunk_end - timedelta(hours=1))
        feed_last = partitions.hour_key(chunk_end + horizon)
        timed("feed_records", [keys.feed_records], first, feed_last)
        timed("predictions", [keys.predictions], first, last)
        timed("scores", [keys.scores], first, last)
        cursor = chunk_end
        done += 1
        if progress:
            progress("cycles", done, total_chunks)
    first_day, last_day = partitions.day_key(start), partitions.day_key(end - timedelta(microseconds=1))
    timed("snapshots+leaderboard", [keys.snapshots], first_day, last_day)
    timed("snapshots+leaderboard", [keys.leaderboard], first_day, last_day)
    periods = partitions.checkpoint
    # Closed periods that overlap the range (the first may begin before `start`, at midnight: a
    # competition starting at 01:00 still has its first day's checkpoint); none wholly before it.
    closed = [(key, s, e) for key, s, e in periods.periods_between(start.replace(hour=0) - periods.interval, end)
              if s >= start.replace(hour=0) and e > start and e <= end]
    if periods.is_dynamic and closed:
        instance.add_dynamic_partitions(periods.definition.name, [key for key, _, _ in closed])
    for key, _, _ in closed:  # in order: each chains to the previous one's root
        timed("emission_checkpoints", [keys.emission_checkpoints], key, key)
        timings.checkpoints.append(key)
    if progress:
        progress("checkpoints", len(closed), len(closed))
    return timings

"""Run config shared by the chain's assets: how far into its window a run goes.

`as_of` unset (a backfill, a CLI or UI materialization): the whole window, decided by the stored
data alone. `as_of` set (what the sensors launch live): up to that instant, and the wall clock may
decide what the data cannot yet (a live cycle waits for its due time; a cycle whose truth never
came is voided once its deadline has passed).
"""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg
from resources import clock


class WindowRunConfig(dg.Config):
    as_of: str | None = None  # ISO-8601 instant with a UTC offset; unset: the window's end


def parse_as_of(config: WindowRunConfig) -> datetime | None:
    if not config.as_of:
        return None
    wanted = datetime.fromisoformat(config.as_of)
    if wanted.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware UTC, got {config.as_of!r}")
    return wanted.astimezone(timezone.utc)


def resolve_as_of(config: WindowRunConfig, window: dg.TimeWindow, wait_up_to_seconds: float = 0.0) -> datetime:
    """How far into the window this run goes: never past the window, never into the future. A live
    run launched ahead of its cycle (at most wait_up_to_seconds early) waits for the cycle time."""
    wanted = parse_as_of(config)
    if wanted is None:
        return min(window.end, clock.now())
    early_seconds = (wanted - clock.now()).total_seconds()
    if 0 < early_seconds <= wait_up_to_seconds:
        clock.sleep(early_seconds)
    return min(wanted, window.end, clock.now())


def as_of_run_config(op_names: list[str], as_of: datetime) -> dict:
    return {"ops": {name: {"config": {"as_of": as_of.isoformat()}} for name in op_names}}

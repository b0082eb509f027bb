"""Whether a live run of a window is alive: read from the run records and the heartbeat the live
run stamps (crunch_assets/defs/live_window/window.py `beat`, `last_sign_of_life`). The cycle
sensor replaces a dead run; the settlement, rollup and feed sensors leave to a live run of the
current hour what it does itself.

`liveness` is the pure verdict over `LiveRunRecord`s; `scan_liveness` gathers them (one run
records query; a heartbeat read per started run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import dagster as dg

from crunch_assets.defs.live_window.window import COMPETITION_TAG, WINDOW_TAG, last_sign_of_life
from crunch_assets.partitions import floor_hour

# How far back the scan looks: a window's runs are created at most an hour and a lead before it ends.
SCAN_HOURS = 3
# A run launched and not started yet (no queue): given this long to start before it counts as dead.
LAUNCH_GRACE = timedelta(minutes=2)
# Dagster's not-finished statuses (its NOT_FINISHED_STATUSES, spelled out to avoid a private import).
NOT_FINISHED = frozenset({
    dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.SUSPENDED,
    dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
})


@dataclass(frozen=True)
class LiveRunRecord:
    """One live run as its record and heartbeat show it."""

    window: str | None  # the window start (ISO) of its crunch/live_window tag
    run_id: str
    status: dg.DagsterRunStatus
    created: datetime
    started: datetime | None = None
    ended: datetime | None = None
    last_sign: datetime | None = None  # newest heartbeat or event (read for started runs only)


@dataclass(frozen=True)
class Liveness:
    """Per window start (ISO): whether a live run of it is alive, its newest run's id, and when
    that run ended."""

    alive: dict[str, bool] = field(default_factory=dict)
    newest: dict[str, str] = field(default_factory=dict)
    ended: dict[str, datetime] = field(default_factory=dict)

    def is_alive(self, window_start: datetime) -> bool:
        return self.alive.get(window_start.isoformat(), False)

    def current_is_alive(self, now: datetime) -> bool:
        """A live run of the hour holding `now` is alive."""
        return self.is_alive(floor_hour(now))


def run_is_alive(run: LiveRunRecord, now: datetime, stale_after: timedelta) -> bool:
    """Queued: waiting for a slot of the run queue, not dead (a second one would queue beside it).
    Launched and not started: for at most LAUNCH_GRACE. Started: while it heartbeats or logs.
    Canceling or finished: dead."""
    if run.status not in NOT_FINISHED or run.status == dg.DagsterRunStatus.CANCELING:
        return False
    if run.status == dg.DagsterRunStatus.STARTED:
        return now - (run.last_sign or run.started or run.created) < stale_after
    if run.status == dg.DagsterRunStatus.QUEUED:
        return True
    return now - run.created < LAUNCH_GRACE


def liveness(runs: list[LiveRunRecord], now: datetime, stale_after: timedelta) -> Liveness:
    """`runs` newest first."""
    result = Liveness()
    for run in runs:
        if run.window not in result.newest:
            result.newest[run.window] = run.run_id
            if run.ended is not None:
                result.ended[run.window] = run.ended
        result.alive[run.window] = result.alive.get(run.window, False) or run_is_alive(run, now, stale_after)
    return result


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=timezone.utc)


def live_run_records(instance: dg.DagsterInstance, slug: str, job_name: str, now: datetime) -> list[LiveRunRecord]:
    """The competition's live runs created in the last SCAN_HOURS hours, newest first."""
    runs = []
    for record in instance.get_run_records(filters=dg.RunsFilter(
        job_name=job_name, tags={COMPETITION_TAG: slug}, created_after=now - timedelta(hours=SCAN_HOURS),
    )):
        run = record.dagster_run
        started = _utc(record.start_time) or record.create_timestamp.astimezone(timezone.utc)
        runs.append(LiveRunRecord(
            window=run.tags.get(WINDOW_TAG), run_id=run.run_id, status=run.status,
            created=record.create_timestamp.astimezone(timezone.utc), started=started, ended=_utc(record.end_time),
            last_sign=last_sign_of_life(instance, run.run_id) if run.status == dg.DagsterRunStatus.STARTED else None,
        ))
    return runs


def scan_liveness(instance: dg.DagsterInstance, slug: str, job_name: str, now: datetime,
                  stale_after: timedelta) -> Liveness:
    return liveness(live_run_records(instance, slug, job_name, now), now, stale_after)

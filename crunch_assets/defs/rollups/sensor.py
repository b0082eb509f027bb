"""The rollup sensor: new scores or voided cycles outside what the live run rolls up -> snapshots
and leaderboard of their days.

`decide_rollups` is the decision over `RollupFacts`; `build_rollup_sensor` the wrapper. The cursor
is the store's change marker "<last score id>:<voided cycles>"."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from crunch_assets.decisions import Decision, floor_to
from crunch_assets.defs.live_window.liveness import scan_liveness
from crunch_assets.defs.live_window.window import stale_after_seconds
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions, floor_hour
from crunch_assets.run_config import as_of_run_config
from crunch_assets.spec import CompetitionSpec
from resources import clock
from resources.store.database import CrunchDatabase

# A live run of the current hour rolls up its last hours itself (every ROLLUP_EVERY_SECONDS).
LIVE_ROLLS_UP_HOURS = 2


def read_cursor(cursor: str | None) -> tuple[int, int]:
    """(last score id, voided cycles) the sensor has rolled up to."""
    last_score_id, voided = (int(x) for x in (cursor or "0:0").split(":"))
    return last_score_id, voided


def voided_changed(marker: str, cursor: str | None) -> bool:
    return int(marker.split(":")[1]) != read_cursor(cursor)[1]


@dataclass(frozen=True)
class RollupFacts:
    now: datetime
    marker: str  # the store's change marker now
    cursor: str | None  # the marker last rolled up to
    live_run_alive: bool = False
    changed_first: datetime | None = None  # first and last cycle of the scores written since the cursor
    changed_last: datetime | None = None
    voided_days: tuple[datetime, ...] = ()  # days with voided cycles of periods not yet paid (read when voids moved)


def decide_rollups(spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys, facts: RollupFacts) -> Decision:
    if facts.marker == facts.cursor:
        return Decision.skip("no new scores or voided cycles")
    now = facts.now
    days: dict[datetime, str] = {}
    first, last = facts.changed_first, facts.changed_last
    if facts.live_run_alive and first is not None and first >= floor_hour(now) - timedelta(hours=LIVE_ROLLS_UP_HOURS):
        first = None  # the live run rolls these hours up itself
    if first is not None:
        day = first.replace(hour=0, minute=0, second=0, microsecond=0)
        while day <= last:
            days[day] = "new scores"
            day += timedelta(days=1)
    if voided_changed(facts.marker, facts.cursor):  # voided cycles of periods not yet paid
        # today's too: the live run rolls up only its last hours, and a cycle can be voided later
        for day in facts.voided_days:
            days.setdefault(day, "voided cycles")
    as_of = floor_to(now, 60)
    requested = [(dg.RunRequest(
        run_key=f"{spec.slug}:rollup:{day.date().isoformat()}:{facts.marker}",
        partition_key=partitions.day_key(day),
        run_config=as_of_run_config([keys.op("snapshots"), keys.op("leaderboard")], min(as_of, day + timedelta(days=1))),
    ), f"{day.date().isoformat()}: {days[day]}") for day in sorted(days) if day <= now]
    return Decision.of(requested, otherwise="nothing to roll up", cursor=facts.marker)


def build_rollup_sensor(spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys, rollup_job,
                        live_job_name: str, status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    stale_after = timedelta(seconds=stale_after_seconds(spec))

    @dg.sensor(
        name=f"{spec.slug}__rollup_sensor", job=rollup_job, default_status=status,
        minimum_interval_seconds=spec.rollup_sensor_interval_seconds,
        description="Refreshes snapshots and the leaderboard of the days that got new scores or voided cycles.",
    )
    def rollup_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase):
        store = database.competition(spec.slug)
        now, marker, cursor = clock.now(), store.change_marker(), context.cursor
        if marker == cursor:
            return decide_rollups(spec, partitions, keys, RollupFacts(now, marker, cursor)).sensor_result()
        first, last = store.changed_days(read_cursor(cursor)[0])
        live = scan_liveness(context.instance, spec.slug, live_job_name, now, stale_after).current_is_alive(now)
        voided = tuple(store.voided_days(store.locked_until())) if voided_changed(marker, cursor) else ()
        facts = RollupFacts(now, marker, cursor, live, first, last, voided)
        return decide_rollups(spec, partitions, keys, facts).sensor_result()

    return rollup_sensor

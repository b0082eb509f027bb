"""The cycle sensor: one live run per hour window (crunch_assets/defs/live_window/window.py:
cycles, scores and rollups of the hour, as they fall due), replaced when it stops heartbeating; a
live run for any past window with cycles missing inside the catch-up bound.

`decide_cycles` is the decision over `CycleFacts`; `build_cycle_sensor` the wrapper. Each
evaluation is one run records query, a heartbeat read per started live run and one indexed store
query: well inside Dagster's 60 s sensor timeout."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from crunch_assets.decisions import Decision
from crunch_assets.defs.live_window.liveness import Liveness, scan_liveness
from crunch_assets.defs.live_window.window import WINDOW_TAG, stale_after_seconds
from crunch_assets.partitions import floor_hour
from crunch_assets.spec import CompetitionSpec
from resources import clock
from resources.store.database import CrunchDatabase

# A missed cycle is filled only once the run that should have stored it has had this long.
FILL_GRACE_SECONDS = 30
# A window's newest run ended this recently: its exit may still be settling; not refilled yet.
REFILL_AFTER = timedelta(seconds=60)


@dataclass(frozen=True)
class CycleFacts:
    now: datetime
    liveness: Liveness
    # (cycle, scope key) stored among the cycles `cycles_to_fill` lists
    stored_cycles: frozenset[tuple[datetime, str]] = frozenset()


def cycles_to_fill(spec: CompetitionSpec, now: datetime) -> list[tuple[datetime, object]]:
    """The due (cycle, scope) pairs of past windows inside the catch-up bound that a missing one
    would be filled for: from max(now - max_catchup_seconds, start) to the current hour, less the
    last FILL_GRACE_SECONDS."""
    catch_up_from = max(now - timedelta(seconds=spec.max_catchup_seconds), spec.start)
    fill_until = fill_until_of(now)
    return spec.cycle_times(catch_up_from, fill_until) if fill_until > catch_up_from else []


def fill_until_of(now: datetime) -> datetime:
    return min(now - timedelta(seconds=FILL_GRACE_SECONDS), floor_hour(now))


def live_request(slug: str, window_start: datetime, replacing: str | None, why: str) -> dg.RunRequest:
    key = window_start.isoformat()
    return dg.RunRequest(
        # the first run of a window, or the one after a given run: a replacement is never deduplicated away
        run_key=f"{slug}:live:{key}:after:{replacing or 'none'}",
        run_config={"ops": {f"{slug}__live_window": {"config": {"window_start": key}}}},
        tags={WINDOW_TAG: key, "crunch/launched_because": why},
    )


def decide_cycles(spec: CompetitionSpec, facts: CycleFacts) -> Decision:
    """A live run for the current hour when none is alive; the next hour's at least
    cycle_lead_seconds early, whatever the phase of the sensor's ticks (so its process has booted
    and its models started when the hour begins); and one for each past window with
    cycles missing inside the catch-up bound (a run killed at hh:59 leaves hh:59 missing), unless
    a run of it is alive or its newest run ended in the last minute."""
    now, live = facts.now, facts.liveness
    if now < spec.start - timedelta(seconds=spec.cycle_lead_seconds):
        return Decision.skip(f"the competition starts at {spec.start.isoformat()}")
    requested: list[tuple[dg.RunRequest, str]] = []

    def launch(window: datetime, why: str) -> None:
        requested.append((live_request(spec.slug, window, live.newest.get(window.isoformat()), why), why))

    current = floor_hour(now)
    if current >= spec.start and not live.is_alive(current):
        launch(current, "current window")
    upcoming = current + timedelta(hours=1)
    # The sensor ticks every cycle_sensor_interval_seconds: a tick that waited for the lead itself
    # could come up to an interval later (a 1,000-model deployment's run was launched 8 s before
    # the hour with a 30 s lead and a 30 s interval, and its first cycle was 16 s late). So the
    # tick before that launches: the run gets at least the lead, at most the lead and an interval.
    launch_within = timedelta(seconds=spec.cycle_lead_seconds + spec.cycle_sensor_interval_seconds)
    if upcoming - now <= launch_within and not live.is_alive(upcoming):
        launch(upcoming, "next window, launched early")
    expected = cycles_to_fill(spec, now)
    missing = sorted({floor_hour(c) for c, scope in expected if (c, scope.key) not in facts.stored_cycles})
    for window in missing:
        ended = live.ended.get(window.isoformat())
        if not live.is_alive(window) and (ended is None or now - ended > REFILL_AFTER):
            launch(window, "missed cycles in a past window")
    return Decision.of(requested, otherwise=f"live run of {current.isoformat()} alive; nothing missing")


def build_cycle_sensor(spec: CompetitionSpec, live_job: dg.JobDefinition, status: dg.DefaultSensorStatus
                       ) -> dg.SensorDefinition:
    stale_after = timedelta(seconds=stale_after_seconds(spec))

    @dg.sensor(
        name=f"{spec.slug}__cycle_sensor", job=live_job, default_status=status,
        minimum_interval_seconds=spec.cycle_sensor_interval_seconds,
        description="Keeps one live run per hour window going (launched before the hour, replaced when it stops "
                    "heartbeating) and fills the missed cycles of past windows.",
    )
    def cycle_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase):
        now = clock.now()
        expected = cycles_to_fill(spec, now)
        stored = database.competition(spec.slug).stored_cycles(expected[0][0], fill_until_of(now)) if expected else set()
        facts = CycleFacts(now, scan_liveness(context.instance, spec.slug, live_job.name, now, stale_after),
                           frozenset(stored))
        return decide_cycles(spec, facts).sensor_result()

    return cycle_sensor

"""The settlement sensor: cycles no live run covers whose horizon has passed and whose feed is
fetched -> scores; cycles past their void deadline -> a scores run that voids them.

`decide_settlement` is the decision over `SettlementFacts`; `build_settlement_sensor` the wrapper."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from crunch_assets.decisions import Decision, floor_to
from crunch_assets.defs.feed.assets import feed_streams
from crunch_assets.defs.live_window.liveness import scan_liveness
from crunch_assets.defs.live_window.window import stale_after_seconds
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions, floor_hour
from crunch_assets.run_config import as_of_run_config
from crunch_assets.spec import CompetitionSpec
from resources import clock
from resources.feeds.base import FeedResource
from resources.store.database import CrunchDatabase


@dataclass(frozen=True)
class SettlementFacts:
    now: datetime
    fetched_until: datetime | None  # how far the feed is fetched (every stream), None: never
    live_run_alive: bool  # a live run of the current hour is alive: it settles what its horizons reach
    unsettled_hours: tuple[datetime, ...] = ()  # hours with unscored cycles, since the cursor, before settled_until
    overdue_hours: tuple[datetime, ...] = ()  # hours with cycles unscored past the void deadline


def settled_until(spec: CompetitionSpec, now: datetime, fetched_until: datetime) -> datetime:
    """Cycles resolving before this can be scored: the feed is fetched and the settle delay passed.
    (The fetched spans end just after what they saw.)"""
    return floor_to(min(fetched_until, now - timedelta(seconds=spec.settle_delay_seconds)), 1)


def void_deadline(spec: CompetitionSpec, now: datetime) -> datetime:
    return now - timedelta(seconds=spec.void_after_seconds)


def live_settles_from(spec: CompetitionSpec, now: datetime) -> datetime:
    """The first hour a live run of the current hour settles itself (its horizons reach back)."""
    return floor_hour(now - timedelta(seconds=spec.max_horizon_seconds)) - timedelta(hours=1)


def decide_settlement(spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys,
                      facts: SettlementFacts) -> Decision:
    if facts.fetched_until is None:
        return Decision.skip("the feed has not been fetched yet")
    now, slug = facts.now, spec.slug
    until = settled_until(spec, now, facts.fetched_until)
    live_from = live_settles_from(spec, now) if facts.live_run_alive else None
    hours = [h for h in facts.unsettled_hours if live_from is None or h < live_from]
    overdue = [h for h in facts.overdue_hours if (live_from is None or h < live_from) and h not in hours]
    settle = timedelta(seconds=spec.settle_delay_seconds)
    requested = [(dg.RunRequest(
        run_key=f"{slug}:scores:{hour.isoformat()}:{until.isoformat()}",
        partition_key=partitions.hour_key(hour),
        run_config=as_of_run_config([keys.op("scores")], min(now, until + settle)),
    ), f"{hour.isoformat()}: cycles settled up to {until.isoformat()}") for hour in hours] + [(dg.RunRequest(
        run_key=f"{slug}:void:{hour.isoformat()}:{floor_to(now, 60).isoformat()}",
        partition_key=partitions.hour_key(hour),
        run_config=as_of_run_config([keys.op("scores")], now),
    ), f"{hour.isoformat()}: cycles past the void deadline") for hour in overdue]
    return Decision.of(requested, otherwise=f"nothing newly settled up to {until.isoformat()}", cursor=until.isoformat())


def build_settlement_sensor(spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys,
                            scores_job, live_job_name: str, status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    stale_after = timedelta(seconds=stale_after_seconds(spec))

    @dg.sensor(
        name=f"{spec.slug}__settlement_sensor", job=scores_job, default_status=status,
        minimum_interval_seconds=spec.settlement_sensor_interval_seconds,
        description="Scores cycles once their horizon has passed and the feed is fetched; voids what can never be resolved.",
    )
    def settlement_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase, feed: FeedResource):
        """A live run settles the windows its horizons reach back to; this sensor scores what no live
        run covers (after a pause, a backfill's hours) and voids what is past its deadline."""
        now = clock.now()
        store = database.competition(spec.slug)
        live = scan_liveness(context.instance, spec.slug, live_job_name, now, stale_after).current_is_alive(now)
        fetched = database.feeds().fetched_until(feed_streams(spec, feed))
        if fetched is None:
            return decide_settlement(spec, partitions, keys, SettlementFacts(now, None, live)).sensor_result()
        since = datetime.fromisoformat(context.cursor) if context.cursor else None
        facts = SettlementFacts(
            now, fetched, live, tuple(store.unsettled_hours(since, settled_until(spec, now, fetched))),
            tuple(store.overdue_hours(void_deadline(spec, now))))
        return decide_settlement(spec, partitions, keys, facts).sensor_result()

    return settlement_sensor

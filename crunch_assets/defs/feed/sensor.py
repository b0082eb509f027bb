"""The feed sensor: keeps the feed current between sparse cycles (ground truth for them) when no
live run of the current hour does.

`decide_feed` is the decision over `FeedFacts`; `build_feed_sensor` the wrapper."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from crunch_assets.decisions import Decision, floor_to
from crunch_assets.defs.feed.assets import feed_streams
from crunch_assets.defs.live_window.liveness import scan_liveness
from crunch_assets.defs.live_window.window import stale_after_seconds
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions
from crunch_assets.spec import CompetitionSpec
from resources import clock
from resources.feeds.base import FeedResource
from resources.store.database import CrunchDatabase


@dataclass(frozen=True)
class FeedFacts:
    now: datetime
    live_run_alive: bool  # a live run of the current hour is alive: it fetches the feed itself
    granularity_seconds: int  # the feed's record length (0: ticks)
    fetched_until: datetime | None = None  # how far every stream is fetched, None: never


def decide_feed(spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys, facts: FeedFacts) -> Decision:
    if facts.live_run_alive:
        return Decision.skip("the live run keeps the feed current")
    latest_closed = floor_to(facts.now, max(facts.granularity_seconds, 1))
    if facts.fetched_until is not None and facts.fetched_until > latest_closed:
        return Decision.skip(f"feed fetched up to {facts.fetched_until.isoformat()}")
    request = dg.RunRequest(
        run_key=f"{spec.slug}:feed:{latest_closed.isoformat()}",
        partition_key=partitions.hour_key(latest_closed - timedelta(microseconds=1)),
        run_config={"ops": {keys.op("feed_records"): {"config": {"as_of": latest_closed.isoformat()}}}},
    )
    fetched = facts.fetched_until.isoformat() if facts.fetched_until else "never"
    return Decision.of([(request, f"fetched up to {fetched}, a record closed at {latest_closed.isoformat()}")], otherwise="")


def build_feed_sensor(spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys, feed_job,
                      live_job_name: str, status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    stale_after = timedelta(seconds=stale_after_seconds(spec))

    @dg.sensor(
        name=f"{spec.slug}__feed_sensor", job=feed_job, default_status=status,
        minimum_interval_seconds=max(spec.feed_poll_interval_seconds, spec.settlement_sensor_interval_seconds),
        description="Keeps the feed current between cycles (ground truth for sparse cycles).",
    )
    def feed_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase, feed: FeedResource):
        now = clock.now()
        live = scan_liveness(context.instance, spec.slug, live_job_name, now, stale_after).current_is_alive(now)
        fetched = None if live else database.feeds().fetched_until(feed_streams(spec, feed))
        return decide_feed(spec, partitions, keys, FeedFacts(now, live, feed.granularity_seconds, fetched)).sensor_result()

    return feed_sensor

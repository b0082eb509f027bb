"""The feed stage: `<slug>/feed_records` (hourly), `<slug>__feed_job` and the feed sensor."""

import dagster as dg

from crunch_assets.decisions import sensor_status
from crunch_assets.defs.feed.assets import build_feed_asset
from crunch_assets.defs.feed.sensor import build_feed_sensor
from crunch_assets.defs.stage import StageContext


def build_feed_definitions(stage: StageContext) -> dg.Definitions:
    spec, partitions, keys, jobs = stage.spec, stage.partitions, stage.keys, stage.jobs
    return dg.Definitions(
        assets=[build_feed_asset(spec, partitions, keys)],
        jobs=[jobs.feed],
        sensors=[build_feed_sensor(spec, partitions, keys, jobs.feed, jobs.live.name, sensor_status(stage.running))],
    )

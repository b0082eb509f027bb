"""The feed maintenance stage: `<slug>/feed_archive` (daily Parquet), the archive and retention
jobs and their schedules."""

import dagster as dg

from crunch_assets.defs.feed_maintenance.assets import build_feed_maintenance
from crunch_assets.defs.stage import StageContext


def build_feed_maintenance_definitions(stage: StageContext) -> dg.Definitions:
    spec = stage.spec
    assets, jobs, schedules = build_feed_maintenance(spec, stage.partitions, stage.keys,
                                                     retention_days=spec.feed_retention_days, running=stage.running)
    return dg.Definitions(assets=assets, jobs=jobs, schedules=schedules)

"""The rollups stage: `<slug>/snapshots` and `<slug>/leaderboard` (daily), `<slug>__rollup_job`,
the rollup sensor and the daily rollup schedule."""

import dagster as dg

from crunch_assets.decisions import schedule_status, sensor_status
from crunch_assets.defs.rollups.assets import build_rollup_assets
from crunch_assets.defs.rollups.schedule import build_daily_rollup_schedule
from crunch_assets.defs.rollups.sensor import build_rollup_sensor
from crunch_assets.defs.stage import StageContext


def build_rollups_definitions(stage: StageContext) -> dg.Definitions:
    spec, partitions, keys, jobs = stage.spec, stage.partitions, stage.keys, stage.jobs
    return dg.Definitions(
        assets=build_rollup_assets(spec, partitions, keys),
        jobs=[jobs.rollup],
        sensors=[build_rollup_sensor(spec, partitions, keys, jobs.rollup, jobs.live.name, sensor_status(stage.running))],
        schedules=[build_daily_rollup_schedule(spec, partitions, jobs.rollup, schedule_status(stage.running))],
    )

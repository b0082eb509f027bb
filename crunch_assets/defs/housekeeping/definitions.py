"""The housekeeping stage: `<slug>__purge_job` and its schedule (purge.py), the run failure
sensor, the lag checks and the lag sensor (observability.py)."""

import dagster as dg

from crunch_assets.defs.housekeeping.observability import build_observability
from crunch_assets.defs.housekeeping.purge import build_purge
from crunch_assets.defs.stage import StageContext


def build_housekeeping_definitions(stage: StageContext) -> dg.Definitions:
    """The purge job and schedule, the run failure sensor, the lag checks and their sensor."""
    purge_job, purge_schedule = build_purge(stage.spec, running=stage.running)
    sensors, checks = build_observability(stage.spec, stage.keys, running=stage.running)
    return dg.Definitions(jobs=[purge_job], schedules=[purge_schedule], sensors=sensors, asset_checks=checks)

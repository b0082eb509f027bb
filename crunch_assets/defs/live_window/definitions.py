"""The live window stage: `<slug>__live_job` (one long-lived run per hour window) and the cycle
sensor that keeps it going."""

import dagster as dg

from crunch_assets.decisions import sensor_status
from crunch_assets.defs.live_window.sensor import build_cycle_sensor
from crunch_assets.defs.stage import StageContext


def build_live_window_definitions(stage: StageContext) -> dg.Definitions:
    return dg.Definitions(jobs=[stage.jobs.live],
                          sensors=[build_cycle_sensor(stage.spec, stage.jobs.live, sensor_status(stage.running))])

"""The registry stage: `<slug>/model_registry`, `<slug>__model_registry_job` and the model
registry sensor."""

import dagster as dg

from crunch_assets.decisions import sensor_status
from crunch_assets.defs.registry.assets import build_registry_asset
from crunch_assets.defs.registry.sensor import build_registry_sensor
from crunch_assets.defs.stage import StageContext


def build_registry_definitions(stage: StageContext) -> dg.Definitions:
    spec, keys, jobs = stage.spec, stage.keys, stage.jobs
    return dg.Definitions(
        assets=[build_registry_asset(spec, keys)],
        jobs=[jobs.registry],
        sensors=[build_registry_sensor(spec, keys, jobs.registry, sensor_status(stage.running))],
    )

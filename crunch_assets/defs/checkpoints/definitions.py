"""The checkpoints stage: `<slug>/emission_checkpoints` (the checkpoint period),
`<slug>__checkpoint_job` and the checkpoint sensor."""

import dagster as dg

from crunch_assets.decisions import sensor_status
from crunch_assets.defs.checkpoints.assets import build_checkpoint_asset
from crunch_assets.defs.checkpoints.sensor import build_checkpoint_sensor
from crunch_assets.defs.stage import StageContext


def build_checkpoints_definitions(stage: StageContext) -> dg.Definitions:
    spec, partitions, keys, jobs = stage.spec, stage.partitions, stage.keys, stage.jobs
    asset = build_checkpoint_asset(spec, partitions, keys)
    return dg.Definitions(
        assets=dg.map_asset_specs(lambda a: a.merge_attributes(metadata=stage.rules_metadata), [asset]),
        jobs=[jobs.checkpoint],
        sensors=[build_checkpoint_sensor(spec, partitions, jobs.checkpoint, sensor_status(stage.running))],
    )

"""The scores stage: `<slug>/scores` (hourly; truth, scores, voids), `<slug>__score_job` and the
settlement sensor."""

import dagster as dg

from crunch_assets.decisions import sensor_status
from crunch_assets.defs.scores.assets import build_scores_asset
from crunch_assets.defs.scores.sensor import build_settlement_sensor
from crunch_assets.defs.stage import StageContext


def build_scores_definitions(stage: StageContext) -> dg.Definitions:
    spec, partitions, keys, jobs = stage.spec, stage.partitions, stage.keys, stage.jobs
    asset = build_scores_asset(spec, partitions, keys)
    return dg.Definitions(
        assets=dg.map_asset_specs(lambda a: a.merge_attributes(metadata=stage.rules_metadata), [asset]),
        jobs=[jobs.scores],
        sensors=[build_settlement_sensor(spec, partitions, keys, jobs.scores, jobs.live.name, sensor_status(stage.running))],
    )

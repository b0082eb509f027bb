"""The predictions stage: `<slug>/predictions` (hourly; inputs and predictions) and
`<slug>__cycle_job`. Its cycles run live in the live window stage (no sensor of its own)."""

import dagster as dg

from crunch_assets.defs.predictions.assets import build_predictions_asset
from crunch_assets.defs.stage import StageContext


def build_predictions_definitions(stage: StageContext) -> dg.Definitions:
    return dg.Definitions(assets=[build_predictions_asset(stage.spec, stage.partitions, stage.keys)],
                          jobs=[stage.jobs.cycle])

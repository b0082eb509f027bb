"""The scores stage's asset check, evaluated inside the asset (and the live window) it guards."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from resources.store.competition import CompetitionStore

SCORES_FINITE = "scores_are_finite_and_unique"


def check_scores_finite(store: CompetitionStore, key: dg.AssetKey, start: datetime, end: datetime) -> dg.AssetCheckResult:
    """Every score of the window is finite and unique (one per prediction, one per model, scope and
    cycle): what the rollups average and the checkpoint pays on."""
    scores, non_finite, duplicates = store.score_value_problems(start, end)
    return dg.AssetCheckResult(
        asset_key=key, check_name=SCORES_FINITE, passed=non_finite == 0 and duplicates == 0,
        metadata={"scores": scores, "non_finite": non_finite, "duplicates": duplicates},
    )

"""The predictions stage's asset check, evaluated inside the asset (and the live window) it guards."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from crunch_assets.spec import CompetitionSpec
from resources.store.competition import CompetitionStore

EVERY_CYCLE_STORED = "every_due_cycle_has_predictions"


def check_every_cycle_stored(
    spec: CompetitionSpec, store: CompetitionStore, key: dg.AssetKey, start: datetime, end: datetime,
    waiting: list[str] | None = None,
) -> dg.AssetCheckResult:
    """Every cycle due in [start, end) has its input and predictions; a missing cycle would
    silently shift every mean."""
    counts = store.cycle_prediction_counts(start, end)
    due = spec.cycle_times(start, end)
    missing = [f"{c.isoformat()} {s.key}" for c, s in due if (c, s.key) not in counts]
    empty = [f"{c.isoformat()} {k}" for (c, k), n in counts.items() if n == 0]
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=EVERY_CYCLE_STORED,
        passed=not missing and not empty,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"cycles_due": len(due), "cycles_missing": len(missing), "cycles_without_predictions": len(empty),
                  "first_missing": missing[:5] + empty[:5], "waiting_for_feed": (waiting or [])[:5]},
    )

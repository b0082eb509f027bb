"""Standings: every model's score over a time range, per scope and combined, under the declared
eligibility policy. The leaderboard windows, the leaderboard's payout column and the checkpoint
all call `standings`, so what the UI shows for a period is what is paid for it.

Inputs are the hourly rollups: per (model, scope, hour) a snapshot (score rows n, their value sum,
and the failure values of the cycles the model has rows in), and per (scope, hour) the cycles that
count (resolved, not voided) with their failure values. Under `every_cycle` a model's mean over a
scope is

    (value sum + failure values of the counted cycles it has no row in) / counted cycles

so a cycle a model missed (it had not joined, it had left) counts at that cycle's failure value,
exactly as an ABSENT prediction does. Under `min_coverage` the mean is over its own rows, and the
model is eligible for rewards only with rows in at least that fraction of the counted cycles.
The combined value is the weighted mean of the scope means (declared scope weights).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Sequence

from crunch_assets.spec import Eligibility, Scope
from resources.store.rows import CycleRollupRow, SnapshotRow

STATUS_KEYS = ("scored", "failed", "absent", "rejected")


@dataclass(frozen=True)
class ScopeStanding:
    scope_key: str
    value: float | None
    cycles: int  # counted cycles of the scope in the range
    predictions: int  # the model's score rows among them
    value_sum: float
    missed_failure_sum: float  # what the cycles it missed count at (every_cycle)

    @property
    def coverage(self) -> float:
        return self.predictions / self.cycles if self.cycles else 0.0


@dataclass(frozen=True)
class Standing:
    model_id: str
    value: float | None
    scopes: dict[str, ScopeStanding]
    cycles: int
    predictions: int
    eligible: bool
    voided_cycles: int
    status_counts: dict[str, int] = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        return self.predictions / self.cycles if self.cycles else 0.0


def in_range(period_start: datetime, period_end: datetime, start: datetime, end: datetime) -> bool:
    """An hourly row belongs to [start, end) when it starts there and ends by `end`."""
    return period_start >= start and period_end <= end


def standings(
    snapshots: Iterable[SnapshotRow],
    rollups: Iterable[CycleRollupRow],
    scopes: Sequence[Scope],
    eligibility: Eligibility,
    start: datetime,
    end: datetime,
) -> dict[str, Standing]:
    """model_id -> Standing over the hourly rows in [start, end), for every model with a row."""
    weights = {scope.key: scope.weight for scope in scopes}
    cycles: dict[str, int] = defaultdict(int)
    failure_sums: dict[str, float] = defaultdict(float)
    voided = 0
    for row in rollups:
        if in_range(row.period_start, row.period_end, start, end):
            cycles[row.scope_key] += row.cycle_count
            failure_sums[row.scope_key] += row.failure_value_sum
            voided += row.voided_count
    per_model: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0, 0.0, 0.0]))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATUS_KEYS, 0))
    for row in snapshots:
        if not in_range(row.period_start, row.period_end, start, end) or row.prediction_count <= 0:
            continue
        totals = per_model[row.model_id][row.scope_key]
        totals[0] += row.prediction_count
        totals[1] += row.value_sum
        totals[2] += row.failure_value_sum
        for key in STATUS_KEYS:
            counts[row.model_id][key] += int(row.status_counts.get(key, 0))
    result = {}
    scope_keys = sorted(set(cycles) | {k for model in per_model.values() for k in model})
    for model_id, by_scope in per_model.items():
        scope_standings = {}
        for key in scope_keys:
            n, value_sum, covered_failures = by_scope.get(key, (0, 0.0, 0.0))
            n = int(n)
            counted = max(cycles.get(key, 0), n)  # never fewer cycles than the model's own rows
            missed = failure_sums.get(key, 0.0) - covered_failures if counted > n else 0.0
            if eligibility.pads_missing_cycles:
                value = (value_sum + missed) / counted if counted else None
            else:
                value = value_sum / n if n else None
            scope_standings[key] = ScopeStanding(key, value, counted, n, value_sum, missed)
        combined = combine(scope_standings, weights)
        total_cycles = sum(s.cycles for s in scope_standings.values())
        total_predictions = sum(s.predictions for s in scope_standings.values())
        coverage = total_predictions / total_cycles if total_cycles else 0.0
        eligible = combined is not None and (
            eligibility.pads_missing_cycles or coverage + 1e-12 >= eligibility.min_coverage
        )
        result[model_id] = Standing(
            model_id, combined, scope_standings, total_cycles, total_predictions, eligible, voided, counts[model_id]
        )
    return result


def combine(scope_standings: dict[str, ScopeStanding], weights: dict[str, float]) -> float | None:
    """The weighted mean of the scope values that exist (a scope no longer declared weighs 1)."""
    weighted = [(weights.get(key, 1.0), s.value) for key, s in scope_standings.items() if s.value is not None]
    total_weight = math.fsum(w for w, _ in weighted)
    if not weighted or total_weight <= 0:
        return None
    return math.fsum(w * v for w, v in weighted) / total_weight


def rank_models(values: dict[str, float | None], descending: bool = True) -> list[str]:
    """Model ids best first; models without a value last; ties broken by model id so the order
    never depends on insertion order."""
    valued = [(model_id, value) for model_id, value in values.items() if value is not None]
    unvalued = sorted(model_id for model_id, value in values.items() if value is None)
    valued.sort(key=lambda item: ((-item[1] if descending else item[1]), item[0]))
    return [model_id for model_id, _ in valued] + unvalued


def payout_order(standings_by_model: dict[str, Standing], descending: bool) -> list[str]:
    """Eligible models by value (best first), then the ineligible ones, also by value: the order a
    checkpoint pays in, the same on the leaderboard."""
    eligible = {m: s.value for m, s in standings_by_model.items() if s.eligible}
    ineligible = {m: s.value for m, s in standings_by_model.items() if not s.eligible}
    return rank_models(eligible, descending) + rank_models(ineligible, descending)

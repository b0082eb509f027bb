"""Standings: every model's score over a time range, per scope and combined, under the declared
eligibility policy. The leaderboard windows, the leaderboard's payout column and the checkpoint
all call `standings`, so what the UI shows for a period is what is paid for it.

Inputs are the hourly rollups: per (model, scope, hour) a snapshot (score rows n, their value sum,
and the failure values of the cycles the model has rows in), and per (scope, hour) the cycles that
count (resolved, not voided) with their failure values. Under `every_cycle` a model's mean over a
scope is

    (value sum + failure values of the counted cycles it has no row in) / counted cycles

so a cycle a model missed (it had not joined, it had left) counts at that cycle's failure value,
exactly as an ABSENT prediction does. Under `min_coverage` the mean is over its own rows, and a
scope it has no row in counts at that scope's failure value (it cannot drop out of the mean).
The combined value is the weighted mean of the scope means (declared scope weights).

Coverage counts scored answers only (a FAILED, ABSENT or rejected row is work not done). A
standing is eligible for rewards with at least `min_scored_answers` scored answers and, under
`min_coverage`, scored answers in at least that fraction of the counted cycles, combined and in
every scope; an ineligible standing carries its reason in words.
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
    predictions: int  # the model's score rows among them (failures and absences included)
    value_sum: float
    missed_failure_sum: float  # what the cycles it has no row in count at
    answered: int = 0  # its scored answers: the only rows that count as coverage

    @property
    def coverage(self) -> float:
        return self.answered / self.cycles if self.cycles else 0.0


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
    answered: int = 0  # scored answers over every scope
    ineligible_reason: str | None = None  # why it cannot be paid, in words (None: eligible)

    @property
    def coverage(self) -> float:
        return self.answered / self.cycles if self.cycles else 0.0


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
    # per model and scope: [rows, value sum, failure values of the cycles it has rows in, scored answers]
    per_model: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0, 0.0, 0.0, 0]))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATUS_KEYS, 0))
    for row in snapshots:
        if not in_range(row.period_start, row.period_end, start, end) or row.prediction_count <= 0:
            continue
        totals = per_model[row.model_id][row.scope_key]
        totals[0] += row.prediction_count
        totals[1] += row.value_sum
        totals[2] += row.failure_value_sum
        totals[3] += int(row.status_counts.get("scored", 0))
        for key in STATUS_KEYS:
            counts[row.model_id][key] += int(row.status_counts.get(key, 0))
    result = {}
    scope_keys = sorted(set(cycles) | {k for model in per_model.values() for k in model})
    for model_id, by_scope in per_model.items():
        scope_standings = {}
        for key in scope_keys:
            n, value_sum, covered_failures, answered = by_scope.get(key, (0, 0.0, 0.0, 0))
            n, answered = int(n), int(answered)
            counted = max(cycles.get(key, 0), n)  # never fewer cycles than the model's own rows
            missed = failure_sums.get(key, 0.0) - covered_failures if counted > n else 0.0
            if eligibility.pads_missing_cycles or n == 0:
                # every_cycle; or min_coverage with no row in the scope: the scope counts at its
                # failure value, so a model cannot drop a scope out of its mean by never answering it
                value = (value_sum + missed) / counted if counted else None
            else:
                value = value_sum / n
            scope_standings[key] = ScopeStanding(key, value, counted, n, value_sum, missed, answered)
        combined = combine(scope_standings, weights)
        total_cycles = sum(s.cycles for s in scope_standings.values())
        total_predictions = sum(s.predictions for s in scope_standings.values())
        total_answered = sum(s.answered for s in scope_standings.values())
        reason = ineligibility(eligibility, combined, scope_standings, total_answered, total_cycles)
        result[model_id] = Standing(
            model_id, combined, scope_standings, total_cycles, total_predictions, reason is None, voided,
            counts[model_id], total_answered, reason,
        )
    return result


def ineligibility(eligibility: Eligibility, combined: float | None, scopes: dict[str, ScopeStanding],
                  answered: int, cycles: int) -> str | None:
    """Why a model's standing cannot be paid under the eligibility policy, in words; None when it can."""
    if combined is None:
        return "no score in the period"
    if answered < eligibility.min_scored_answers:
        return ("no scored answer in the period" if answered == 0 else
                f"{answered} scored answer(s) in the period, fewer than the policy's {eligibility.min_scored_answers}")
    counted = {key: s for key, s in scopes.items() if s.cycles}
    if eligibility.require_every_scope:
        silent = sorted(key for key, s in counted.items() if s.answered == 0)
        if silent:
            return f"no scored answer in scope {', '.join(silent)} (every scope must be answered)"
    if not eligibility.pads_missing_cycles:
        f = eligibility.min_coverage
        coverage = answered / cycles if cycles else 0.0
        if coverage + 1e-12 < f:
            return f"scored answers cover {coverage:.2%} of the counted cycles, less than the policy's {f:.0%}"
        short = sorted(key for key, s in counted.items() if s.coverage + 1e-12 < f)
        if short:
            return "scored answers cover " + ", ".join(f"{counted[k].coverage:.2%} of scope {k}" for k in short) + \
                f", less than the policy's {f:.0%} in every scope"
    return None


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

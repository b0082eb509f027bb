"""Ranking, leaderboard windows and emission: the money path, as pure functions.

Every mean here is count-weighted (sum of score values / number of scored predictions), the same
for the leaderboard and the checkpoint, so their orders cannot disagree for the same period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Sequence

FRAC64_ONE = 1_000_000_000  # 100 %


@dataclass(frozen=True)
class SnapshotRow:
    model_id: str
    period_start: datetime
    period_end: datetime
    prediction_count: int
    value_sum: float


def weighted_means(rows: Iterable[SnapshotRow]) -> dict[str, tuple[float, int]]:
    """model_id -> (count-weighted mean of score values, prediction count)."""
    totals: dict[str, list[float]] = {}
    for row in rows:
        if row.prediction_count <= 0:
            continue
        total = totals.setdefault(row.model_id, [0.0, 0])
        total[0] += row.value_sum
        total[1] += row.prediction_count
    return {model_id: (value_sum / count, int(count)) for model_id, (value_sum, count) in totals.items()}


def rank_models(scores: dict[str, float | None], descending: bool = True) -> list[str]:
    """Model ids best first; models without a score last; ties broken by model id so the order
    never depends on insertion order."""
    scored = [(model_id, value) for model_id, value in scores.items() if value is not None]
    unscored = sorted(model_id for model_id, value in scores.items() if value is None)
    scored.sort(key=lambda item: ((-item[1] if descending else item[1]), item[0]))
    return [model_id for model_id, _ in scored] + unscored


def window_scores(
    rows: Sequence[SnapshotRow], as_of: datetime, window_seconds: int, first_seen: dict[str, datetime]
) -> dict[str, dict]:
    """Per model, the count-weighted mean over snapshots inside (as_of - window, as_of].

    `complete` says the model was present for the whole window (its first scored cycle is at or
    before the window's start); an incomplete window is still shown, flagged, as coverage.
    """
    window_start = as_of - timedelta(seconds=window_seconds)
    inside = [row for row in rows if row.period_start >= window_start and row.period_end <= as_of]
    means = weighted_means(inside)
    result = {}
    for model_id, (mean, count) in means.items():
        seen = first_seen.get(model_id)
        coverage_seconds = window_seconds if seen is None else min(window_seconds, (as_of - seen).total_seconds())
        result[model_id] = {
            "value": mean,
            "count": count,
            "complete": seen is not None and seen <= window_start,
            "coverage": round(max(0.0, coverage_seconds) / window_seconds, 6),
        }
    return result


def tiered_emission(
    model_count: int,
    tiers_pct: Sequence[tuple[int, float]] = ((1, 35.0), (5, 10.0), (10, 5.0)),
) -> list[int]:
    """frac64 rewards by rank (the reference's default tiers).

    tiers_pct: (last rank of the tier, percent per rank): rank 1 -> 35 %, ranks 2-5 -> 10 % each,
    ranks 6-10 -> 5 % each, 11+ -> 0. What the tiers leave unclaimed (fewer than 10 models) is split
    equally over every model. Each share is rounded to frac64; the residue that makes the sum
    exactly 1,000,000,000 goes to rank 1.
    """
    if model_count <= 0:
        return []
    percents = []
    for rank in range(1, model_count + 1):
        percents.append(next((pct for last_rank, pct in tiers_pct if rank <= last_rank), 0.0))
    unclaimed = 100.0 - sum(percents)
    if unclaimed < -1e-9:
        raise ValueError(f"emission tiers exceed 100 %: {tiers_pct}")
    bonus = unclaimed / model_count if unclaimed > 1e-9 else 0.0
    rewards = [round((pct + bonus) * FRAC64_ONE / 100.0) for pct in percents]
    rewards[0] += FRAC64_ONE - sum(rewards)
    return rewards


def emission_payload(
    ranked_model_ids: Sequence[str],
    rewards_frac64: Sequence[int],
    crunch_pubkey: str,
    compute_provider: str | None = None,
    data_provider: str | None = None,
) -> dict:
    """The on-chain emission shape. cruncher_index is the model's position in `ranked_model_ids`
    (the checkpoint's entries list says which model each index is)."""
    return {
        "crunch": crunch_pubkey,
        "cruncher_rewards": [
            {"cruncher_index": index, "reward_pct": int(reward)} for index, reward in enumerate(rewards_frac64)
        ],
        "compute_provider_rewards": [{"provider": compute_provider, "reward_pct": FRAC64_ONE}] if compute_provider else [],
        "data_provider_rewards": [{"provider": data_provider, "reward_pct": FRAC64_ONE}] if data_provider else [],
    }

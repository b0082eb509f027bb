"""Emission: how a checkpoint's ranked, eligible models share 1,000,000,000 frac64 (= 100 %).

Three strategies, each a pure function of the ranked entries, each exact (the rewards sum to
exactly FRAC64_ONE), non-negative and order-preserving (a better rank never gets less):
- tiered: the reference tiers by rank (35 % / 10 % x 4 / 5 % x 5 by default); what the tiers leave
  unclaimed (fewer models than tiers) is split equally over every model; each share is rounded
  to frac64 and the residue goes to rank 1 (the reference's rule);
- softmax: shares proportional to exp(s / temperature), s the score oriented so that better is
  larger (lower-is-better scores are negated), computed relative to the best for stability;
- proportional: floor_pct % of the pool split equally, the rest in proportion to how far each
  oriented score is above the worst one (all equal: equal shares).
Softmax and proportional turn their weights into frac64 by the largest-remainder method: each
entry gets the floor of its exact share, and the leftover units go one each to the largest
fractional parts, ties to the better rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from crunch_assets.spec import EmissionPolicy

FRAC64_ONE = 1_000_000_000  # 100 %


@dataclass(frozen=True)
class RankedEntry:
    """What an emission strategy sees of one paid model."""

    model_id: str
    rank: int
    value: float
    prediction_count: int
    cycles: int
    coverage: float


def tiered(model_count: int, tiers_pct: Sequence[tuple[int, float]] = ((1, 35.0), (5, 10.0), (10, 5.0))) -> list[int]:
    """frac64 rewards by rank. tiers_pct: (last rank of the tier, percent per rank)."""
    if model_count <= 0:
        return []
    percents = [next((pct for last_rank, pct in tiers_pct if rank <= last_rank), 0.0) for rank in range(1, model_count + 1)]
    unclaimed = 100.0 - sum(percents)
    if unclaimed < -1e-9:
        raise ValueError(f"emission tiers exceed 100 %: {tiers_pct}")
    bonus = unclaimed / model_count if unclaimed > 1e-9 else 0.0
    rewards = [round((pct + bonus) * FRAC64_ONE / 100.0) for pct in percents]
    rewards[0] += FRAC64_ONE - sum(rewards)
    return rewards


def largest_remainder(weights: Sequence[float], total: int = FRAC64_ONE) -> list[int]:
    """Integers summing to exactly `total`, proportional to non-negative `weights` (all zero:
    equal); leftover units to the largest fractional parts, ties to the earlier entry."""
    if not weights:
        return []
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"weights must be finite and >= 0: {list(weights)[:5]}...")
    weight_sum = math.fsum(weights)
    if weight_sum <= 0:
        weights, weight_sum = [1.0] * len(weights), float(len(weights))
    quotas = [w / weight_sum * total for w in weights]
    shares = [math.floor(q) for q in quotas]
    leftover = total - sum(shares)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[:leftover]:
        shares[i] += 1
    return shares


def _oriented(values: Sequence[float], higher_is_better: bool) -> list[float]:
    return [v if higher_is_better else -v for v in values]


def softmax(values: Sequence[float], temperature: float, higher_is_better: bool = True) -> list[int]:
    oriented = _oriented(values, higher_is_better)
    best = max(oriented)
    return largest_remainder([math.exp((v - best) / temperature) for v in oriented])


def proportional(values: Sequence[float], floor_pct: float, higher_is_better: bool = True) -> list[int]:
    oriented = _oriented(values, higher_is_better)
    worst = min(oriented)
    distances = [v - worst for v in oriented]
    distance_sum = math.fsum(distances)
    floor = floor_pct / 100.0
    n = len(values)
    if distance_sum <= 0:
        return largest_remainder([1.0] * n)
    return largest_remainder([floor / n + (1.0 - floor) * d / distance_sum for d in distances])


def build(policy: EmissionPolicy, entries: Sequence[RankedEntry], higher_is_better: bool) -> list[int]:
    """frac64 rewards for `entries` (in rank order) under `policy`."""
    if not entries:
        return []
    values = [entry.value for entry in entries]
    if policy.kind == "tiered":
        return tiered(len(entries), policy.tiers_pct)
    if policy.kind == "softmax":
        return softmax(values, policy.temperature, higher_is_better)
    if policy.kind == "proportional":
        return proportional(values, policy.floor_pct, higher_is_better)
    raise ValueError(f"unknown emission policy {policy.kind!r}")


def describe(policy: EmissionPolicy) -> str:
    """The rule that gave a share, in words (shown in each model's reward breakdown)."""
    if policy.kind == "tiered":
        tiers, previous = [], 0
        for last_rank, pct in policy.tiers_pct:
            tiers.append(f"rank {previous + 1}: {pct:g} %" if last_rank == previous + 1
                         else f"ranks {previous + 1}-{last_rank}: {pct:g} % each")
            previous = last_rank
        return "tiered by rank (" + ", ".join(tiers) + "; unclaimed tiers split equally; residue to rank 1)"
    if policy.kind == "softmax":
        return f"softmax over scores, temperature {policy.temperature:g} (largest remainder)"
    return f"proportional to the distance above the worst score, {policy.floor_pct:g} % split equally (largest remainder)"


def check_rewards(rewards: Sequence[int], count: int) -> None:
    if len(rewards) != count or sum(rewards) != FRAC64_ONE or (rewards and min(rewards) < 0):
        raise ValueError(f"emission must give {count} non-negative rewards summing to {FRAC64_ONE}; got {list(rewards)[:12]}")
    if any(a < b for a, b in zip(rewards, rewards[1:])):
        raise ValueError(f"emission must not pay a worse rank more than a better one: {list(rewards)[:12]}")

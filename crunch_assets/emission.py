"""Emission: how a checkpoint's ranked, eligible models share 1,000,000,000 frac64 (= 100 %).

Three strategies, each a pure function of the ranked entries (the paid models only), each exact
(the rewards sum to exactly FRAC64_ONE), non-negative and order-preserving (a better rank never
gets less):
- tiered: the reference tiers by rank (35 % / 10 % x 4 / 5 % x 5 by default); what the tiers leave
  unclaimed (fewer paid models than tiers) is split equally over every paid model (the reference),
  or in proportion to the tier each holds ("pro_rata"); each exact share is rounded to frac64 and
  the residue goes to rank 1 (the reference's rule);
- softmax: shares proportional to exp(s / temperature), s the score oriented so that better is
  larger (lower-is-better scores are negated), computed relative to the best for stability;
- proportional: floor_pct % of the pool split equally, the rest in proportion to how far each
  oriented score is above the worst one (all equal: equal shares).
Softmax and proportional turn their weights into frac64 by the largest-remainder method, in exact
rational arithmetic (fractions.Fraction): each entry gets the floor of its exact share, and the
leftover units go one each to the largest fractional parts, ties to the better rank.
Then `share_ties` pools the rewards of models with exactly equal scores and splits them equally,
so a model id never decides a tier (declared: PayoutPolicy.ties).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from crunch_assets.spec import EmissionPolicy

FRAC64_ONE = 1_000_000_000  # 100 %
# Float scores are read as the simplest rational with a denominator up to this (see exact_score).
SCORE_DENOMINATOR = 10**12


@dataclass(frozen=True)
class RankedEntry:
    """What an emission strategy sees of one paid model."""

    model_id: str
    rank: int
    value: float
    prediction_count: int
    cycles: int
    coverage: float


def tiered(model_count: int, tiers_pct: Sequence[tuple[int, float]] = ((1, 35.0), (5, 10.0), (10, 5.0)),
           unclaimed: str = "equal") -> list[int]:
    """frac64 rewards by rank. tiers_pct: (last rank of the tier, percent per rank). What the tiers
    leave unclaimed goes equally to every rank ("equal") or in proportion to each rank's tier
    ("pro_rata"). Exact: each share is a fraction, rounded to frac64, the residue to rank 1."""
    if model_count <= 0:
        return []
    # the declared decimal percents, exactly (35.0 -> 35, 33.3 -> 333/10)
    percents = [next((Fraction(repr(float(pct))) for last_rank, pct in tiers_pct if rank <= last_rank), Fraction(0))
                for rank in range(1, model_count + 1)]
    left = 100 - sum(percents)
    if left < 0:
        raise ValueError(f"emission tiers exceed 100 %: {tiers_pct}")
    claimed = sum(percents)
    if unclaimed == "pro_rata" and claimed > 0:
        bonuses = [left * pct / claimed for pct in percents]
    elif unclaimed in ("equal", "pro_rata"):
        bonuses = [left / model_count] * model_count
    else:
        raise ValueError(f"unknown unclaimed rule {unclaimed!r}")
    exact = [(pct + bonus) * FRAC64_ONE / 100 for pct, bonus in zip(percents, bonuses)]
    rewards = [round(share) for share in exact]
    rewards[0] += FRAC64_ONE - sum(rewards)
    if any(a < b for a, b in zip(rewards, rewards[1:])) or rewards[0] < 0:
        # only equal tiers with a negative residue get here: place the units by largest remainder
        return _largest_remainder_of(exact, FRAC64_ONE)
    return rewards


def largest_remainder(weights: Sequence[float], total: int = FRAC64_ONE) -> list[int]:
    """Integers summing to exactly `total`, proportional to non-negative `weights` (all zero:
    equal); leftover units to the largest fractional parts, ties to the earlier entry. Exact:
    each weight is taken as the exact rational it is, so equal weights have equal remainders."""
    if not weights:
        return []
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"weights must be finite and >= 0: {list(weights)[:5]}...")
    exact = [Fraction(w) for w in weights]
    weight_sum = sum(exact)
    if weight_sum <= 0:
        exact, weight_sum = [Fraction(1)] * len(exact), Fraction(len(exact))
    return _largest_remainder_of([w * total / weight_sum for w in exact], total)


def _largest_remainder_of(quotas: Sequence[Fraction], total: int) -> list[int]:
    """Exact quotas summing to `total` -> integers: floors, then one unit each to the largest
    remainders, ties to the earlier entry."""
    shares = [math.floor(q) for q in quotas]
    leftover = total - sum(shares)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[:leftover]:
        shares[i] += 1
    return shares


def share_ties(rewards: Sequence[int], values: Sequence[float | None]) -> list[int]:
    """Rewards in rank order, with each run of exactly equal `values` pooled and split equally: a
    tie shares the ranks it holds, whatever the models are called. The units a split leaves (fewer
    than the tied models) go one each to the tie's first models, so the sum stays exact and a
    better rank never gets less."""
    shared = list(rewards)
    first = 0
    while first < len(shared):
        last = first
        while last + 1 < len(shared) and values[last + 1] is not None and values[last + 1] == values[first]:
            last += 1
        if last > first:
            pool, size = sum(shared[first:last + 1]), last - first + 1
            each, units = divmod(pool, size)
            shared[first:last + 1] = [each + (1 if i < units else 0) for i in range(size)]
        first = last + 1
    return shared


def _oriented(values: Sequence[float], higher_is_better: bool) -> list[float]:
    return [v if higher_is_better else -v for v in values]


def softmax(values: Sequence[float], temperature: float, higher_is_better: bool = True) -> list[int]:
    oriented = _oriented(values, higher_is_better)
    best = max(oriented)
    return largest_remainder([math.exp((v - best) / temperature) for v in oriented])


def exact_score(value: float) -> Fraction:
    """A float score as the exact rational it stands for: the simplest fraction within float
    precision of it (0.6666666666666666 -> 2/3, a mean of 80 over 120 cycles). Representation
    noise then cannot order two remainders that are equal in exact arithmetic."""
    return Fraction(value).limit_denominator(SCORE_DENOMINATOR)


def proportional(values: Sequence[float], floor_pct: float, higher_is_better: bool = True) -> list[int]:
    oriented = [exact_score(v) for v in _oriented(values, higher_is_better)]
    worst = min(oriented)
    distances = [v - worst for v in oriented]
    distance_sum = sum(distances)
    n = len(values)
    if distance_sum <= 0:
        return largest_remainder([1.0] * n)
    floor = Fraction(repr(float(floor_pct))) / 100
    weights = [floor / n + (1 - floor) * d / distance_sum for d in distances]  # exact; they sum to 1
    return _largest_remainder_of([w * FRAC64_ONE for w in weights], FRAC64_ONE)


def build(policy: EmissionPolicy, entries: Sequence[RankedEntry], higher_is_better: bool) -> list[int]:
    """frac64 rewards for `entries` (in rank order) under `policy`."""
    if not entries:
        return []
    values = [entry.value for entry in entries]
    if policy.kind == "tiered":
        return tiered(len(entries), policy.tiers_pct, policy.unclaimed)
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
        share = "split equally" if policy.unclaimed == "equal" else "split in proportion to each paid model's tier"
        return "tiered by rank among the paid models (" + ", ".join(tiers) + f"; unclaimed tiers {share}; residue to rank 1)"
    if policy.kind == "softmax":
        return f"softmax over scores, temperature {policy.temperature:g} (largest remainder)"
    return f"proportional to the distance above the worst score, {policy.floor_pct:g} % split equally (largest remainder)"


def check_rewards(rewards: Sequence[int], count: int) -> None:
    if len(rewards) != count or sum(rewards) != FRAC64_ONE or (rewards and min(rewards) < 0):
        raise ValueError(f"emission must give {count} non-negative rewards summing to {FRAC64_ONE}; got {list(rewards)[:12]}")
    if any(a < b for a, b in zip(rewards, rewards[1:])):
        raise ValueError(f"emission must not pay a worse rank more than a better one: {list(rewards)[:12]}")

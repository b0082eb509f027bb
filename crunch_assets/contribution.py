"""Contribution: what each model adds to an ensemble, and the emission that pays for it.

**Leave-one-out contribution.** For a cycle whose ensemble E was scored, and each member k of E (its
stored `meta`: members and weights), the ensemble is built again without k (the same weights, k's
left out) and scored against the cycle's stored truth:

    c_k(t) = orientation x (score(E) - score(E without k))

(orientation +1 when higher is better, -1 for losses), so c_k > 0 means the ensemble is better with
k. A model that is not a member of the cycle (it failed, was absent) has c_k(t) = 0; a lone member
is compared with the cycle's failure value (the ensemble without it has no answer). The rollups
sum c_k per scope-hour (crunch_assets/metrics.py); a period's contribution is that sum over the
period's hours divided by its counted cycles, per scope, combined with the scope weights.

Rebuilding without each member costs N builds per cycle; the linear structure of a weighted mean
makes each O(1): the sum of the others is the exact sum minus the member's term, kept as an exact
integer (`metrics.exact_sum_without_each`), so the result is bit for bit the mean recomputed from
the others (fsum of the others over fsum of their weights). A competition's own combine can give
its fast path (`Ensemble.leave_one_out`: e.g. crypto_density's CRPS of a mixture without each
member, from the pairwise terms computed once); without one, each member's ensemble is rebuilt.

**The contribution-weighted emission** (`EmissionPolicy.contribution`): over the paid models, three
components, each normalised to [0, 1] by min-max over the paid models (a component on which every
paid model is equal adds nothing):
- rank: 1 / rank (the reference's inverse rank; tied scores share the mean of their ranks under
  `ties="share"`);
(each normalised component is rounded to 12 decimals, exactly, so the sums stay small);
- contribution: the period's contribution;
- diversity: 1 - the model's correlation with the field (model_correlation); a model with no
  correlation (a constant answer) has no diversity.
The composite is rank_weight x rank + contribution_weight x contribution + diversity_weight x
diversity; each model gets floor_pct % and the rest of the pool in proportion to its composite
(all composites 0: equal), in exact rationals, rounded to frac64 by the largest remainder (equal
remainders to the better rank). A larger composite never gets less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence

from crunch_assets import ensembles, metrics
from crunch_assets.emission import FRAC64_ONE, RankedEntry, exact_score
from crunch_assets.spec import CompetitionSpec, EmissionPolicy, Ensemble, Scope
from resources.store.lifecycles import PredictionStatus


# --- leave one out -------------------------------------------------------------------------------

def mean_without_each(outputs: Sequence[dict], weights: Sequence[float]) -> list[dict | None]:
    """The builtin "mean" ensemble without each member, in O(1) a member and field: each field's
    fsum(w x of the others) / fsum(w of the others), exactly (None when the others weigh 0)."""
    fields = ensembles.mean_fields(outputs)
    weight_sums = metrics.exact_sum_without_each(weights)
    sums = {f: metrics.exact_sum_without_each([w * float(o[f]) for w, o in zip(weights, outputs)]) for f in fields}
    return [{f: sums[f][k] / weight_sums[k] for f in fields} if weight_sums[k] > 0 else None
            for k in range(len(outputs))]


def leave_one_out_scores(ensemble: Ensemble, scope: Scope, outputs: Sequence[Any], weights: Sequence[float],
                         truth: Any, score: Callable[[Scope, Any, Any], float | None]) -> list[float | None]:
    """The score of the ensemble without each member (None: it has no score)."""
    if len(outputs) < 2:
        return [None] * len(outputs)
    fast = ensembles.slot_callable(ensemble, "leave_one_out")
    if fast is not None:
        values = list(fast(scope=scope, outputs=list(outputs), weights=list(weights), ground_truth=truth))
        if len(values) != len(outputs):
            raise ValueError(f"ensemble {ensemble.name}: leave_one_out returned {len(values)} scores for "
                             f"{len(outputs)} members")
        return [metrics._number(v) for v in values]
    if ensemble.combine == ensembles.BUILTIN["combine"]:
        rebuilt = mean_without_each(outputs, weights)
    else:
        rebuilt = []
        for k in range(len(outputs)):
            others = [o for i, o in enumerate(outputs) if i != k]
            other_weights = [w for i, w in enumerate(weights) if i != k]
            try:
                rebuilt.append(ensembles.combine(ensemble, scope, others, other_weights)
                               if math.fsum(other_weights) > 0 else None)
            except Exception:  # the combine cannot build it: the ensemble without k has no answer
                rebuilt.append(None)
    return [score(scope, output, truth) if output is not None else None for output in rebuilt]


def cycle_contributions(ensemble: Ensemble, scope: Scope, cycle: "metrics.ResolvedCycle", read: "metrics.Readers",
                        orient: float) -> dict[str, float]:
    """model_id -> c_k(t) for the members of the cycle's ensemble (nothing when the ensemble has no
    scored answer in the cycle)."""
    answer = cycle.answers.get(ensemble.model_id)
    if answer is None or answer.status != PredictionStatus.PENDING or answer.output is None or not answer.success:
        return {}
    members = list((answer.meta or {}).get("members") or [])
    weights = [float(w) for w in (answer.meta or {}).get("weights") or []]
    if not members or len(weights) != len(members) or any(m not in cycle.answers for m in members):
        return {}
    full = read.score(scope, answer.output, cycle.truth)
    if full is None:
        return {}
    outputs = [cycle.answers[m].output for m in members]
    try:
        without = leave_one_out_scores(ensemble, scope, outputs, weights, cycle.truth, read.score)
    except Exception:  # a failing fast path gives no contribution for the cycle, never a wrong one
        return {}
    fallback = cycle.failure_value
    result = {}
    for model_id, value in zip(members, without):
        other = value if value is not None else fallback
        if other is not None:
            result[model_id] = orient * (full - other)
    return result


# --- a period's contribution and diversity -------------------------------------------------------

@dataclass(frozen=True)
class PeriodContribution:
    contribution: float | None
    correlation: float | None  # with the field (model_correlation)
    ensemble_correlation: float | None

    @property
    def diversity(self) -> float:
        """1 - correlation with the field; none without a correlation (a constant answer)."""
        return 0.0 if self.correlation is None else 1.0 - self.correlation


def period_contributions(spec: CompetitionSpec, snapshots: Sequence, rollups: Sequence, start: datetime,
                         end: datetime) -> dict[str, PeriodContribution]:
    """model_id -> its contribution, correlations and diversity over [start, end), from the hourly
    statistics the rollups stored."""
    names = [n for n in ("contribution", "model_correlation", "ensemble_correlation") if n in spec.metrics.names]
    if not names:
        return {}
    values = metrics.window_metrics(spec, metrics.hour_rows(snapshots, start, end),
                                    metrics.counted_cycles(rollups, start, end), names)
    return {m: PeriodContribution(v.get("contribution"), v.get("model_correlation"), v.get("ensemble_correlation"))
            for m, v in values.items()}


# --- the contribution-weighted emission ----------------------------------------------------------

def _normalised(values: Sequence[Fraction]) -> list[Fraction]:
    low, high = min(values), max(values)
    if high == low:
        return [Fraction(0)] * len(values)
    return [(v - low) / (high - low) for v in values]


COMPONENT_DECIMALS = 12


def _quantised(values: Sequence[Fraction]) -> list[Fraction]:
    """Each normalised component rounded to COMPONENT_DECIMALS decimals (exactly: half to even), so
    that the composites share one small denominator: a thousand paid models' exact sum stays small
    (1 / rank over 1,000 ranks would otherwise carry the lcm of 1..1000)."""
    scale = 10**COMPONENT_DECIMALS
    return [Fraction(round(v * scale), scale) for v in values]


def shared_ranks(entries: Sequence[RankedEntry], share_ties: bool) -> list[Fraction]:
    """Each entry's rank; under `share_ties`, exactly equal scores share the mean of their ranks."""
    ranks = [Fraction(e.rank) for e in entries]
    if not share_ties:
        return ranks
    i = 0
    while i < len(entries):
        j = i
        while j + 1 < len(entries) and entries[j + 1].value == entries[i].value:
            j += 1
        mean = sum(ranks[i:j + 1]) / (j - i + 1)
        ranks[i:j + 1] = [mean] * (j - i + 1)
        i = j + 1
    return ranks


def contribution_weighted(entries: Sequence[RankedEntry], contributions: Sequence[float | None],
                          diversities: Sequence[float], policy: EmissionPolicy,
                          share_ties: bool = True) -> tuple[list[int], list[dict]]:
    """frac64 rewards of the paid entries (rank order) and each one's components (see the module
    doc). A pure function: exact rationals, every float read as the simplest fraction within float
    precision of it (emission.exact_score)."""
    n = len(entries)
    if n == 0:
        return [], []
    rank_part = _quantised(_normalised([1 / r for r in shared_ranks(entries, share_ties)]))
    contribution_part = _quantised(_normalised([exact_score(c or 0.0) for c in contributions]))
    diversity_part = _quantised(_normalised([exact_score(d) for d in diversities]))
    w_rank, w_contribution, w_diversity = (Fraction(repr(float(w))) for w in (
        policy.rank_weight, policy.contribution_weight, policy.diversity_weight))
    composite = [w_rank * r + w_contribution * c + w_diversity * d
                 for r, c, d in zip(rank_part, contribution_part, diversity_part)]
    floor = Fraction(repr(float(policy.floor_pct))) / 100
    total = sum(composite)
    if floor * n >= 1 or total == 0:
        shares = [Fraction(1, n)] * n
    else:
        shares = [floor + (1 - floor * n) * c / total for c in composite]
    rewards = _largest_remainder(shares, composite)
    check_rewards(rewards, composite, n)
    components = [{
        "rank_part": float(w_rank * r), "contribution_part": float(w_contribution * c),
        "diversity_part": float(w_diversity * d), "composite": float(k), "share_exact": float(s),
        "rank_normalised": float(r), "contribution_normalised": float(c), "diversity_normalised": float(d),
    } for r, c, d, k, s in zip(rank_part, contribution_part, diversity_part, composite, shares)]
    return rewards, components


def _largest_remainder(shares: Sequence[Fraction], composite: Sequence[Fraction]) -> list[int]:
    """Exact shares summing to 1 -> frac64: floors, then one unit each to the largest remainders;
    equal remainders to the larger composite, then to the better rank (so a unit never goes to a
    smaller composite before a larger one)."""
    quotas = [s * FRAC64_ONE for s in shares]
    rewards = [math.floor(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - rewards[i]), -composite[i], i))
    for i in order[:FRAC64_ONE - sum(rewards)]:
        rewards[i] += 1
    return rewards


def check_rewards(rewards: Sequence[int], composites: Sequence[Fraction | float], count: int) -> None:
    """Exact, non-negative, and a larger composite never paid less (equal composites at most one
    unit apart: the largest remainder's leftover unit)."""
    if len(rewards) != count or sum(rewards) != FRAC64_ONE or (rewards and min(rewards) < 0):
        raise ValueError(f"emission must give {count} non-negative rewards summing to {FRAC64_ONE}; got {list(rewards)[:12]}")
    order = sorted(range(count), key=lambda i: -composites[i])
    for a, b in zip(order, order[1:]):
        if composites[a] > composites[b] and rewards[a] < rewards[b]:
            raise ValueError("the contribution emission paid a larger composite less")
        if composites[a] == composites[b] and abs(rewards[a] - rewards[b]) > 1:
            raise ValueError("the contribution emission paid equal composites differently")


def describe(policy: EmissionPolicy, ensemble: str | None) -> str:
    return (f"contribution-weighted: {policy.rank_weight:g} x rank (1/rank) + {policy.contribution_weight:g} x "
            f"leave-one-out contribution to ensemble {ensemble} + {policy.diversity_weight:g} x diversity (1 - "
            f"correlation with the field), each min-max normalised over the paid models; {policy.floor_pct:g} % floor "
            "each, the rest in proportion (largest remainder)")


def reward_inputs(spec: CompetitionSpec, paid: Sequence[str],
                  period: Mapping[str, PeriodContribution]) -> tuple[list[float | None], list[float]]:
    empty = PeriodContribution(None, None, None)
    return ([period.get(m, empty).contribution for m in paid], [period.get(m, empty).diversity for m in paid])

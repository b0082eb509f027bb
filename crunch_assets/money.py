"""The money invariants of an emission checkpoint's entries, in one place.

Each is a pure function over the stored entries (`{"ranking": [...], "cruncher_rewards": [...]}`)
returning the problems it finds, in words; an empty list means the invariant holds. Two callers
check them, and must agree: the checkpoint's asset check (`crunch_assets/defs/checkpoints/checks.py` `check_rewards`, when the
checkpoint is built) and the emission safety gate (`payouts.run_gate`, before it is paid).

Beside them, the gate's policy checks that say a genuine checkpoint cannot be paid as the declared
policies stand (`unpayable_reasons`: nothing paid, a field below the minimum, a participant above
its share cap), which the checkpoint asset, the API's listings and the gate all evaluate.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction

from crunch_assets.emission import FRAC64_ONE
from crunch_assets.spec import Eligibility, GatePolicy

SCORE_ORDER_TOLERANCE = 1e-12


def _is_frac64(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def reward_sum_problems(entries: dict) -> list[str]:
    """Every reward is a whole, non-negative number of frac64 units; the ranking's rewards and the
    cruncher rewards each sum to exactly FRAC64_ONE (1,000,000,000)."""
    rewards = [r.get("reward_pct") for r in entries.get("ranking", [])]
    emitted = [r.get("reward_pct") for r in entries.get("cruncher_rewards", [])]
    if not all(_is_frac64(r) for r in rewards + emitted):
        return ["a reward is not a non-negative whole number of frac64 units"]
    if sum(rewards) != FRAC64_ONE:
        return [f"the ranking's rewards sum to {sum(rewards):,}, not {FRAC64_ONE:,}"]
    if sum(emitted) != FRAC64_ONE:
        return [f"the cruncher rewards sum to {sum(emitted):,}, not {FRAC64_ONE:,}"]
    return []


def ranking_problems(entries: dict, descending: bool, by_rank: bool = True) -> list[str]:
    """Ranks 1..n, eligible first, eligible scores in ranking order (direction-aware); rewards never
    increase with rank, or, under the contribution emission (`by_rank` False), never with the
    stored composite (reward_components)."""
    ranking = entries.get("ranking", [])
    problems = []
    if [r.get("rank") for r in ranking] != list(range(1, len(ranking) + 1)):
        problems.append("ranks are not 1..n in order")
    eligible_flags = [bool(r.get("eligible")) for r in ranking]
    if eligible_flags != sorted(eligible_flags, reverse=True):
        problems.append("an ineligible model is ranked above an eligible one")
    rewards = [r.get("reward_pct") or 0 for r in ranking]
    if by_rank and any(a < b for a, b in zip(rewards, rewards[1:])):
        problems.append("a worse rank is paid more than a better one")
    if not by_rank:
        paid = sorted(((r.get("breakdown") or {}).get("reward_components", {}).get("composite", 0.0), r.get("reward_pct") or 0)
                      for r in ranking if r.get("eligible"))
        if any(ca < cb and ra > rb + 1 for (ca, ra), (cb, rb) in zip(paid, paid[1:])):
            problems.append("a smaller composite (contribution emission) is paid more than a larger one")
    scores = [r.get("score") for r in ranking if r.get("eligible")]
    if any(s is None for s in scores):
        problems.append("an eligible model has no score")
    else:
        worse = [(a, b) for a, b in zip(scores, scores[1:])
                 if (b - a > SCORE_ORDER_TOLERANCE if descending else a - b > SCORE_ORDER_TOLERANCE)]
        if worse:
            problems.append(f"scores are not in ranking order ({worse[0][0]} before {worse[0][1]})")
    return problems


def paid_eligibility_problems(entries: dict, eligibility: Eligibility) -> list[str]:
    """Only eligible models are paid, and under a coverage rule each paid model has that coverage."""
    problems = []
    for r in entries.get("ranking", []):
        if not r.get("reward_pct"):
            continue
        if not r.get("eligible"):
            problems.append(f"{r.get('model_id')} is paid but not eligible")
        elif not eligibility.pads_missing_cycles and (r.get("coverage") or 0.0) + 1e-12 < eligibility.min_coverage:
            problems.append(f"{r.get('model_id')} is paid with coverage {r.get('coverage')} "
                            f"< the policy's {eligibility.min_coverage}")
    return problems


def cruncher_reward_problems(entries: dict) -> list[str]:
    """Each cruncher appears once in cruncher_rewards, and those rewards are exactly the ranking's
    rewards summed per cruncher: every paid model is present there, nothing else is."""
    problems = []
    emitted = [r.get("cruncher_index") for r in entries.get("cruncher_rewards", [])]
    if len(set(emitted)) != len(emitted):
        problems.append("a cruncher_index appears twice in cruncher_rewards")
    by_cruncher: dict = defaultdict(int)
    for r in entries.get("ranking", []):
        if r.get("reward_pct"):
            by_cruncher[r.get("cruncher_index")] += r["reward_pct"]
    if dict(by_cruncher) != {r.get("cruncher_index"): r.get("reward_pct") for r in entries.get("cruncher_rewards", [])}:
        problems.append("cruncher_rewards are not the ranking's rewards summed per cruncher")
    return problems


def paid_models(entries: dict) -> int:
    """How many ranked models the checkpoint pays (a positive whole reward)."""
    return sum(1 for r in entries.get("ranking", []) if _is_frac64(r.get("reward_pct")) and r["reward_pct"] > 0)


def pays_nothing(entries: dict) -> bool:
    """No model is eligible and nothing is paid: a period only an operator can skip."""
    ranking = entries.get("ranking", [])
    return (not any(r.get("reward_pct") for r in ranking) and not entries.get("cruncher_rewards")
            and not any(r.get("eligible") for r in ranking))


def invariant_problems(entries: dict, descending: bool, eligibility: Eligibility, by_rank: bool = True) -> list[str]:
    """Every money invariant of the entries, as the asset check evaluates them."""
    return (reward_sum_problems(entries) + ranking_problems(entries, descending, by_rank)
            + paid_eligibility_problems(entries, eligibility) + cruncher_reward_problems(entries))


# --- payability under the declared gate policy ---------------------------------------------------

@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    detail: str

    def as_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


def frac64_to_percent(reward_pct: int) -> float:
    """600,000,000 -> 60.0 (exact to the frac64 unit: 1e-7 %)."""
    return round(reward_pct * 100 / FRAC64_ONE, 7)


def _participant(row: dict) -> str:
    return row.get("participant") or row.get("model_id")


def check_some_model_is_paid(entries: dict) -> GateCheck:
    """Something to pay: at least one model has a reward. A period where no model is eligible (all
    dead, all under the benchmark cutoff, all excluded) is stored with every reward 0 and can
    never be submitted; an operator skips it."""
    ranking = entries.get("ranking", [])
    paid = paid_models(entries)
    if paid:
        return GateCheck("some_model_is_paid", True, f"{paid} of {len(ranking)} ranked model(s) paid")
    reasons = sorted({(r.get("breakdown") or {}).get("unpaid_reason") or "not eligible" for r in ranking})
    which = "is eligible" if not any(r.get("eligible") for r in ranking) else "is paid"
    return GateCheck("some_model_is_paid", False,
                     f"no model is paid: none of the {len(ranking)} ranked model(s) {which}"
                     + (f" ({'; '.join(reasons[:3])}{'; ...' if len(reasons) > 3 else ''})" if reasons else "")
                     + ": nothing to pay for the period")


def check_field_size(entries: dict, gate: GatePolicy) -> GateCheck:
    """No payout below the declared number of eligible participants (with a model the payout may
    pay: benchmark, excluded and ineligible models do not count)."""
    eligible = {_participant(r) for r in entries.get("ranking", []) if r.get("eligible")}
    ok = len(eligible) >= gate.min_eligible_participants
    return GateCheck("minimum_field_size", ok,
                     f"{len(eligible)} eligible participant(s), the policy's minimum is {gate.min_eligible_participants}"
                     + ("" if ok else " (declare GatePolicy(min_eligible_participants=...) for a smaller field)"))


def check_concentration(entries: dict, gate: GatePolicy) -> GateCheck:
    """No participant paid more than the declared share of the pool (exact, in frac64 units)."""
    by_participant: dict[str, int] = defaultdict(int)
    for r in entries.get("ranking", []):
        if isinstance(r.get("reward_pct"), int):
            by_participant[_participant(r)] += r["reward_pct"]
    cap = Fraction(repr(float(gate.max_participant_share_pct))) * FRAC64_ONE / 100
    over = sorted((p for p, reward in by_participant.items() if reward > cap), key=lambda p: -by_participant[p])
    top = max(by_participant.values(), default=0)
    detail = (f"no participant above {gate.max_participant_share_pct:g} % (the largest share is "
              f"{frac64_to_percent(top):g} %)") if not over else "; ".join(
        f"participant {p} is paid {frac64_to_percent(by_participant[p]):g} %, above the cap of "
        f"{gate.max_participant_share_pct:g} % (declare GatePolicy(max_participant_share_pct=...) to allow it)"
        for p in over)
    return GateCheck("participant_share_within_cap", not over, detail)


def unpayable_reasons(entries: dict, gate: GatePolicy) -> list[str]:
    """Why a checkpoint, as built, can never be submitted under the declared policies ([] when
    nothing in its entries says so; the whole gate decides): no model paid, the field below the
    gate's minimum, a participant over its share cap. Entries only: cheap enough for every listing."""
    checks = (check_some_model_is_paid(entries), check_field_size(entries, gate), check_concentration(entries, gate))
    return [f"{c.name}: {c.detail}" for c in checks if not c.passed]

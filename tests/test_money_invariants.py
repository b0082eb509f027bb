"""The money invariants (crunch_assets/money.py), each broken on purpose: the pure function names
the problem, and both of its callers, the checkpoint's asset check and the payout gate, refuse the
same entries. No database, no Dagster run."""

import copy
from dataclasses import replace

import dagster as dg
import pytest

from crunch_assets import money, payouts
from crunch_assets.defs.checkpoints import checks
from crunch_assets.spec import Eligibility

KEY = dg.AssetKey("emission_checkpoints")


@pytest.fixture(scope="module")
def spec():
    from competitions.btc_updown.definitions import SPEC

    return SPEC


def _row(rank, model, reward, score, cruncher, eligible=True, coverage=1.0):
    return {"rank": rank, "model_id": model, "reward_pct": reward, "score": score, "cruncher_index": cruncher,
            "eligible": eligible, "coverage": coverage}


def _entries(ranking, cruncher_rewards=None):
    if cruncher_rewards is None:
        summed: dict = {}
        for r in ranking:
            if r["reward_pct"]:
                summed[r["cruncher_index"]] = summed.get(r["cruncher_index"], 0) + r["reward_pct"]
        cruncher_rewards = [{"cruncher_index": i, "reward_pct": p} for i, p in sorted(summed.items())]
    return {"ranking": ranking, "cruncher_rewards": cruncher_rewards}


GOOD = _entries([_row(1, "a", 625_000_000, 0.9, 0), _row(2, "b", 375_000_000, 0.8, 1),
                 _row(3, "c", 0, 0.1, 2, eligible=False)])


def _gate(entries, spec) -> dict[str, bool]:
    return {check.name: check.passed for check in (
        payouts.check_reward_sum(entries), payouts.check_follows_ranking(entries, spec.ranking_descending),
        payouts.check_paid_models_eligible(entries, spec), payouts.check_crunchers(entries, {"a": 0, "b": 1, "c": 2}))}


def test_a_sound_checkpoint_passes_every_invariant_in_both_callers(spec):
    assert money.invariant_problems(GOOD, spec.ranking_descending, spec.eligibility) == []
    assert checks.check_rewards(KEY, GOOD, spec).passed
    assert all(_gate(GOOD, spec).values())
    assert money.paid_models(GOOD) == 2 and not money.pays_nothing(GOOD)


def _broken(change) -> dict:
    entries = copy.deepcopy(GOOD)
    change(entries)
    return entries


# (what is broken, the change, the money function that names it, the gate check that refuses it, words)
VIOLATIONS = [
    ("ranking sums to one unit less", lambda e: e["ranking"][1].update(reward_pct=374_999_999),
     money.reward_sum_problems, "rewards_sum_to_one_billion", "sum to 999,999,999"),
    ("a negative reward", lambda e: (e["ranking"][0].update(reward_pct=1_100_000_000), e["ranking"][1].update(reward_pct=-100_000_000)),
     money.reward_sum_problems, "rewards_sum_to_one_billion", "non-negative"),
    ("a fractional reward", lambda e: e["ranking"][0].update(reward_pct=625_000_000.0),
     money.reward_sum_problems, "rewards_sum_to_one_billion", "whole number"),
    ("a boolean reward", lambda e: e["ranking"][2].update(reward_pct=True),
     money.reward_sum_problems, "rewards_sum_to_one_billion", "whole number"),
    ("cruncher rewards sum to more", lambda e: e["cruncher_rewards"][0].update(reward_pct=625_000_001),
     money.reward_sum_problems, "rewards_sum_to_one_billion", "cruncher rewards sum"),
    ("ranks skip a number", lambda e: e["ranking"][2].update(rank=4),
     lambda e: money.ranking_problems(e, True), "rewards_follow_stored_ranking", "ranks are not 1..n"),
    ("a worse rank is paid more", lambda e: (e["ranking"][0].update(reward_pct=375_000_000), e["ranking"][1].update(reward_pct=625_000_000),
                                              e.update(cruncher_rewards=[{"cruncher_index": 0, "reward_pct": 375_000_000},
                                                                         {"cruncher_index": 1, "reward_pct": 625_000_000}])),
     lambda e: money.ranking_problems(e, True), "rewards_follow_stored_ranking", "worse rank is paid more"),
    ("scores out of order", lambda e: e["ranking"][0].update(score=0.7),
     lambda e: money.ranking_problems(e, True), "rewards_follow_stored_ranking", "not in ranking order"),
    ("an ineligible model above an eligible one", lambda e: e["ranking"][0].update(eligible=False),
     lambda e: money.ranking_problems(e, True), "rewards_follow_stored_ranking", "ineligible model is ranked above"),
    ("an eligible model without a score", lambda e: e["ranking"][1].update(score=None),
     lambda e: money.ranking_problems(e, True), "rewards_follow_stored_ranking", "has no score"),
    ("an ineligible model is paid", lambda e: e["ranking"][1].update(eligible=False),
     lambda e: money.paid_eligibility_problems(e, Eligibility.minimum_coverage(0.0)), "paid_models_are_eligible",
     "b is paid but not eligible"),
    ("a paid model missing from cruncher rewards", lambda e: e.update(cruncher_rewards=[{"cruncher_index": 0, "reward_pct": 1_000_000_000}]),
     money.cruncher_reward_problems, "each_cruncher_once", "summed per cruncher"),
    ("a cruncher twice", lambda e: e.update(cruncher_rewards=[{"cruncher_index": 0, "reward_pct": 625_000_000},
                                                              {"cruncher_index": 0, "reward_pct": 375_000_000}]),
     money.cruncher_reward_problems, "each_cruncher_once", "appears twice"),
]


@pytest.mark.parametrize("change, problems_of, gate_check, words",
                         [pytest.param(*v[1:], id=v[0]) for v in VIOLATIONS])
def test_each_violation_is_named_and_refused_by_the_asset_check_and_the_gate(spec, change, problems_of, gate_check, words):
    entries = _broken(change)
    problems = problems_of(entries)
    assert problems and any(words in p for p in problems), problems
    asset_check = checks.check_rewards(KEY, entries, spec)
    assert not asset_check.passed and asset_check.severity == dg.AssetCheckSeverity.ERROR
    assert _gate(entries, spec)[gate_check] is False


def test_coverage_below_the_policy_is_refused_by_both(spec):
    coverage_spec = replace(spec, eligibility=Eligibility.minimum_coverage(0.8))
    entries = _broken(lambda e: e["ranking"][1].update(coverage=0.5))
    assert "coverage 0.5" in money.paid_eligibility_problems(entries, coverage_spec.eligibility)[0]
    assert not checks.check_rewards(KEY, entries, coverage_spec).passed
    assert not payouts.check_paid_models_eligible(entries, coverage_spec).passed
    assert checks.check_rewards(KEY, entries, spec).passed  # the spec's own policy decides


def test_a_checkpoint_that_pays_nothing_is_a_warning_not_an_error(spec):
    nothing = _entries([_row(1, "a", 0, 0.9, 0, eligible=False)])
    assert money.pays_nothing(nothing) and money.paid_models(nothing) == 0
    result = checks.check_rewards(KEY, nothing, spec)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert not payouts.check_some_model_is_paid(nothing).passed

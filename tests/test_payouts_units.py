"""The payout formats and the gate's pure checks, on hand-made checkpoints (the reference's figures)."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from crunch_assets import payouts
from resources.payout_accounts import PayoutAccounts
from crunch_assets.settings import CompetitionSettings
from crunch_assets.spec import Eligibility
from resources.store.rows import CheckpointRow

T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)


def _checkpoint(ranking, checkpoint_id=7, **entries) -> CheckpointRow:
    rewards = {}
    for r in ranking:
        if r["reward_pct"]:
            rewards[r["cruncher_index"]] = rewards.get(r["cruncher_index"], 0) + r["reward_pct"]
    body = {"crunch": "CrunchKey", "ranking": ranking,
            "cruncher_rewards": [{"cruncher_index": i, "reward_pct": p} for i, p in sorted(rewards.items())],
            "compute_provider_rewards": [{"provider": "Compute", "reward_pct": 10**9}], "data_provider_rewards": [],
            **entries}
    return CheckpointRow(checkpoint_id, T0, T0 + timedelta(days=7), "PENDING", None, None, body, "ab", "cd", {}, T0, T0)


def _row(rank, model, reward, score, cruncher, eligible=True, coverage=1.0):
    return {"rank": rank, "model_id": model, "reward_pct": reward, "score": score, "cruncher_index": cruncher,
            "eligible": eligible, "coverage": coverage}


def test_cli_format_percentages_and_prizes_as_the_reference():
    cp = _checkpoint([_row(1, "alpha", 600_000_000, 0.9, 3), _row(2, "beta", 400_000_000, 0.8, 5)])
    cli = payouts.cli_format(cp, pool=1_000_000)
    assert cli["rewards"] == {"alpha": 60.0, "beta": 40.0}
    assert cli["compute_provider_rewards"] == {"Compute": 100.0}
    assert cli["prizes"] == [{"prize_id": "7-alpha", "model_id": "alpha", "cruncher_index": 3, "amount": 600_000},
                             {"prize_id": "7-beta", "model_id": "beta", "cruncher_index": 5, "amount": 400_000}]
    assert payouts.frac64_to_percent(1) == 1e-7 and payouts.frac64_to_percent(333_333_334) == 33.3333334
    with pytest.raises(payouts.InvalidRequest):
        payouts.cli_format(cp, pool=0)


def test_gate_checks_on_good_and_bad_splits():
    from competitions.btc_updown.definitions import SPEC

    good = _checkpoint([_row(1, "a", 625_000_000, 0.9, 0), _row(2, "b", 375_000_000, 0.8, 1), _row(3, "c", 0, 0.1, 2, False)])
    assert payouts.check_reward_sum(good.entries).passed
    assert payouts.check_follows_ranking(good.entries, True).passed
    assert payouts.check_crunchers(good.entries, {"a": 0, "b": 1, "c": 2}).passed
    assert not payouts.check_crunchers(good.entries, {"a": 0, "b": 4, "c": 2}).passed  # not the registry's index
    inverted = _checkpoint([_row(1, "a", 375_000_000, 0.9, 0), _row(2, "b", 625_000_000, 0.8, 1)])
    assert not payouts.check_follows_ranking(inverted.entries, True).passed
    unordered = _checkpoint([_row(1, "a", 625_000_000, 0.7, 0), _row(2, "b", 375_000_000, 0.8, 1)])
    assert "not in ranking order" in payouts.check_follows_ranking(unordered.entries, True).detail
    assert payouts.check_follows_ranking(unordered.entries, False).passed  # lower is better
    paid_ineligible = _checkpoint([_row(1, "a", 10**9, 0.9, 0, eligible=False)])
    assert not payouts.check_paid_models_eligible(paid_ineligible.entries, SPEC).passed
    coverage_spec = replace(SPEC, eligibility=Eligibility.minimum_coverage(0.8))
    low = _checkpoint([_row(1, "a", 10**9, 0.9, 0, coverage=0.5)])
    assert "coverage 0.5" in payouts.check_paid_models_eligible(low.entries, coverage_spec).detail
    shared = _checkpoint([_row(1, "a", 600_000_000, 0.9, 0), _row(2, "b", 400_000_000, 0.8, 0)])
    assert payouts.check_crunchers(shared.entries, {"a": 0, "b": 0}).passed  # one cruncher, summed once
    assert shared.entries["cruncher_rewards"] == [{"cruncher_index": 0, "reward_pct": 10**9}]


def test_accounts_check_names_the_variable_and_refuses_a_stale_emission():
    settings = CompetitionSettings("btc_updown", environ={})
    cp = _checkpoint([_row(1, "a", 10**9, 0.9, 0)])
    missing = payouts.check_accounts(cp.entries, PayoutAccounts(compute_provider_pubkey="Compute"), settings)
    assert not missing.passed and "CRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY" in missing.detail
    other = payouts.check_accounts(cp.entries, PayoutAccounts(crunch_pubkey="Other", compute_provider_pubkey="Compute"), settings)
    assert not other.passed and "rebuild the checkpoint" in other.detail
    assert payouts.check_accounts(cp.entries, PayoutAccounts(crunch_pubkey="CrunchKey", compute_provider_pubkey="Compute"),
                                  settings).passed


def test_each_accounts_refusal_names_its_real_cause_and_its_fix():
    """A key missing in this process (a second shell without the deployment's environment) is
    fixed by setting the variable, not by rebuilding the checkpoint; a key that differs from the
    one the checkpoint was built with is fixed by a rebuild or by setting the variable back."""
    settings = CompetitionSettings("btc_updown", environ={})
    cp = _checkpoint([_row(1, "a", 10**9, 0.9, 0)])
    nothing = payouts.check_accounts(cp.entries, PayoutAccounts(), settings)
    assert not nothing.passed
    crunch_problem, compute_problem = nothing.detail.split("; ")
    assert "no crunch public key is configured in this process: set CRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY" in crunch_problem
    assert "'CrunchKey'" in crunch_problem and "rebuild" not in crunch_problem
    assert ("compute_provider_rewards pays ['Compute'], and no CRUNCH_BTC_UPDOWN_COMPUTE_PROVIDER_PUBKEY "
            "(or CRUNCH_COMPUTE_PROVIDER_PUBKEY) is configured in this process: set it") in compute_problem
    changed = payouts.check_accounts(cp.entries, PayoutAccounts(crunch_pubkey="CrunchKey", compute_provider_pubkey="NewCompute"),
                                     settings)
    assert not changed.passed
    assert "CRUNCH_BTC_UPDOWN_COMPUTE_PROVIDER_PUBKEY (or CRUNCH_COMPUTE_PROVIDER_PUBKEY) is 'NewCompute'" in changed.detail
    assert "rebuild the checkpoint (materialize emission_checkpoints for its period) while it is PENDING" in changed.detail
    added = payouts.check_accounts(cp.entries, PayoutAccounts(crunch_pubkey="CrunchKey", compute_provider_pubkey="Compute",
                                                              data_provider_pubkey="Data"), settings)
    assert not added.passed and "data_provider_rewards pays []" in added.detail and "rebuild" in added.detail


def test_requests_are_validated_before_anything_is_tried():
    for status, tx in (("DONE", None), ("SUBMITTED", None), ("SUBMITTED", "short"), ("PAID", "has space 0123456789")):
        with pytest.raises(payouts.InvalidRequest):
            payouts.validate_request(status, tx, "operator", None)
    with pytest.raises(payouts.InvalidRequest):
        payouts.validate_request("PAID", None, "", None)
    payouts.validate_request("SUBMITTED", "0x" + "f" * 64, "operator", "ok")


def _period(checkpoint_id, start, days, status, chained_root, previous_root=None) -> CheckpointRow:
    return CheckpointRow(checkpoint_id, start, start + timedelta(days=days), status, None, None, {}, "m", chained_root,
                         {"previous_chained_root": previous_root}, start, start)


def test_a_period_with_nothing_scored_is_crossed_only_when_the_store_shows_nothing_to_pay():
    # Week 1 paid, week 2 had no scores at all (a feed outage): no checkpoint was built for it, and
    # week 3's checkpoint chains to week 1's. Before, the gate refused week 3 forever (its period does
    # not start where the previous one ended) and no later period could ever be paid.
    week1 = _period(1, T0, 7, "PAID", "root1")
    week3 = _period(3, T0 + timedelta(days=14), 7, "PENDING", "root3", previous_root="root1")
    empty = payouts.PeriodGap(week1.period_end, week3.period_start, scores=0, unsettled=0)
    crossed = payouts.check_period_continues(week3, week1, None, empty)
    assert crossed.passed, crossed.detail
    assert "where nothing was scored" in crossed.detail

    # Scores in the gap (its checkpoint not built yet, or deleted), or predictions waiting there: refused, with why.
    for gap in (replace(empty, scores=12), replace(empty, unsettled=3)):
        refused = payouts.check_period_continues(week3, week1, None, gap)
        assert not refused.passed
        assert f"{gap.scores} score(s), {gap.unsettled} unsettled" in refused.detail
    # No facts about the gap: refused as before.
    assert not payouts.check_period_continues(week3, week1, None, None).passed
    # Facts about another span than the one between them do not bridge it.
    elsewhere = payouts.PeriodGap(week1.period_end, week3.period_start - timedelta(days=1), scores=0, unsettled=0)
    assert not payouts.check_period_continues(week3, week1, None, elsewhere).passed
    # Crossing a gap never excuses the rest: a wrong chain or a PENDING previous checkpoint is still refused.
    forged = _period(3, week3.period_start, 7, "PENDING", "root3", previous_root="other")
    assert "not the previous checkpoint's" in payouts.check_period_continues(forged, week1, None, empty).detail
    pending = replace(week1, status="PENDING")
    assert "still PENDING" in payouts.check_period_continues(week3, pending, None, empty).detail

"""The checkpoints stage's money check, evaluated inside the checkpoint asset it guards: the
invariants of crunch_assets/money.py, the same functions the payout gate runs."""

from __future__ import annotations

import dagster as dg

from crunch_assets import money
from crunch_assets.spec import CompetitionSpec

REWARDS_EXACT = "rewards_sum_to_one_billion_and_follow_ranking"


def check_rewards(key: dg.AssetKey, checkpoint: dict | None, spec: CompetitionSpec) -> dg.AssetCheckResult:
    """Money check: every invariant of crunch_assets/money.py, the same functions the payout gate
    runs: rewards whole, non-negative and summing to exactly 1e9 (ranking and cruncher rewards),
    ranks 1..n with eligible models first and scores in order, rewards never increasing with rank
    (under the contribution emission, with the composite), only eligible models paid, cruncher
    rewards the ranking's summed per cruncher. A checkpoint that pays nothing at all (no model
    eligible) fails it as a warning, not an error: the period can only be skipped by an operator,
    and its run (a replay, a backfill) goes on to the periods after it."""
    if checkpoint is None:
        return dg.AssetCheckResult(asset_key=key, check_name=REWARDS_EXACT, passed=True,
                                   metadata={"checkpoint": "none in this period"})
    rewards = [entry.get("reward_pct") for entry in checkpoint.get("ranking", [])]
    if money.pays_nothing(checkpoint):
        return dg.AssetCheckResult(
            asset_key=key, check_name=REWARDS_EXACT, passed=False, severity=dg.AssetCheckSeverity.WARN,
            metadata={"reward_sum": 0, "models": len(rewards), "paid_models": 0,
                      "nothing_to_pay": "no model is eligible: the checkpoint pays nothing and can never be submitted; "
                                        "an operator skips it (crunch-dagster checkpoints skip)"},
        )
    problems = money.invariant_problems(checkpoint, spec.ranking_descending, spec.eligibility,
                                        by_rank=spec.emission.kind != "contribution")
    return dg.AssetCheckResult(
        asset_key=key, check_name=REWARDS_EXACT, passed=not problems,
        metadata={"reward_sum": sum(r for r in rewards if isinstance(r, int)), "models": len(rewards),
                  "paid_models": money.paid_models(checkpoint), "problems": problems[:10]},
    )

"""Asset checks, evaluated inside the asset they guard (declared as its check_specs), so a
blocking failure stops the rest of the run before bad data flows on."""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg

from crunch_assets import money
from crunch_assets.spec import CompetitionSpec
from resources.feeds.base import CANDLE, FeedResource
from resources.store.competition import CompetitionStore
from resources.store.feeds import FeedStore

FEED_COMPLETE = "feed_has_every_candle"
EVERY_CYCLE_STORED = "every_due_cycle_has_predictions"
SCORES_FINITE = "scores_are_finite_and_unique"
LEADERBOARD_RANKED = "leaderboard_follows_ranking_key"
REWARDS_EXACT = "rewards_sum_to_one_billion_and_follow_ranking"


def check_every_cycle_stored(
    spec: CompetitionSpec, store: CompetitionStore, key: dg.AssetKey, start: datetime, end: datetime,
    waiting: list[str] | None = None,
) -> dg.AssetCheckResult:
    """Every cycle due in [start, end) has its input and predictions; a missing cycle would
    silently shift every mean."""
    counts = store.cycle_prediction_counts(start, end)
    due = spec.cycle_times(start, end)
    missing = [f"{c.isoformat()} {s.key}" for c, s in due if (c, s.key) not in counts]
    empty = [f"{c.isoformat()} {k}" for (c, k), n in counts.items() if n == 0]
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=EVERY_CYCLE_STORED,
        passed=not missing and not empty,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"cycles_due": len(due), "cycles_missing": len(missing), "cycles_without_predictions": len(empty),
                  "first_missing": missing[:5] + empty[:5], "waiting_for_feed": (waiting or [])[:5]},
    )


def check_scores_finite(store: CompetitionStore, key: dg.AssetKey, start: datetime, end: datetime) -> dg.AssetCheckResult:
    """Every score of the window is finite and unique (one per prediction, one per model, scope and
    cycle): what the rollups average and the checkpoint pays on."""
    scores, non_finite, duplicates = store.score_value_problems(start, end)
    return dg.AssetCheckResult(
        asset_key=key, check_name=SCORES_FINITE, passed=non_finite == 0 and duplicates == 0,
        metadata={"scores": scores, "non_finite": non_finite, "duplicates": duplicates},
    )


def check_leaderboard_ranked(spec: CompetitionSpec, key: dg.AssetKey, entries: list[dict]) -> dg.AssetCheckResult:
    values = [e.get(spec.ranking_key) for e in entries]
    valued = [v for v in values if v is not None]
    ordered = valued == sorted(valued, reverse=spec.ranking_descending)
    none_last = values[: len(valued)] == valued
    ranks_ok = [e["rank"] for e in entries] == list(range(1, len(entries) + 1))
    return dg.AssetCheckResult(
        asset_key=key, check_name=LEADERBOARD_RANKED, passed=ordered and none_last and ranks_ok,
        metadata={"models": len(entries), "ranking_key": spec.ranking_key},
    )


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


def _ranges(missing: list[datetime], step: timedelta) -> list[str]:
    """Consecutive missing bars as 'start .. end' (open times) for a readable report."""
    ranges, first, last = [], None, None
    for instant in missing:
        if first is not None and instant == last + step:
            last = instant
            continue
        if first is not None:
            ranges.append(first.isoformat() if first == last else f"{first.isoformat()} .. {last.isoformat()}")
        first = last = instant
    if first is not None:
        ranges.append(first.isoformat() if first == last else f"{first.isoformat()} .. {last.isoformat()}")
    return ranges


def check_feed_complete(
    spec: CompetitionSpec, feed: FeedResource, store: FeedStore, key: dg.AssetKey, start: datetime, end: datetime
) -> dg.AssetCheckResult:
    """Every candle stream has every bar observed (closed) in [start, end); names the gaps by
    open time. Not blocking: a gap must not stop predictions; its cycles wait for prices or are
    voided. Streams of other kinds have no fixed cadence and pass."""
    if feed.kind != CANDLE:
        return dg.AssetCheckResult(asset_key=key, check_name=FEED_COMPLETE, passed=True,
                                   metadata={"note": f"{feed.kind} records have no fixed cadence to check"})
    step = timedelta(seconds=feed.granularity_seconds)
    first = datetime.fromtimestamp(-(-start.timestamp() // step.total_seconds()) * step.total_seconds(), tz=start.tzinfo)
    expected = []
    instant = first
    while instant < end:
        expected.append(instant - step)  # open time of the bar closing at `instant`
        instant += step
    streams = [feed.stream(subject) for subject in spec.subjects]
    stored = store.load_records(streams, start, end - timedelta(microseconds=1))
    gaps = {}
    for stream in streams:
        present = {r.ts_event for r in stored.get(stream, [])}
        missing = [i for i in expected if i not in present]
        if missing:
            gaps[stream.subject] = {"missing": len(missing), "ranges": _ranges(missing, step)[:20]}
    return dg.AssetCheckResult(
        asset_key=key, check_name=FEED_COMPLETE, passed=not gaps, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"expected_per_subject": len(expected), "gaps": gaps},
    )

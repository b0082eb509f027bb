"""Asset checks, evaluated inside the asset they guard (declared as its check_specs), so a
blocking failure stops the rest of the run before bad data flows on."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import dagster as dg
import sqlalchemy as sa

from crunch_assets.ranking import FRAC64_ONE
from crunch_assets.store_queries import load_candles
from crunch_assets.spec import CompetitionSpec
from resources.store import schema as t

FEED_COMPLETE = "feed_has_every_candle"
EVERY_CYCLE_STORED = "every_due_cycle_has_predictions"
SCORES_FINITE = "scores_are_finite_and_unique"
LEADERBOARD_RANKED = "leaderboard_follows_ranking_key"
REWARDS_EXACT = "rewards_sum_to_one_billion_and_follow_ranking"


def check_every_cycle_stored(
    connection: sa.Connection, spec: CompetitionSpec, key: dg.AssetKey, start: datetime, end: datetime
) -> dg.AssetCheckResult:
    """Every cycle due in [start, end) has its input and predictions; a missing cycle would
    silently shift every mean."""
    i, p = t.inputs, t.predictions
    stored = connection.execute(
        sa.select(i.c.cycle_at, i.c.scope_key, sa.func.count(p.c.id))
        .outerjoin(p, p.c.input_id == i.c.id)
        .where(i.c.competition == spec.slug, i.c.cycle_at >= start, i.c.cycle_at < end)
        .group_by(i.c.cycle_at, i.c.scope_key)
    ).fetchall()
    counts = {(row[0], row[1]): int(row[2]) for row in stored}
    due = spec.cycle_times(start, end)
    missing = [f"{c.isoformat()} {s.key}" for c, s in due if (c, s.key) not in counts]
    empty = [f"{c.isoformat()} {k}" for (c, k), n in counts.items() if n == 0]
    passed = not missing and not empty
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=EVERY_CYCLE_STORED,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"cycles_due": len(due), "cycles_missing": len(missing), "cycles_without_predictions": len(empty),
                  "first_missing": missing[:5] + empty[:5]},
    )


def check_scores_finite(
    connection: sa.Connection, spec: CompetitionSpec, key: dg.AssetKey, start: datetime, end: datetime
) -> dg.AssetCheckResult:
    s = t.scores
    values = connection.execute(
        sa.select(s.c.value).where(s.c.competition == spec.slug, s.c.cycle_at >= start, s.c.cycle_at < end)
    ).scalars().all()
    bad = sum(1 for v in values if v is None or not math.isfinite(v))
    return dg.AssetCheckResult(
        asset_key=key, check_name=SCORES_FINITE, passed=bad == 0,
        metadata={"scores": len(values), "non_finite": bad},
    )


def check_leaderboard_ranked(spec: CompetitionSpec, key: dg.AssetKey, entries: list[dict]) -> dg.AssetCheckResult:
    values = [e.get(spec.ranking_key) for e in entries]
    scored = [v for v in values if v is not None]
    ordered = scored == sorted(scored, reverse=spec.ranking_descending)
    none_last = values[: len(scored)] == scored
    ranks_ok = [e["rank"] for e in entries] == list(range(1, len(entries) + 1))
    return dg.AssetCheckResult(
        asset_key=key, check_name=LEADERBOARD_RANKED, passed=ordered and none_last and ranks_ok,
        metadata={"models": len(entries), "ranking_key": spec.ranking_key},
    )


def check_rewards(key: dg.AssetKey, checkpoint: dict | None) -> dg.AssetCheckResult:
    """Money check: rewards sum to exactly 1e9, are non-negative and never increase with rank."""
    if checkpoint is None:
        return dg.AssetCheckResult(asset_key=key, check_name=REWARDS_EXACT, passed=True,
                                   metadata={"checkpoint": "none in this period"})
    rewards = [entry["reward_pct"] for entry in checkpoint["ranking"]]
    emitted = [entry["reward_pct"] for entry in checkpoint["cruncher_rewards"]]
    passed = (
        sum(rewards) == FRAC64_ONE
        and rewards == emitted
        and all(r >= 0 for r in rewards)
        and all(a >= b for a, b in zip(rewards, rewards[1:]))
    )
    return dg.AssetCheckResult(
        asset_key=key, check_name=REWARDS_EXACT, passed=passed,
        metadata={"reward_sum": sum(rewards), "models": len(rewards)},
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
    connection: sa.Connection, spec: CompetitionSpec, source: str, key: dg.AssetKey, granularity_seconds: int,
    open_start: datetime, open_end: datetime,
) -> dg.AssetCheckResult:
    """Every subject has every candle with open time in [open_start, open_end); names the gaps.
    Not blocking: a gap must not stop predictions; its cycles wait for prices or get voided."""
    step = timedelta(seconds=granularity_seconds)
    expected = []
    instant = open_start
    while instant < open_end:
        expected.append(instant)
        instant += step
    stored = load_candles(connection, source, spec.subjects, granularity_seconds, open_start, open_end)
    gaps = {}
    for subject in spec.subjects:
        present = {c.ts_event for c in stored.get(subject, [])}
        missing = [i for i in expected if i not in present]
        if missing:
            gaps[subject] = {"missing": len(missing), "ranges": _ranges(missing, step)[:20]}
    return dg.AssetCheckResult(
        asset_key=key, check_name=FEED_COMPLETE, passed=not gaps, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"expected_per_subject": len(expected), "gaps": gaps},
    )

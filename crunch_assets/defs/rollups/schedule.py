"""The daily rollup schedule: yesterday's snapshots and leaderboard as of midnight UTC (the final
word). `decide_daily_rollup` is the decision; `build_daily_rollup_schedule` the wrapper."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg

from crunch_assets.decisions import Decision
from crunch_assets.partitions import CompetitionPartitions
from crunch_assets.spec import CompetitionSpec


def decide_daily_rollup(spec: CompetitionSpec, partitions: CompetitionPartitions, scheduled_at: datetime) -> Decision:
    yesterday = scheduled_at.astimezone(timezone.utc) - timedelta(days=1)
    if yesterday < spec.start.replace(hour=0):
        return Decision.skip("the competition had not started yesterday")
    day = partitions.day_key(yesterday)
    return Decision.of([(dg.RunRequest(partition_key=day), f"{day}: the final rollup")], otherwise="")


def build_daily_rollup_schedule(spec: CompetitionSpec, partitions: CompetitionPartitions, rollup_job,
                                status: dg.DefaultScheduleStatus) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=f"{spec.slug}__daily_rollup_schedule", job=rollup_job, cron_schedule="15 0 * * *",
        execution_timezone="UTC", default_status=status,
        description="Yesterday's final snapshots and leaderboard, as of midnight UTC.",
    )
    def daily_rollup_schedule(context: dg.ScheduleEvaluationContext):
        decision = decide_daily_rollup(spec, partitions, context.scheduled_execution_time)
        return list(decision.requests) or dg.SkipReason(decision.skip_reason)

    return daily_rollup_schedule

"""Partition design (see docs/architecture.md).

A year of one-minute cycles is 525,600 cycles; Dagster wants under ~100,000 partitions per asset.
So cycles are rows inside hourly windows (8,760 partitions a year) for the feed, predictions and
scores; snapshots and leaderboards are daily (365 a year); checkpoints use the checkpoint interval
(52 a year at one week). The hourly and daily definitions include the window in progress
(end_offset=1) so a live cycle has a partition to write to; checkpoints cover closed periods only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import dagster as dg

from crunch_assets.spec import CompetitionSpec, checkpoint_cron

HOURLY_FORMAT = "%Y-%m-%d-%H:%M"
DAILY_FORMAT = "%Y-%m-%d"


@dataclass(frozen=True)
class CompetitionPartitions:
    hourly: dg.TimeWindowPartitionsDefinition
    daily: dg.TimeWindowPartitionsDefinition
    checkpoint: dg.TimeWindowPartitionsDefinition

    def hour_key(self, instant: datetime) -> str:
        """The key of the hourly window containing `instant`."""
        return instant.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0).strftime(HOURLY_FORMAT)

    def day_key(self, instant: datetime) -> str:
        """The key of the daily window containing `instant`."""
        return instant.astimezone(timezone.utc).strftime(DAILY_FORMAT)


def build_partitions(spec: CompetitionSpec) -> CompetitionPartitions:
    return CompetitionPartitions(
        hourly=dg.HourlyPartitionsDefinition(start_date=spec.start, timezone="UTC", fmt=HOURLY_FORMAT, end_offset=1),
        daily=dg.DailyPartitionsDefinition(
            start_date=spec.start.replace(hour=0), timezone="UTC", fmt=DAILY_FORMAT, end_offset=1
        ),
        checkpoint=dg.TimeWindowPartitionsDefinition(
            start=spec.start.replace(hour=0),
            cron_schedule=checkpoint_cron(spec.checkpoint_interval_seconds),
            fmt=HOURLY_FORMAT,
            timezone="UTC",
        ),
    )

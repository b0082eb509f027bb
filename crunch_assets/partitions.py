"""Partition design (see docs/architecture.md).

A year of one-minute cycles is 525,600 cycles; Dagster wants under ~100,000 partitions per asset.
So cycles are rows inside hourly windows (8,760 partitions a year) for the feed, predictions and
scores; snapshots and leaderboards are daily (365 a year). Checkpoint periods are any whole number
of hours: a time-window definition when a cron can express them (a week from Monday, a day, hours
dividing a day), otherwise dynamic partitions (one key per period, named by its start), added as
periods close. The hourly and daily definitions include the window in progress (end_offset=1) so
a live cycle has a partition to write to; checkpoints cover closed periods only.

Partition mappings are derived from the spec: a cycle's input reaches back `history_seconds`, a
score window needs the feed up to its end plus the longest horizon, a leaderboard reads back its
longest window (or the checkpoint period, if longer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import dagster as dg

from crunch_assets.spec import DAY_SECONDS, HOUR_SECONDS, WEEK_SECONDS, CompetitionSpec

HOURLY_FORMAT = "%Y-%m-%d-%H:%M"
DAILY_FORMAT = "%Y-%m-%d"


def floor_hour(instant: datetime) -> datetime:
    return instant.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def ceil_hour(instant: datetime) -> datetime:
    floor = floor_hour(instant)
    return floor if floor == instant else floor + timedelta(hours=1)


def checkpoint_cron(interval_seconds: int) -> str | None:
    """The cron of checkpoint periods when one exists (periods start where the previous ended)."""
    if interval_seconds == WEEK_SECONDS:
        return "0 0 * * 1"  # Monday 00:00 UTC
    if interval_seconds == DAY_SECONDS:
        return "0 0 * * *"
    if interval_seconds % HOUR_SECONDS == 0 and DAY_SECONDS % interval_seconds == 0:
        hours = interval_seconds // HOUR_SECONDS
        return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
    return None


@dataclass(frozen=True)
class CheckpointPeriods:
    """The checkpoint periods of a competition, whichever partitions definition carries them."""

    definition: dg.PartitionsDefinition
    interval: timedelta
    anchor: datetime  # dynamic periods: anchor + k * interval

    @property
    def is_dynamic(self) -> bool:
        return isinstance(self.definition, dg.DynamicPartitionsDefinition)

    def window(self, key: str) -> tuple[datetime, datetime]:
        if self.is_dynamic:
            start = datetime.strptime(key, HOURLY_FORMAT).replace(tzinfo=timezone.utc)
            return start, start + self.interval
        window = self.definition.time_window_for_partition_key(key)
        return window.start, window.end

    def key_for(self, start: datetime) -> str:
        return start.astimezone(timezone.utc).strftime(HOURLY_FORMAT)

    def periods_between(self, since: datetime, until: datetime) -> list[tuple[str, datetime, datetime]]:
        """(key, start, end) of every period with end in (since, until], in order."""
        if self.is_dynamic:
            k = max(0, math.floor((since - self.anchor) / self.interval))
            found = []
            while True:
                start = self.anchor + k * self.interval
                end = start + self.interval
                if end > until:
                    return found
                if end > since:
                    found.append((self.key_for(start), start, end))
                k += 1
        found = []
        for key in self.definition.get_partition_keys(current_time=until):
            start, end = self.window(key)
            if since < end <= until:
                found.append((key, start, end))
        return found


@dataclass(frozen=True)
class CompetitionPartitions:
    hourly: dg.TimeWindowPartitionsDefinition
    daily: dg.TimeWindowPartitionsDefinition
    checkpoint: CheckpointPeriods

    def hour_key(self, instant: datetime) -> str:
        """The key of the hourly window containing `instant`."""
        return floor_hour(instant).strftime(HOURLY_FORMAT)

    def day_key(self, instant: datetime) -> str:
        """The key of the daily window containing `instant`."""
        return instant.astimezone(timezone.utc).strftime(DAILY_FORMAT)


def first_period_start(spec: CompetitionSpec) -> datetime:
    """Where a cron's checkpoint periods begin: the start of the period holding the competition's
    start (periods of hours dividing a day), else its midnight. So no period wholly before the
    start is a partition: such a period has nothing to pay, and the UI would show it missing
    forever."""
    midnight = spec.start.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    interval = spec.checkpoint_interval_seconds
    if interval < DAY_SECONDS and interval % HOUR_SECONDS == 0 and DAY_SECONDS % interval == 0:
        return midnight + timedelta(seconds=(spec.start - midnight).total_seconds() // interval * interval)
    return midnight


def build_partitions(spec: CompetitionSpec) -> CompetitionPartitions:
    interval = timedelta(seconds=spec.checkpoint_interval_seconds)
    cron = checkpoint_cron(spec.checkpoint_interval_seconds)
    if cron is not None:
        checkpoint_definition = dg.TimeWindowPartitionsDefinition(
            start=first_period_start(spec), cron_schedule=cron, fmt=HOURLY_FORMAT, timezone="UTC"
        )
    else:
        checkpoint_definition = dg.DynamicPartitionsDefinition(name=f"{spec.slug}__checkpoint_periods")
    return CompetitionPartitions(
        hourly=dg.HourlyPartitionsDefinition(start_date=spec.start, timezone="UTC", fmt=HOURLY_FORMAT, end_offset=1),
        daily=dg.DailyPartitionsDefinition(
            start_date=spec.start.replace(hour=0), timezone="UTC", fmt=DAILY_FORMAT, end_offset=1
        ),
        checkpoint=CheckpointPeriods(checkpoint_definition, interval, spec.start),
    )


def _hours(seconds: float) -> int:
    return max(0, math.ceil(seconds / HOUR_SECONDS))


def input_feed_mapping(spec: CompetitionSpec) -> dg.TimeWindowPartitionMapping:
    """predictions of an hour <- feed windows back to the oldest input's lookback."""
    return dg.TimeWindowPartitionMapping(
        start_offset=-_hours(spec.history_seconds), end_offset=0, allow_nonexistent_upstream_partitions=True
    )


def truth_feed_mapping(spec: CompetitionSpec) -> dg.TimeWindowPartitionMapping:
    """scores of an hour <- feed windows from its entry prices to its last resolution."""
    return dg.TimeWindowPartitionMapping(
        start_offset=-1, end_offset=_hours(spec.max_horizon_seconds), allow_nonexistent_upstream_partitions=True
    )


def leaderboard_snapshots_mapping(spec: CompetitionSpec) -> dg.TimeWindowPartitionMapping:
    longest = max([w.seconds for w in spec.leaderboard_windows] + [spec.checkpoint_interval_seconds])
    return dg.TimeWindowPartitionMapping(
        start_offset=-math.ceil(longest / DAY_SECONDS), end_offset=0, allow_nonexistent_upstream_partitions=True
    )


def checkpoint_snapshots_mapping(periods: CheckpointPeriods) -> dg.PartitionMapping:
    if periods.is_dynamic:
        return dg.AllPartitionMapping()  # lineage: dynamic keys do not map to days by themselves
    return dg.TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=True)

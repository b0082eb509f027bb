"""What a sensor decides, apart from how it learns the facts: every sensor of a competition is a
pure decision (`decide_*`: spec, a small dataclass of store facts and `now` in, a `Decision` out)
and a thin `@dg.sensor` wrapper that gathers those facts, reads `resources.clock.now()`, calls
the decision and returns its result. The decisions are unit-tested without Dagster or a database
(tests/test_sensor_decisions_*.py); the wrappers through Dagster (tests/test_sensors.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import dagster as dg


@dataclass(frozen=True)
class Decision:
    """The runs a sensor requests, each with why, or why it requests none; the cursor it stores
    (None: leave the cursor as it is) and dynamic partitions it adds first."""

    requests: tuple[dg.RunRequest, ...] = ()
    why: tuple[str, ...] = ()  # one per request
    skip_reason: str | None = None
    cursor: str | None = None
    added_partition_keys: tuple[str, ...] = ()

    @classmethod
    def skip(cls, reason: str, cursor: str | None = None) -> Decision:
        return cls(skip_reason=reason, cursor=cursor)

    @classmethod
    def of(cls, requested: list[tuple[dg.RunRequest, str]], *, otherwise: str, cursor: str | None = None,
           added_partition_keys: tuple[str, ...] = ()) -> Decision:
        """The (request, why) pairs, or `otherwise` as the skip reason when there are none."""
        if not requested:
            return cls.skip(otherwise, cursor)
        return cls(requests=tuple(r for r, _ in requested), why=tuple(w for _, w in requested), cursor=cursor,
                   added_partition_keys=added_partition_keys)

    def sensor_result(self, dynamic_partitions: dg.DynamicPartitionsDefinition | None = None) -> dg.SensorResult:
        added = [dynamic_partitions.build_add_request(list(self.added_partition_keys))] \
            if dynamic_partitions is not None and self.added_partition_keys else None
        return dg.SensorResult(run_requests=list(self.requests), skip_reason=None if self.requests else self.skip_reason,
                               cursor=self.cursor, dynamic_partitions_requests=added)


def floor_to(instant: datetime, seconds: int) -> datetime:
    """`instant` rounded down to a multiple of `seconds` since the epoch (UTC)."""
    return datetime.fromtimestamp(int(instant.timestamp()) // seconds * seconds, tz=timezone.utc)


def sensor_status(running: bool) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED


def schedule_status(running: bool) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED

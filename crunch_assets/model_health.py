"""Fault policy: a model that fails N cycles in a row is quarantined (not called) for a cool-down,
then tried again.

The state is derived from the stored predictions, in cycle order, so a replay quarantines exactly
as the live run did. A quarantined cycle is recorded as a FAILED prediction (it counts against the
model: quarantine is no escape from bad cycles), and every quarantine is a row in model_events.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from resources.store import schema as t

QUARANTINE_META_KEY = "quarantined_until"


@dataclass
class ModelHealth:
    consecutive_failures: int = 0
    quarantined_until: datetime | None = None

    def is_quarantined(self, cycle_at: datetime) -> bool:
        return self.quarantined_until is not None and cycle_at < self.quarantined_until


class QuarantinePolicy:
    def __init__(self, failures_before_quarantine: int, cooldown_seconds: int):
        self.failures_before_quarantine = failures_before_quarantine
        self.cooldown = timedelta(seconds=cooldown_seconds)

    def record(self, health: ModelHealth, cycle_at: datetime, failed: bool) -> datetime | None:
        """Update after a called cycle; returns the quarantine end when this failure starts one."""
        if not failed:
            health.consecutive_failures = 0
            return None
        health.consecutive_failures += 1
        if self.failures_before_quarantine and health.consecutive_failures >= self.failures_before_quarantine:
            health.consecutive_failures = 0  # after the cool-down it needs N fresh failures again
            health.quarantined_until = cycle_at + self.cooldown
            return health.quarantined_until
        return None


def load_health(
    connection: sa.Connection, competition: str, model_ids: list[str], before: datetime, lookback: int
) -> dict[str, ModelHealth]:
    """Each model's state just before `before`, from its last `lookback` predictions."""
    p = t.predictions
    ranked = (
        sa.select(
            p.c.model_id, p.c.cycle_at, p.c.status, p.c.meta,
            sa.func.row_number().over(partition_by=p.c.model_id, order_by=p.c.cycle_at.desc()).label("recency"),
        )
        .where(p.c.competition == competition, p.c.model_id.in_(model_ids), p.c.cycle_at < before)
        .subquery()
    )
    rows = connection.execute(
        sa.select(ranked.c.model_id, ranked.c.status, ranked.c.meta)
        .where(ranked.c.recency <= lookback)
        .order_by(ranked.c.model_id, ranked.c.cycle_at.desc())
    ).fetchall()
    health = {model_id: ModelHealth() for model_id in model_ids}
    counting = {model_id: True for model_id in model_ids}
    for model_id, status, meta in rows:
        state = health[model_id]
        until = (meta or {}).get(QUARANTINE_META_KEY)
        if until is not None:
            # the newest quarantined cycle tells the quarantine's end; it also ends the failure run
            if state.quarantined_until is None and counting[model_id]:
                state.quarantined_until = datetime.fromisoformat(until)
            counting[model_id] = False
        elif counting[model_id]:
            if status == "FAILED":
                state.consecutive_failures += 1
            else:
                counting[model_id] = False
    return health

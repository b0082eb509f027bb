"""Fault policy: a model that fails N cycles in a row is quarantined (not called) for a cool-down,
then tried again.

The state is derived from the store as of a cycle time, the same way in every run: the model's
newest QUARANTINED event before that time says whether it is quarantined and until when, and its
trailing FAILED predictions since that quarantine say how close it is to the next one. So a live
run that calls one cycle reads exactly what a backfill of the hour computed in memory, and a
replay quarantines as the live run did. A quarantined cycle is recorded as a FAILED prediction (it
counts against the model: quarantine is no escape from bad cycles).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

from resources.store.competition import CompetitionStore
from resources.store.rows import ModelEventRow
from resources.store.lifecycles import PredictionStatus

QUARANTINE_META_KEY = "quarantined_until"
QUARANTINED = "QUARANTINED"


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

    def event(self, model_id: str, cycle_at: datetime, until: datetime) -> ModelEventRow:
        return ModelEventRow(
            model_id, QUARANTINED, cycle_at, f"{self.failures_before_quarantine} consecutive failed cycles",
            {QUARANTINE_META_KEY: until.isoformat(), "cooldown_seconds": int(self.cooldown.total_seconds())},
        )


def load_health(
    store: CompetitionStore, model_ids: Sequence[str], before: datetime, policy: QuarantinePolicy,
    rows_per_hour: float = 60.0,
) -> dict[str, ModelHealth]:
    """Each model's state just before `before`. Only the recent past is read: the rows that can
    still count (`rows_per_hour`: a model's predictions per hour, all scopes) and the quarantines
    that can still hold."""
    health = {model_id: ModelHealth() for model_id in model_ids}
    if not model_ids:
        return health
    lookback = max(2 * policy.failures_before_quarantine + 10, 20)
    reach = timedelta(hours=2 * lookback / max(rows_per_hour, 1e-9)) + policy.cooldown
    since = before - reach
    quarantines = store.latest_events(QUARANTINED, model_ids, before, since=since)
    for model_id, event in quarantines.items():
        health[model_id].quarantined_until = datetime.fromisoformat(event.meta[QUARANTINE_META_KEY])
    counting = dict.fromkeys(model_ids, True)
    # Newest first, as QuarantinePolicy.record saw them: an answer resets the count, a failure adds
    # one, an absence is not recorded; the cycle that started the last quarantine reset it too.
    for row in store.health_rows(model_ids, before, lookback, since):
        if not counting[row.model_id]:
            continue
        last_quarantine = quarantines.get(row.model_id)
        if last_quarantine is not None and row.cycle_at <= last_quarantine.at:
            counting[row.model_id] = False
        elif row.status == PredictionStatus.ABSENT:
            continue
        elif row.status == PredictionStatus.FAILED and QUARANTINE_META_KEY not in row.meta:
            health[row.model_id].consecutive_failures += 1
        else:
            counting[row.model_id] = False
    return health

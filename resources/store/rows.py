"""Typed rows the store reads and writes: the engine works with these, never with tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple


@dataclass(frozen=True)
class InputRow:
    """One cycle's model input, as built and sent."""

    scope_key: str
    cycle_at: datetime
    resolvable_at: datetime
    raw_data: Any
    scope: dict


@dataclass(frozen=True)
class PredictionRow:
    """One model's answer to one cycle, as made: PENDING (answered), FAILED or ABSENT."""

    model_id: str
    status: str
    status_reason: str | None = None
    exec_time_ms: float | None = None
    inference_output: Any = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CycleWrite:
    input: InputRow
    predictions: list[PredictionRow]


@dataclass(frozen=True)
class ModelEventRow:
    model_id: str
    event: str  # QUARANTINED | JOINED | LEFT | STATE_CHANGED
    at: datetime
    reason: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CyclesWritten:
    """What this write stored (a cycle another run stored first is not counted)."""

    cycles: int
    predictions_by_status: dict[str, int]
    stored: frozenset[tuple[datetime, str]] = frozenset()  # (cycle_at, scope_key) of the cycles stored


@dataclass(frozen=True)
class HealthRow:
    """A model's recent prediction, for the fault policy."""

    model_id: str
    cycle_at: datetime
    status: str
    meta: dict


class StoredPrediction(NamedTuple):  # a tuple: tens of thousands per scores run, built in C
    id: int
    model_id: str
    status: str
    status_reason: str | None
    inference_output: Any


@dataclass(frozen=True)
class CycleToSettle:
    """A cycle not yet resolved (RECEIVED) or voided, with its predictions that have no score."""

    input_id: int
    scope_key: str
    cycle_at: datetime
    resolvable_at: datetime
    status: str
    scope: dict
    predictions: list[StoredPrediction]


class ScoreRow(NamedTuple):  # likewise
    prediction_id: int
    model_id: str
    scope_key: str
    cycle_at: datetime
    value: float
    success: bool
    failed_reason: str | None
    result: dict


@dataclass(frozen=True)
class Resolution:
    input_id: int
    actuals: Any
    failure_value: float
    rules_fingerprint: str | None = None  # the rules the cycle was scored under (crunch_assets/fingerprint.py)


@dataclass(frozen=True)
class Voiding:
    input_id: int
    reason: str
    rules_fingerprint: str | None = None  # the rules the cycle was voided under


@dataclass(frozen=True)
class SettlementWritten:
    scores: int
    cycles_resolved: int
    cycles_voided: int


@dataclass(frozen=True)
class HourFingerprint:
    """What an hour's rollup depends on: if none of these moved, its snapshots are current."""

    cycle_count: int
    voided_count: int
    failure_value_sum: float
    score_count: int
    last_score_id: int | None


@dataclass(frozen=True)
class ScoredPrediction:
    """A score with what a snapshot summarises of it."""

    score_id: int
    model_id: str
    scope_key: str
    cycle_at: datetime
    input_id: int
    value: float
    success: bool
    prediction_status: str
    result: dict
    failure_value: float | None


@dataclass(frozen=True)
class SnapshotRow:
    model_id: str
    scope_key: str
    period_start: datetime
    period_end: datetime
    prediction_count: int
    value_sum: float
    failure_value_sum: float
    result_summary: dict = field(default_factory=dict)
    status_counts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CycleRollupRow:
    scope_key: str
    period_start: datetime
    period_end: datetime
    cycle_count: int
    voided_count: int
    failure_value_sum: float
    score_count: int = 0
    last_score_id: int | None = None


@dataclass(frozen=True)
class ModelRow:
    model_id: str
    name: str
    player_id: str | None
    player_name: str | None
    deployment_identifier: str | None
    state: str
    cruncher_index: int | None
    first_seen_at: datetime | None
    last_seen_at: datetime | None
    meta: dict


@dataclass(frozen=True)
class CheckpointRow:
    id: int
    period_start: datetime
    period_end: datetime
    status: str
    tx_hash: str | None
    submitted_at: datetime | None
    entries: dict
    merkle_root: str | None
    chained_root: str | None
    meta: dict
    created_at: datetime
    updated_at: datetime
    gate: dict | None = None  # the emission safety gate's last stored result
    commitment_scheme: int = 1  # how chained_root was computed (crunch_assets/merkle.py)


@dataclass(frozen=True)
class ScoreLeaf:
    """What a checkpoint commits to for one score."""

    model_id: str
    scope_key: str
    cycle_at: datetime
    inference_output: Any
    actuals: Any
    value: float


@dataclass(frozen=True)
class CopyResolutionRow:
    """An operator's decision on a copy cluster of a checkpoint period (append-only, audited):
    pay one member (`paid_model_id`), or pay them all."""

    id: int
    cluster_key: str
    members: tuple[str, ...]
    decision: str  # pay_one | pay_all
    paid_model_id: str | None
    actor: str
    at: datetime
    note: str | None = None
    checkpoint_id: int | None = None


@dataclass(frozen=True)
class RulesDocument:
    """A rules fingerprint and the document it is the sha256 of (crunch_assets/fingerprint.py)."""

    fingerprint: str
    cycle_digest: str
    document: dict


@dataclass(frozen=True)
class DisputeRow:
    """A dispute of a checkpoint: opened (who, what, which cycles) and, once, resolved."""

    id: int
    checkpoint_id: int
    claimant: str
    what: str
    cycles: list
    opened_by: str
    opened_at: datetime
    note: str | None = None
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    resolution: str | None = None
    resolution_id: int | None = None

    @property
    def is_open(self) -> bool:
        return self.resolution_id is None


@dataclass(frozen=True)
class StoredCycle:
    """A stored cycle as it happened: its input, status, truth and failure value, and (when read
    with them) its predictions as made. What a what-if rescores and a shadow entry is run on."""

    input_id: int
    scope_key: str
    cycle_at: datetime
    resolvable_at: datetime
    status: str  # RECEIVED | RESOLVED | VOIDED
    scope: dict
    raw_data: Any
    actuals: Any
    failure_value: float | None
    rules_fingerprint: str | None
    predictions: list[StoredPrediction] = field(default_factory=list)

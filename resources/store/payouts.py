"""A checkpoint's payment lifecycle: status transitions, their append-only audit, the stored
safety-gate results.

Every transition is one call of `crunch.advance_checkpoint` (migration 0006, SECURITY DEFINER;
PENDING -> SKIPPED since 0008, replaced again by 0010): under a row lock it checks the legal move,
the tx hash and that the passing gate result given is this very row's (for SKIPPED: a reason, no
tx hash, the checkpoint before it past PENDING, and a stored gate result that refused this very
row) and, before SUBMITTED or SKIPPED, that no dispute of the checkpoint is open and its dispute
window has passed, then updates the checkpoint and appends the audit row, in one statement. The
report API's role may do nothing else to a checkpoint (it holds no UPDATE or INSERT privilege),
and the engine's may not touch its status. Which gate checks a checkpoint must pass is the
engine's business (crunch_assets/payouts.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import sqlalchemy as sa

from resources.store import json_codec
from resources.store import schema as t
from resources.store.competition import _checkpoint_row
from resources.store.rows import CheckpointRow


@dataclass(frozen=True)
class AuditRow:
    id: int
    checkpoint_id: int
    from_status: str
    to_status: str
    tx_hash: str | None
    actor: str
    at: datetime
    note: str | None
    chained_root: str | None = None  # the checkpoint's, when the row was written
    digest: str | None = None  # chained to the previous row of the checkpoint (crunch.audit_row_digest)


@dataclass(frozen=True)
class TransitionOutcome:
    checkpoint: CheckpointRow
    changed: bool  # False: the checkpoint already was there with the same tx_hash (an idempotent repeat)
    audit: AuditRow | None  # the row this call appended (None when unchanged)
    message: str


class CheckpointNotFound(LookupError):
    pass


class TransitionConflict(Exception):
    """The transition is not possible from the checkpoint's current state; the message says why."""

    def __init__(self, message: str, current_status: str):
        super().__init__(message)
        self.current_status = current_status


class PayoutStore:
    def __init__(self, engine: sa.Engine, slug: str):
        self.engine = engine
        self.slug = slug

    def transition(
        self, checkpoint_id: int, to_status: str, *, actor: str, tx_hash: str | None = None, note: str | None = None,
        gate: dict | None = None,
    ) -> TransitionOutcome:
        """Move the checkpoint to `to_status` (from the one status before it) and append the audit
        row, in one statement. Already at `to_status` with the same tx_hash: nothing changes
        (changed=False). SUBMITTED needs `gate`, a passing result for the row as it is now (its
        `checkpoint_updated_at`, `merkle_root` and `chained_root`): a checkpoint rebuilt since is
        refused, and so is one with an open dispute (also one recorded while the gate ran) or within
        its dispute window; the gate is stored with the checkpoint. SKIPPED needs `note` (the reason)
        and the refusing gate result stored first (`record_gate`); it takes no tx_hash or gate, and
        is refused with an open dispute or within the dispute window too."""
        c, a = t.checkpoints, t.checkpoint_audit
        with self.engine.begin() as connection:
            result = connection.execute(
                sa.text("SELECT outcome, message, checkpoint_status, audit_id FROM crunch.advance_checkpoint("
                        ":competition, :id, :to_status, :actor, :tx_hash, :note, CAST(:gate AS jsonb))"),
                {"competition": self.slug, "id": checkpoint_id, "to_status": to_status, "actor": actor,
                 "tx_hash": tx_hash, "note": note, "gate": None if gate is None else json_codec.dumps(gate)},
            ).one()
            if result.outcome == "not_found":
                raise CheckpointNotFound(result.message)
            if result.outcome not in ("changed", "unchanged"):
                raise TransitionConflict(result.message, result.checkpoint_status)
            row = connection.execute(sa.select(c).where(c.c.id == checkpoint_id)).one()
            audit = (connection.execute(sa.select(a).where(a.c.id == result.audit_id)).one()
                     if result.audit_id is not None else None)
        return TransitionOutcome(_checkpoint_row(row), result.outcome == "changed",
                                 AuditRow(*audit) if audit is not None else None, result.message)

    def record_gate(self, checkpoint_id: int, gate: dict) -> None:
        """Store a gate run's results with a PENDING checkpoint (also a failing one: operators see
        why); the gate a checkpoint was submitted with is never replaced."""
        with self.engine.begin() as connection:
            connection.execute(
                sa.text("SELECT crunch.record_checkpoint_gate(:competition, :id, CAST(:gate AS jsonb))"),
                {"competition": self.slug, "id": checkpoint_id, "gate": json_codec.dumps(gate)},
            )

    def gate(self, checkpoint_id: int) -> dict | None:
        c = t.checkpoints
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(c.c.gate).where(c.c.competition == self.slug, c.c.id == checkpoint_id)
            ).scalar()

    def audit_trails(self, checkpoint_ids: Sequence[int] | None = None) -> dict[int, list[AuditRow]]:
        """checkpoint id -> its audit rows in order, for every checkpoint of the competition (or
        only those of `checkpoint_ids`)."""
        a, c = t.checkpoint_audit, t.checkpoints
        query = sa.select(a).join(c, c.c.id == a.c.checkpoint_id).where(c.c.competition == self.slug)
        if checkpoint_ids is not None:
            query = query.where(a.c.checkpoint_id.in_(list(checkpoint_ids)))
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(a.c.checkpoint_id, a.c.id)).fetchall()
        trails: dict[int, list[AuditRow]] = {}
        for row in rows:
            trails.setdefault(row.checkpoint_id, []).append(AuditRow(*row))
        return trails

    def audit_trail(self, checkpoint_id: int) -> list[AuditRow]:
        a, c = t.checkpoint_audit, t.checkpoints
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(a).join(c, c.c.id == a.c.checkpoint_id)
                .where(c.c.competition == self.slug, a.c.checkpoint_id == checkpoint_id).order_by(a.c.id)
            ).fetchall()
        return [AuditRow(*row) for row in rows]

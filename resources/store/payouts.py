"""A checkpoint's payment lifecycle: status transitions, their append-only audit, the stored
safety-gate results. Every transition is one transaction: the checkpoint row is locked
(`SELECT .. FOR UPDATE`), its status checked, updated, and an audit row appended.

Which transitions are legal and what the gate checks is the engine's business
(crunch_assets/payouts.py); this module only enforces, under the lock, what the caller states:
the status the checkpoint must be in, and (for a gated step) that it is still the row the gate
looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from resources.store import schema as t
from resources.store.competition import _checkpoint_row
from resources.store.disputes import open_dispute_count
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

    def _locked(self, connection: sa.Connection, checkpoint_id: int):
        c = t.checkpoints
        row = connection.execute(
            sa.select(c).where(c.c.competition == self.slug, c.c.id == checkpoint_id).with_for_update()
        ).first()
        if row is None:
            raise CheckpointNotFound(f"no checkpoint {checkpoint_id} in {self.slug}")
        return row

    def transition(
        self, checkpoint_id: int, from_status: str, to_status: str, *, actor: str, tx_hash: str | None = None,
        note: str | None = None, gate: dict | None = None, gated_version: datetime | None = None,
    ) -> TransitionOutcome:
        """Move the checkpoint from `from_status` to `to_status` and append the audit row, in one
        transaction. Already at `to_status` with the same tx_hash: nothing changes (changed=False).
        `gated_version`: the checkpoint's `updated_at` the gate checked; a checkpoint rebuilt since
        is refused. `gate` is stored with the checkpoint."""
        c, a = t.checkpoints, t.checkpoint_audit
        with self.engine.begin() as connection:
            row = self._locked(connection, checkpoint_id)
            if row.status == to_status:
                recorded = self._last_tx_hash(connection, checkpoint_id, to_status) if to_status != "SUBMITTED" else row.tx_hash
                if recorded == tx_hash or (tx_hash is None and to_status != "SUBMITTED"):
                    return TransitionOutcome(_checkpoint_row(row), False, None,
                                             f"checkpoint {checkpoint_id} is already {to_status}: nothing changed")
                raise TransitionConflict(
                    f"checkpoint {checkpoint_id} is already {to_status} with tx_hash {recorded!r}, not {tx_hash!r}",
                    row.status,
                )
            if row.status != from_status:
                raise TransitionConflict(
                    f"checkpoint {checkpoint_id} is {row.status}: {to_status} needs it {from_status}", row.status
                )
            if gated_version is not None and row.updated_at != gated_version:
                raise TransitionConflict(
                    f"checkpoint {checkpoint_id} was rebuilt while the gate ran; run the transition again", row.status
                )
            if to_status == "SUBMITTED":
                # A dispute opened while the gate ran (disputes take this row's lock too).
                disputed = open_dispute_count(connection, checkpoint_id)
                if disputed:
                    raise TransitionConflict(
                        f"checkpoint {checkpoint_id} has {disputed} open dispute(s): resolve them before submitting",
                        row.status)
            values: dict = {"status": to_status, "updated_at": sa.func.now()}
            if to_status == "SUBMITTED":
                values.update(tx_hash=tx_hash, submitted_at=sa.func.now())
            if gate is not None:
                values["gate"] = gate
            updated = connection.execute(
                sa.update(c).where(c.c.id == checkpoint_id).values(**values).returning(*c.c)
            ).one()
            audit = connection.execute(
                sa.insert(a).values(checkpoint_id=checkpoint_id, from_status=row.status, to_status=to_status,
                                    tx_hash=tx_hash, actor=actor, note=note).returning(*a.c)
            ).one()
        return TransitionOutcome(_checkpoint_row(updated), True, AuditRow(*audit),
                                 f"checkpoint {checkpoint_id}: {row.status} -> {to_status}")

    def _last_tx_hash(self, connection: sa.Connection, checkpoint_id: int, to_status: str) -> str | None:
        a = t.checkpoint_audit
        return connection.execute(
            sa.select(a.c.tx_hash).where(a.c.checkpoint_id == checkpoint_id, a.c.to_status == to_status)
            .order_by(a.c.id.desc()).limit(1)
        ).scalar()

    def record_gate(self, checkpoint_id: int, gate: dict) -> None:
        """Store a gate run's results with the checkpoint (also a failing one: operators see why)."""
        c = t.checkpoints
        with self.engine.begin() as connection:
            self._locked(connection, checkpoint_id)
            connection.execute(sa.update(c).where(c.c.id == checkpoint_id).values(gate=gate))

    def gate(self, checkpoint_id: int) -> dict | None:
        c = t.checkpoints
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(c.c.gate).where(c.c.competition == self.slug, c.c.id == checkpoint_id)
            ).scalar()

    def audit_trail(self, checkpoint_id: int) -> list[AuditRow]:
        a, c = t.checkpoint_audit, t.checkpoints
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(a).join(c, c.c.id == a.c.checkpoint_id)
                .where(c.c.competition == self.slug, a.c.checkpoint_id == checkpoint_id).order_by(a.c.id)
            ).fetchall()
        return [AuditRow(*row) for row in rows]

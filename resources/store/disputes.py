"""Checkpoint disputes: each step a row of crunch.checkpoint_disputes (append-only: a trigger refuses
UPDATE and DELETE). A dispute is OPENED (who disputes what, which cycles) and RESOLVED once (a
unique index); an open dispute blocks the checkpoint's submission (the gate, and the transition
itself under the checkpoint row's lock: resources/store/payouts.py).

Both steps take the checkpoint row's lock and are refused unless the checkpoint is PENDING: a
dispute is about money not paid yet.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from resources.store import schema as t
from resources.store.rows import DisputeRow

OPENED = "OPENED"
RESOLVED = "RESOLVED"


class DisputeRefused(Exception):
    """The dispute step cannot be recorded; the message says why. `status` is the checkpoint's;
    `not_found`: no such checkpoint or dispute."""

    def __init__(self, message: str, status: str | None = None, not_found: bool = False):
        super().__init__(message)
        self.status = status
        self.not_found = not_found


def open_dispute_count(connection: sa.Connection, checkpoint_id: int) -> int:
    """Disputes of the checkpoint opened and not resolved (inside the caller's transaction)."""
    d = t.checkpoint_disputes
    resolved = sa.select(d.c.dispute_id).where(d.c.checkpoint_id == checkpoint_id, d.c.action == RESOLVED)
    return int(connection.execute(
        sa.select(sa.func.count()).where(d.c.checkpoint_id == checkpoint_id, d.c.action == OPENED,
                                         d.c.id.not_in(resolved.scalar_subquery()))
    ).scalar_one())


class DisputeStore:
    def __init__(self, engine: sa.Engine, slug: str):
        self.engine = engine
        self.slug = slug

    def _pending(self, connection: sa.Connection, checkpoint_id: int, doing: str):
        c = t.checkpoints
        row = connection.execute(
            sa.select(c.c.status, c.c.period_start, c.c.period_end)
            .where(c.c.competition == self.slug, c.c.id == checkpoint_id).with_for_update()
        ).first()
        if row is None:
            raise DisputeRefused(f"no checkpoint {checkpoint_id} in {self.slug}", not_found=True)
        if row.status != "PENDING":
            raise DisputeRefused(f"checkpoint {checkpoint_id} is {row.status}: a dispute can be {doing} only while "
                                 "it is PENDING (before it is submitted)", row.status)
        return row

    def open(self, checkpoint_id: int, *, claimant: str, what: str, cycles: list[tuple[datetime, datetime]],
             actor: str, note: str | None = None) -> DisputeRow:
        """Record a dispute of the checkpoint's cycles (each (first, last) cycle time, inclusive,
        inside its period), under the checkpoint row's lock."""
        d = t.checkpoint_disputes
        with self.engine.begin() as connection:
            checkpoint = self._pending(connection, checkpoint_id, "opened")
            for first, last in cycles:
                if not (checkpoint.period_start <= first <= last < checkpoint.period_end):
                    raise DisputeRefused(
                        f"cycles {first.isoformat()} .. {last.isoformat()} are not inside checkpoint {checkpoint_id}'s "
                        f"period {checkpoint.period_start.isoformat()} .. {checkpoint.period_end.isoformat()} "
                        "(first <= last, end exclusive)", checkpoint.status)
            row = connection.execute(
                sa.insert(d).values(competition=self.slug, checkpoint_id=checkpoint_id, action=OPENED,
                                    claimant=claimant, what=what,
                                    cycles=[{"first": a.isoformat(), "last": b.isoformat()} for a, b in cycles],
                                    actor=actor, note=note).returning(*d.c)
            ).one()
        return _dispute(row, None)

    def resolve(self, checkpoint_id: int, dispute_id: int, *, resolution: str, actor: str) -> DisputeRow:
        """Record how an open dispute of the checkpoint was resolved, under the checkpoint row's lock."""
        d = t.checkpoint_disputes
        with self.engine.begin() as connection:
            checkpoint = self._pending(connection, checkpoint_id, "resolved")
            opened = connection.execute(
                sa.select(d).where(d.c.competition == self.slug, d.c.checkpoint_id == checkpoint_id,
                                   d.c.id == dispute_id, d.c.action == OPENED)
            ).first()
            if opened is None:
                raise DisputeRefused(f"checkpoint {checkpoint_id} has no dispute {dispute_id}", checkpoint.status,
                                     not_found=True)
            done = connection.execute(
                sa.select(d.c.id).where(d.c.dispute_id == dispute_id, d.c.action == RESOLVED)
            ).first()
            if done is not None:
                raise DisputeRefused(f"dispute {dispute_id} is already resolved (#{done.id})", checkpoint.status)
            row = connection.execute(
                sa.insert(d).values(competition=self.slug, checkpoint_id=checkpoint_id, action=RESOLVED,
                                    dispute_id=dispute_id, actor=actor, note=resolution).returning(*d.c)
            ).one()
        return _dispute(opened, row)

    def disputes(self, checkpoint_id: int) -> list[DisputeRow]:
        """Every dispute of the checkpoint, oldest first, with its resolution if it has one."""
        d = t.checkpoint_disputes
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(d).where(d.c.competition == self.slug, d.c.checkpoint_id == checkpoint_id).order_by(d.c.id)
            ).fetchall()
        resolutions = {row.dispute_id: row for row in rows if row.action == RESOLVED}
        return [_dispute(row, resolutions.get(row.id)) for row in rows if row.action == OPENED]

    def open_disputes(self, checkpoint_id: int) -> list[DisputeRow]:
        return [d for d in self.disputes(checkpoint_id) if d.is_open]


def _dispute(opened, resolved) -> DisputeRow:
    return DisputeRow(
        id=opened.id, checkpoint_id=opened.checkpoint_id, claimant=opened.claimant, what=opened.what,
        cycles=list(opened.cycles or []), opened_by=opened.actor, opened_at=opened.at, note=opened.note,
        resolved_by=resolved.actor if resolved is not None else None,
        resolved_at=resolved.at if resolved is not None else None,
        resolution=resolved.note if resolved is not None else None,
        resolution_id=resolved.id if resolved is not None else None,
    )

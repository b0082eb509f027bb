"""Checkpoint disputes: each step a row of crunch.checkpoint_disputes (append-only). A dispute is
OPENED (who disputes what, which cycles) and RESOLVED once; an open dispute blocks the checkpoint's
submission (the gate's `no_open_dispute`, and crunch.advance_checkpoint itself, under the
checkpoint row's lock: migration 0010).

Both steps are one call of the database's SECURITY DEFINER functions crunch.open_checkpoint_dispute
and crunch.resolve_checkpoint_dispute (migration 0010; the api role may write the table no other
way): under the checkpoint row's lock, refused unless the checkpoint is PENDING (a dispute is about
money not paid yet), with the cycles inside its period and a dispute resolved once.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from resources.store import json_codec
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


class DisputeStore:
    def __init__(self, engine: sa.Engine, slug: str):
        self.engine = engine
        self.slug = slug

    def open(self, checkpoint_id: int, *, claimant: str, what: str, cycles: list[tuple[datetime, datetime]],
             actor: str, note: str | None = None) -> DisputeRow:
        """Record a dispute of the checkpoint's cycles (each (first, last) cycle time, inclusive,
        inside its period) through crunch.open_checkpoint_dispute."""
        d = t.checkpoint_disputes
        ranges = [{"first": a.isoformat(), "last": b.isoformat()} for a, b in cycles]
        with self.engine.begin() as connection:
            outcome, message, status, dispute_id = connection.execute(
                sa.text("SELECT outcome, message, checkpoint_status, dispute_id FROM crunch.open_checkpoint_dispute("
                        ":competition, :checkpoint_id, :claimant, :what, CAST(:cycles AS jsonb), :actor, :note)"),
                {"competition": self.slug, "checkpoint_id": checkpoint_id, "claimant": claimant, "what": what,
                 "cycles": json_codec.dumps(ranges), "actor": actor, "note": note},
            ).one()
            if outcome != "opened":
                raise DisputeRefused(message, status, not_found=outcome == "not_found")
            row = connection.execute(sa.select(d).where(d.c.id == dispute_id)).one()
        return _dispute(row, None)

    def resolve(self, checkpoint_id: int, dispute_id: int, *, resolution: str, actor: str) -> DisputeRow:
        """Record how an open dispute of the checkpoint was resolved through
        crunch.resolve_checkpoint_dispute."""
        d = t.checkpoint_disputes
        with self.engine.begin() as connection:
            outcome, message, status, resolution_id = connection.execute(
                sa.text("SELECT outcome, message, checkpoint_status, resolution_id FROM crunch.resolve_checkpoint_dispute("
                        ":competition, :checkpoint_id, :dispute_id, :resolution, :actor)"),
                {"competition": self.slug, "checkpoint_id": checkpoint_id, "dispute_id": dispute_id,
                 "resolution": resolution, "actor": actor},
            ).one()
            if outcome != "resolved":
                raise DisputeRefused(message, status, not_found=outcome == "not_found")
            opened = connection.execute(sa.select(d).where(d.c.id == dispute_id)).one()
            row = connection.execute(sa.select(d).where(d.c.id == resolution_id)).one()
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

"""Rules fingerprints in the store: the documents (append-only, one row per fingerprint and
competition), and the fingerprint each cycle was resolved under (inputs.rules_fingerprint, written
with the cycle's scores by CompetitionStore.write_settlement)."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable, Sequence

import sqlalchemy as sa

from resources.store import schema as t
from resources.store.rows import RulesDocument
from resources.store.lifecycles import InputStatus


def record_documents(connection: sa.Connection, slug: str, documents: Iterable[RulesDocument]) -> None:
    """Record fingerprints not recorded yet (a recorded one is never rewritten: append-only)."""
    rows = [{"competition": slug, "fingerprint": d.fingerprint, "cycle_digest": d.cycle_digest,
             "document": d.document} for d in documents]
    if rows:
        statement = sa.dialects.postgresql.insert(t.rules_fingerprints).values(rows)
        connection.execute(statement.on_conflict_do_nothing(index_elements=["competition", "fingerprint"]))


class RulesStore:
    def __init__(self, engine: sa.Engine, slug: str):
        self.engine = engine
        self.slug = slug

    def record(self, documents: Iterable[RulesDocument]) -> None:
        with self.engine.begin() as connection:
            record_documents(connection, self.slug, documents)

    def documents(self, fingerprints: Sequence[str] | None = None) -> dict[str, RulesDocument]:
        """fingerprint -> its recorded document (all of the competition's when None)."""
        r = t.rules_fingerprints
        query = sa.select(r.c.fingerprint, r.c.cycle_digest, r.c.document).where(r.c.competition == self.slug)
        if fingerprints is not None:
            if not fingerprints:
                return {}
            query = query.where(r.c.fingerprint.in_(list(fingerprints)))
        with self.engine.connect() as connection:
            return {row.fingerprint: RulesDocument(row.fingerprint, row.cycle_digest, row.document)
                    for row in connection.execute(query.order_by(r.c.id))}

    def cycle_digests(self, fingerprints: Sequence[str]) -> dict[str, str]:
        """fingerprint -> its cycle digest, for the recorded ones (without the documents)."""
        if not fingerprints:
            return {}
        r = t.rules_fingerprints
        with self.engine.connect() as connection:
            return dict(connection.execute(
                sa.select(r.c.fingerprint, r.c.cycle_digest)
                .where(r.c.competition == self.slug, r.c.fingerprint.in_(list(fingerprints)))
            ).fetchall())

    def cycle_labels(self, start: datetime, end: datetime) -> list[tuple[datetime, str, str | None]]:
        """(cycle_at, scope_key, fingerprint) of every resolved or voided cycle of [start, end)."""
        i = t.inputs
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(
                sa.select(i.c.cycle_at, i.c.scope_key, i.c.rules_fingerprint)
                .where(i.c.competition == self.slug, i.c.cycle_at >= start, i.c.cycle_at < end,
                       i.c.status.in_([InputStatus.RESOLVED, InputStatus.VOIDED]))
                .order_by(i.c.cycle_at, i.c.scope_key)
            )]

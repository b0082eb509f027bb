"""Copy detection's reads and writes: a period's successful outputs (streamed, one query per scope),
the registry's first-seen times, the copy clusters stored with each checkpoint period, and the
operator's resolutions (append-only; a trigger refuses UPDATE and DELETE).

A resolution is recorded under the checkpoint row's lock and only while the checkpoint is PENDING:
paid money does not move.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterator

import sqlalchemy as sa

from resources.store import schema as t
from resources.store.rows import CopyResolutionRow

OUTPUTS_FETCH_ROWS = 20_000


class CopyResolutionRefused(Exception):
    """The resolution cannot be recorded (the checkpoint is past PENDING, the cluster is not one of
    its period, the model is not a member); the message says why. `status` is the checkpoint's."""

    def __init__(self, message: str, status: str | None = None, not_found: bool = False):
        super().__init__(message)
        self.status = status
        self.not_found = not_found


class CopyStore:
    def __init__(self, engine: sa.Engine, slug: str):
        self.engine = engine
        self.slug = slug

    def outputs(self, scope_key: str, start: datetime, end: datetime) -> Iterator[tuple[int, str, str]]:
        """(cycle time in epoch seconds, model id, output as JSON text) of every answered prediction
        (made status PENDING) of the scope's cycles in [start, end) that are not voided, in cycle
        order: a server-side cursor, so a week of 1,000 models never sits in memory."""
        with self.engine.connect() as connection:
            with connection.connection.dbapi_connection.cursor(name="copy_outputs") as cursor:
                cursor.itersize = OUTPUTS_FETCH_ROWS
                cursor.execute(
                    "SELECT extract(epoch FROM p.cycle_at)::bigint, p.model_id, p.inference_output::text "
                    "FROM crunch.predictions p JOIN crunch.inputs i ON i.id = p.input_id "
                    "WHERE p.competition = %(slug)s AND p.cycle_at >= %(start)s AND p.cycle_at < %(end)s "
                    "AND p.scope_key = %(scope)s AND p.status = 'PENDING' AND p.inference_output IS NOT NULL "
                    "AND i.status <> 'VOIDED' ORDER BY p.cycle_at",
                    {"slug": self.slug, "start": start, "end": end, "scope": scope_key},
                )
                yield from cursor
            connection.rollback()

    def registrations(self) -> dict[str, datetime | None]:
        """model_id -> first seen by the registry (only ever moves earlier)."""
        m = t.models
        with self.engine.connect() as connection:
            return dict(connection.execute(
                sa.select(m.c.model_id, m.c.first_seen_at).where(m.c.competition == self.slug)
            ).fetchall())

    def resolutions(self, start: datetime, end: datetime) -> dict[str, CopyResolutionRow]:
        """cluster_key -> the latest resolution of the period [start, end)."""
        r = t.copy_resolutions
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(r).where(r.c.competition == self.slug, r.c.period_start == start, r.c.period_end == end)
                .order_by(r.c.cluster_key, r.c.id)
            ).fetchall()
        return {row.cluster_key: _resolution(row) for row in rows}

    def resolution_history(self, checkpoint_id: int) -> list[CopyResolutionRow]:
        r = t.copy_resolutions
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(r).where(r.c.competition == self.slug, r.c.checkpoint_id == checkpoint_id).order_by(r.c.id)
            ).fetchall()
        return [_resolution(row) for row in rows]

    def latest_resolution_id(self, start: datetime, end: datetime) -> int | None:
        r = t.copy_resolutions
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(sa.func.max(r.c.id)).where(r.c.competition == self.slug, r.c.period_start == start,
                                                     r.c.period_end == end)
            ).scalar()

    def clusters(self, start: datetime, end: datetime) -> list[dict]:
        """The period's stored clusters (as in the checkpoint's entries), by cluster key."""
        c = t.copy_clusters
        with self.engine.connect() as connection:
            return [row.detail for row in connection.execute(
                sa.select(c.c.detail).where(c.c.competition == self.slug, c.c.period_start == start,
                                            c.c.period_end == end).order_by(c.c.cluster_key)
            )]

    def record_resolution(
        self, checkpoint_id: int, cluster_key: str, decision: str, paid_model_id: str | None, *, actor: str,
        note: str | None = None,
    ) -> CopyResolutionRow:
        """Append the operator's decision on one of the checkpoint's clusters through the database's
        crunch.resolve_copy_cluster (migration 0007: one statement under the checkpoint row's lock):
        refused unless the checkpoint is PENDING, the cluster is stored for its period and
        `paid_model_id` (pay_one) is one of its members."""
        r = t.copy_resolutions
        with self.engine.begin() as connection:
            outcome, message, status, resolution_id = connection.execute(
                sa.text("SELECT outcome, message, checkpoint_status, resolution_id FROM crunch.resolve_copy_cluster("
                        ":competition, :checkpoint_id, :cluster_key, :decision, :paid_model_id, :actor, :note)"),
                {"competition": self.slug, "checkpoint_id": checkpoint_id, "cluster_key": cluster_key,
                 "decision": decision, "paid_model_id": paid_model_id if decision == "pay_one" else None,
                 "actor": actor, "note": note},
            ).one()
            if outcome != "resolved":
                raise CopyResolutionRefused(message, status, not_found=outcome == "not_found")
            row = connection.execute(sa.select(r).where(r.c.id == resolution_id)).one()
        return _resolution(row)


def replace_period_clusters(
    connection: sa.Connection, slug: str, period_start: datetime, period_end: datetime, clusters: list[dict]
) -> None:
    """The period's clusters become exactly `clusters` (entries["copy_clusters"]); called inside the
    transaction that writes the PENDING checkpoint."""
    c = t.copy_clusters
    period = (c.c.competition == slug, c.c.period_start == period_start, c.c.period_end == period_end)
    keys = [cluster["cluster"] for cluster in clusters]
    connection.execute(sa.delete(c).where(*period, c.c.cluster_key.not_in(keys)))
    if not clusters:
        return
    statement = sa.dialects.postgresql.insert(c).values([
        {"competition": slug, "period_start": period_start, "period_end": period_end, "cluster_key": cluster["cluster"],
         "members": [m["model_id"] for m in cluster["members"]], "original_model_id": cluster.get("original"),
         "status": cluster["status"], "resolved_by": cluster.get("resolved_by"), "detail": cluster}
        for cluster in clusters
    ])
    changed = sa.or_(*[c.c[name].is_distinct_from(statement.excluded[name])
                       for name in ("members", "original_model_id", "status", "resolved_by", "detail")])
    connection.execute(statement.on_conflict_do_update(
        index_elements=["competition", "period_start", "period_end", "cluster_key"],
        set_={name: statement.excluded[name] for name in ("members", "original_model_id", "status", "resolved_by",
                                                          "detail")} | {"updated_at": sa.func.now()},
        where=changed,
    ))


def _resolution(row) -> CopyResolutionRow:
    return CopyResolutionRow(id=row.id, cluster_key=row.cluster_key, members=tuple(row.members), decision=row.decision,
                             paid_model_id=row.paid_model_id, actor=row.actor, at=row.at, note=row.note,
                             checkpoint_id=row.checkpoint_id)

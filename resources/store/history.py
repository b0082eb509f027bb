"""Reads of past cycles exactly as stored (the input the field saw, its predictions as made, the
truth and the failure value): what `crunch-dagster whatif` rescores and `shadow` runs a candidate
on. Read-only."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import psycopg2.extras
import sqlalchemy as sa

from resources.store import json_codec
from resources.store import schema as t
from resources.store.rows import StoredCycle, StoredPrediction
from resources.store.lifecycles import InputStatus


class HistoryStore:
    def __init__(self, engine: sa.Engine, slug: str):
        self.engine = engine
        self.slug = slug

    def cycles(self, start: datetime, end: datetime, *, with_inputs: bool = False,
               with_predictions: bool = False, statuses: tuple[str, ...] = (InputStatus.RECEIVED, InputStatus.RESOLVED, InputStatus.VOIDED),
               model_ids: tuple[str, ...] | None = None) -> list[StoredCycle]:
        """The stored cycles of [start, end) in (cycle time, scope) order: with their model input
        (`with_inputs`) and their predictions as made (`with_predictions`, of `model_ids` only
        when given), each read with one query."""
        i = t.inputs
        columns = [i.c.id, i.c.scope_key, i.c.cycle_at, i.c.resolvable_at, i.c.status, i.c.scope, i.c.actuals,
                   i.c.failure_value, i.c.rules_fingerprint]
        if with_inputs:
            columns.append(i.c.raw_data)
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(*columns).where(i.c.competition == self.slug, i.c.cycle_at >= start, i.c.cycle_at < end,
                                          i.c.status.in_(list(statuses)))
                .order_by(i.c.cycle_at, i.c.scope_key)
            ).fetchall()
            by_input: dict[int, list[StoredPrediction]] = defaultdict(list)
            if with_predictions and rows:
                with connection.connection.dbapi_connection.cursor() as cursor:
                    psycopg2.extras.register_default_jsonb(conn_or_curs=cursor, loads=json_codec.loads)
                    query = ("SELECT id, input_id, model_id, status, status_reason, inference_output FROM "
                             "crunch.predictions WHERE input_id = ANY(%s)")
                    parameters: tuple = ([row.id for row in rows],)
                    if model_ids is not None:
                        query += " AND model_id = ANY(%s)"
                        parameters += (list(model_ids),)
                    cursor.execute(query + " ORDER BY input_id, model_id", parameters)
                    for pid, input_id, model_id, status, reason, output in cursor.fetchall():
                        by_input[input_id].append(StoredPrediction(pid, model_id, status, reason, output))
        return [
            StoredCycle(row.id, row.scope_key, row.cycle_at, row.resolvable_at, row.status, row.scope or {},
                        row.raw_data if with_inputs else None, row.actuals, row.failure_value, row.rules_fingerprint,
                        by_input.get(row.id, []))
            for row in rows
        ]

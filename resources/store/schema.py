"""The canonical coordinator schema: one PostgreSQL schema shared by every competition.

Typed, indexed columns carry what the protocol queries (times, statuses, ids, the ranking value);
JSONB columns carry competition payloads, so a new competition needs no migration. Every table a
partition writes has a unique key that makes the write an idempotent upsert.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

SCHEMA = "crunch"
metadata = sa.MetaData(schema=SCHEMA)

TZ = sa.DateTime(timezone=True)


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True)


def _jsonb(name: str) -> sa.Column:
    return sa.Column(name, JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"))


def _created_at() -> sa.Column:
    # Wall-clock audit column; never read by any computation.
    return sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now())


feed_records = sa.Table(
    "feed_records",
    metadata,
    _id(),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # tick | candle
    sa.Column("granularity", sa.Text, nullable=False),  # e.g. 1m; "tick" for ticks
    sa.Column("ts_event", TZ, nullable=False),  # candle open time / tick publish time
    sa.Column("price", sa.Float(53), nullable=False),  # close for candles, price for ticks
    sa.Column("ts_ingested", TZ, nullable=False, server_default=sa.func.now()),
    _jsonb("values"),
    _jsonb("meta"),
    sa.UniqueConstraint("source", "subject", "kind", "granularity", "ts_event", name="uq_feed_records_event"),
)

feed_ingestion_state = sa.Table(
    "feed_ingestion_state",
    metadata,
    _id(),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("granularity", sa.Text, nullable=False),
    sa.Column("last_event_ts", TZ, nullable=True),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    _jsonb("meta"),
    sa.UniqueConstraint("source", "subject", "kind", "granularity", name="uq_feed_ingestion_state"),
)

prediction_configs = sa.Table(
    "prediction_configs",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("scope_key", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("order", sa.Integer, nullable=False, server_default="0"),
    _jsonb("scope_template"),
    _jsonb("schedule"),  # {prediction_interval_seconds, resolve_horizon_seconds}
    sa.UniqueConstraint("competition", "scope_key", name="uq_prediction_configs"),
)

models = sa.Table(
    "models",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("player_id", sa.Text, nullable=True),
    sa.Column("player_name", sa.Text, nullable=True),
    sa.Column("deployment_identifier", sa.Text, nullable=True),
    sa.Column("state", sa.Text, nullable=False, server_default="RUNNING"),
    sa.Column("first_seen_at", TZ, nullable=True),
    sa.Column("last_seen_at", TZ, nullable=True),
    _jsonb("overall_score"),
    _jsonb("scores_by_scope"),
    _jsonb("meta"),
    sa.UniqueConstraint("competition", "model_id", name="uq_models"),
)

inputs = sa.Table(
    "inputs",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("scope_key", sa.Text, nullable=False),
    sa.Column("cycle_at", TZ, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # RECEIVED | RESOLVED
    sa.Column("received_at", TZ, nullable=False),
    sa.Column("resolvable_at", TZ, nullable=False),
    _jsonb("raw_data"),
    sa.Column("actuals", JSONB, nullable=True),
    _jsonb("scope"),
    _jsonb("meta"),
    sa.UniqueConstraint("competition", "scope_key", "cycle_at", name="uq_inputs_cycle"),
)

predictions = sa.Table(
    "predictions",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("input_id", sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.inputs.id"), nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("scope_key", sa.Text, nullable=False),
    sa.Column("cycle_at", TZ, nullable=False),
    sa.Column("resolvable_at", TZ, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # PENDING | SCORED | FAILED | ABSENT | VOIDED
    sa.Column("status_reason", sa.Text, nullable=True),
    sa.Column("exec_time_ms", sa.Float(53), nullable=True),
    sa.Column("performed_at", TZ, nullable=False),
    _created_at(),
    _jsonb("scope"),
    sa.Column("inference_output", JSONB, nullable=True),
    _jsonb("meta"),
    sa.UniqueConstraint("competition", "model_id", "scope_key", "cycle_at", name="uq_predictions_cycle"),
    sa.Index("ix_predictions_competition_cycle", "competition", "cycle_at"),
    sa.Index("ix_predictions_competition_status_resolvable", "competition", "status", "resolvable_at"),
)

scores = sa.Table(
    "scores",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column(
        "prediction_id", sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.predictions.id"), nullable=False, unique=True
    ),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("scope_key", sa.Text, nullable=False),
    sa.Column("cycle_at", TZ, nullable=False),
    sa.Column("value", sa.Float(53), nullable=False),  # what ranking aggregates, penalty included
    sa.Column("success", sa.Boolean, nullable=False),
    sa.Column("failed_reason", sa.Text, nullable=True),
    sa.Column("scored_at", TZ, nullable=False, server_default=sa.func.now()),
    _jsonb("result"),
    sa.Index("ix_scores_competition_cycle", "competition", "cycle_at"),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("period_start", TZ, nullable=False),
    sa.Column("period_end", TZ, nullable=False),
    sa.Column("prediction_count", sa.Integer, nullable=False),
    sa.Column("value_sum", sa.Float(53), nullable=False),  # sum of score values: count-weighted means
    _created_at(),
    _jsonb("result_summary"),
    _jsonb("meta"),
    sa.UniqueConstraint("competition", "model_id", "period_start", "period_end", name="uq_snapshots_period"),
    sa.Index("ix_snapshots_competition_period", "competition", "period_start"),
)

leaderboards = sa.Table(
    "leaderboards",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("as_of", TZ, nullable=False),
    _created_at(),
    sa.Column("entries", JSONB, nullable=False),
    _jsonb("meta"),
    sa.UniqueConstraint("competition", "as_of", name="uq_leaderboards_as_of"),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("period_start", TZ, nullable=False),
    sa.Column("period_end", TZ, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # PENDING | SUBMITTED | CLAIMABLE | PAID
    sa.Column("tx_hash", sa.Text, nullable=True),
    sa.Column("submitted_at", TZ, nullable=True),
    _created_at(),
    sa.Column("entries", JSONB, nullable=False),  # the emission
    _jsonb("meta"),
    sa.UniqueConstraint("competition", "period_start", "period_end", name="uq_checkpoints_period"),
)

model_events = sa.Table(
    "model_events",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),  # QUARANTINED | JOINED | LEFT | STATE_CHANGED
    sa.Column("at", TZ, nullable=False),  # cycle time (quarantine) or sighting time (registry)
    sa.Column("reason", sa.Text, nullable=True),
    _created_at(),
    _jsonb("meta"),
    sa.UniqueConstraint("competition", "model_id", "event", "at", name="uq_model_events"),
    sa.Index("ix_model_events_competition_at", "competition", "at"),
)

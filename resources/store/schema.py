"""The canonical coordinator schema: one PostgreSQL schema shared by every competition.

Typed, indexed columns carry what the protocol queries (times, statuses, ids, the ranking value);
JSONB columns carry competition payloads, so a new competition needs no migration. Every table a
partition writes has a unique key that makes the write an idempotent upsert.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from resources.store.lifecycles import CheckpointStatus, InputStatus, PredictionStatus

SCHEMA = "crunch"
metadata = sa.MetaData(schema=SCHEMA)

TZ = sa.DateTime(timezone=True)


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True)


def _jsonb(name: str) -> sa.Column:
    return sa.Column(name, JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"))


def _one_of(column: str, lifecycle: type, name: str) -> sa.CheckConstraint:
    """The column holds only its lifecycle's values (migration 0011)."""
    return sa.CheckConstraint(f"{column} IN ({', '.join(repr(str(value)) for value in lifecycle)})", name=name)


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
    sa.Column("price", sa.Float(53), nullable=True),  # close for candles, price for ticks; None: not a price
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

# Which observation-time spans of a feed stream have been fetched, whether or not they held rows:
# a cycle runs, and a missing price is proven missing, only over fetched spans. Adjacent and
# overlapping spans are merged on write, so a contiguous history is one row.
feed_spans = sa.Table(
    "feed_spans",
    metadata,
    _id(),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("granularity", sa.Text, nullable=False),
    sa.Column("span_start", TZ, nullable=False),  # observation time, inclusive
    sa.Column("span_end", TZ, nullable=False),  # observation time, exclusive
    sa.Index("ix_feed_spans_stream", "source", "subject", "kind", "granularity", "span_start"),
)

# Which competitions read which feed streams, and how long each keeps them: retention deletes a
# stream's rows only past every subscriber's retention.
feed_subscriptions = sa.Table(
    "feed_subscriptions",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("granularity", sa.Text, nullable=False),
    sa.Column("retention_days", sa.Integer, nullable=False),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("competition", "source", "subject", "kind", "granularity", name="uq_feed_subscriptions"),
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
    # Stable per cruncher (player_id, else the model itself) across checkpoints: the on-chain
    # index of the participant's rewards, assigned in order of first registration.
    sa.Column("cruncher_index", sa.Integer, nullable=True),
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
    sa.Column("status", sa.Text, nullable=False),  # RECEIVED | RESOLVED | VOIDED
    sa.Column("received_at", TZ, nullable=False),
    sa.Column("resolvable_at", TZ, nullable=False),
    _jsonb("raw_data"),
    sa.Column("actuals", JSONB, nullable=True),
    # The value a FAILED or ABSENT prediction of this cycle scores (constant or relative to the
    # field); also what a model missing from the cycle counts at under the coverage policy.
    sa.Column("failure_value", sa.Float(53), nullable=True),
    _jsonb("scope"),
    _jsonb("meta"),
    # The rules fingerprint the cycle was resolved (scored, or voided) under: the score batch's
    # (crunch_assets/fingerprint.py); its document is in rules_fingerprints. Null: not resolved yet,
    # or resolved before fingerprints were recorded.
    sa.Column("rules_fingerprint", sa.Text, nullable=True),
    sa.UniqueConstraint("competition", "scope_key", "cycle_at", name="uq_inputs_cycle"),
    _one_of("status", InputStatus, "ck_inputs_status"),
    # Small: only the voided cycles (sensors watch them; most cycles never are).
    sa.Index("ix_inputs_voided", "competition", "cycle_at", postgresql_where=sa.text("status = 'VOIDED'")),
    sa.Index("ix_inputs_received", "competition", "resolvable_at", postgresql_where=sa.text("status = 'RECEIVED'")),
    # Migration 0005 sets toast_tuple_target = 512: raw_data (kilobytes) goes compressed to TOAST,
    # so resolving a cycle copies a pointer, not the data.
)

predictions = sa.Table(
    "predictions",
    metadata,
    # 8-byte columns first: no alignment padding (migration 0005 rewrote the table in this order).
    _id(),
    sa.Column("input_id", sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.inputs.id"), nullable=False),
    sa.Column("cycle_at", TZ, nullable=False),
    sa.Column("exec_time_ms", sa.Float(53), nullable=True),
    _created_at(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("scope_key", sa.Text, nullable=False),
    # As made, never rewritten: PENDING (answered) | FAILED | ABSENT. SCORED and VOIDED are derived
    # (a score row exists; the input is VOIDED). The cycle's resolvable_at and scope are the input's.
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("status_reason", sa.Text, nullable=True),
    sa.Column("inference_output", JSONB, nullable=True),
    _jsonb("meta"),
    # A row per model and cycle is the store's biggest cost, so predictions have few, compact
    # indexes: this key's entries arrive in order (full pages); (competition, model_id) is packed
    # into posting lists by B-tree deduplication and, with (competition, cycle_at), finds a model's
    # predictions over a time range.
    sa.UniqueConstraint("input_id", "model_id", name="uq_predictions_input_model"),
    _one_of("status", PredictionStatus, "ck_predictions_status"),
    sa.Index("ix_predictions_competition_model", "competition", "model_id"),
    sa.Index("ix_predictions_competition_cycle", "competition", "cycle_at"),
    # Small: only FAILED and ABSENT predictions (the report API's status filter).
    sa.Index("ix_predictions_unanswered", "competition", "cycle_at", postgresql_where=sa.text("status <> 'PENDING'")),
)

scores = sa.Table(
    "scores",
    metadata,
    # 8-byte columns first, as predictions.
    _id(),
    sa.Column(
        "prediction_id", sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.predictions.id"), nullable=False, unique=True
    ),
    sa.Column("cycle_at", TZ, nullable=False),
    sa.Column("value", sa.Float(53), nullable=False),  # what ranking aggregates, penalty included
    sa.Column("scored_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("success", sa.Boolean, nullable=False),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("scope_key", sa.Text, nullable=False),
    sa.Column("failed_reason", sa.Text, nullable=True),
    _jsonb("result"),
    sa.Index("ix_scores_competition_cycle", "competition", "cycle_at"),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("scope_key", sa.Text, nullable=False),
    sa.Column("period_start", TZ, nullable=False),
    sa.Column("period_end", TZ, nullable=False),
    sa.Column("prediction_count", sa.Integer, nullable=False),  # score rows (penalties included)
    sa.Column("value_sum", sa.Float(53), nullable=False),  # sum of score values: count-weighted means
    # Sum of the failure values of the cycles this model has rows in: with the cycles' total
    # (cycle_rollups) it gives what the cycles it missed count at.
    sa.Column("failure_value_sum", sa.Float(53), nullable=False),
    _created_at(),
    _jsonb("result_summary"),
    _jsonb("status_counts"),  # {"scored": n, "failed": n, "absent": n, "rejected": n}
    _jsonb("meta"),
    sa.UniqueConstraint("competition", "model_id", "scope_key", "period_start", "period_end", name="uq_snapshots_period"),
    sa.Index("ix_snapshots_competition_period", "competition", "period_start"),
    sa.Index("ix_snapshots_competition_model_period", "competition", "model_id", "period_start"),
)

# Per scope and hour: the cycles that count (resolved, not voided) and their failure values. The
# denominator of every coverage-padded mean.
cycle_rollups = sa.Table(
    "cycle_rollups",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("scope_key", sa.Text, nullable=False),
    sa.Column("period_start", TZ, nullable=False),
    sa.Column("period_end", TZ, nullable=False),
    sa.Column("cycle_count", sa.Integer, nullable=False),
    sa.Column("voided_count", sa.Integer, nullable=False),
    sa.Column("failure_value_sum", sa.Float(53), nullable=False),
    # What the hour's snapshots were computed from: a rollup recomputes only hours where these moved.
    sa.Column("score_count", sa.Integer, nullable=False),
    sa.Column("last_score_id", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("competition", "scope_key", "period_start", "period_end", name="uq_cycle_rollups_period"),
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
    # PENDING | SUBMITTED | CLAIMABLE | PAID | SKIPPED; moved only by crunch.advance_checkpoint (migrations 0006, 0008, 0010)
    sa.Column("status", sa.Text, nullable=False, server_default=CheckpointStatus.PENDING.value),
    sa.Column("tx_hash", sa.Text, nullable=True),
    sa.Column("submitted_at", TZ, nullable=True),
    _created_at(),
    sa.Column("entries", JSONB, nullable=False),  # the emission, the ranking and each model's breakdown
    # Tamper evidence: the Merkle root over the period's scores, and that root chained to the
    # previous checkpoint's chained root.
    sa.Column("merkle_root", sa.Text, nullable=True),
    sa.Column("chained_root", sa.Text, nullable=True),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    _jsonb("meta"),
    # The emission safety gate's last results ({passed, checked_at, checks: [...]}); null: never run.
    sa.Column("gate", JSONB, nullable=True),
    # How the leaves and chained_root were computed (crunch_assets/merkle.py): 1, the scores' root only
    # (checkpoints stored before migration 0006); 2, also the sha256 of the RFC 8785 canonical entries;
    # 3 (since migration 0009), with RFC 8785 leaves.
    sa.Column("commitment_scheme", sa.SmallInteger, nullable=False, server_default="3"),
    sa.UniqueConstraint("competition", "period_start", "period_end", name="uq_checkpoints_period"),
    _one_of("status", CheckpointStatus, "ck_checkpoints_status"),
    sa.Index("ix_checkpoints_competition_status", "competition", "status", "period_start"),
)

# Append-only: one row per status transition of a checkpoint (who, when, with which transaction),
# written only by crunch.advance_checkpoint. `digest` chains each row to the previous row of its
# checkpoint (crunch.audit_row_digest; recomputed by crunch_assets/verification.py).
checkpoint_audit = sa.Table(
    "checkpoint_audit",
    metadata,
    _id(),
    sa.Column("checkpoint_id", sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.checkpoints.id"), nullable=False),
    sa.Column("from_status", sa.Text, nullable=False),
    sa.Column("to_status", sa.Text, nullable=False),
    sa.Column("tx_hash", sa.Text, nullable=True),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("chained_root", sa.Text, nullable=True),  # the checkpoint's, when the row was written
    sa.Column("digest", sa.Text, nullable=False),
    sa.Index("ix_checkpoint_audit_checkpoint", "checkpoint_id", "id"),
    _one_of("from_status", CheckpointStatus, "ck_checkpoint_audit_from_status"),
    _one_of("to_status", CheckpointStatus, "ck_checkpoint_audit_to_status"),
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

# A checkpoint period's copy clusters (crunch_assets/copies.py), rewritten with the checkpoint while
# it is PENDING, in the same transaction: `detail` is the cluster as stored in the checkpoint's
# entries (members, links, roles, who is paid); never an output.
copy_clusters = sa.Table(
    "copy_clusters",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("period_start", TZ, nullable=False),
    sa.Column("period_end", TZ, nullable=False),
    sa.Column("cluster_key", sa.Text, nullable=False),  # sha256 of the sorted members, 16 hex digits
    sa.Column("members", JSONB, nullable=False),  # sorted model ids
    sa.Column("original_model_id", sa.Text, nullable=True),  # None: undecided
    sa.Column("status", sa.Text, nullable=False),  # resolved | unresolved
    sa.Column("resolved_by", sa.Text, nullable=True),  # policy | operator
    _jsonb("detail"),
    sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("competition", "period_start", "period_end", "cluster_key", name="uq_copy_clusters_period"),
)

# Append-only: the operator's decisions on copy clusters (who, when, why). The latest decision on a
# cluster (same period and members) applies at the next build of the checkpoint.
copy_resolutions = sa.Table(
    "copy_resolutions",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("checkpoint_id", sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.checkpoints.id"), nullable=False),
    sa.Column("period_start", TZ, nullable=False),
    sa.Column("period_end", TZ, nullable=False),
    sa.Column("cluster_key", sa.Text, nullable=False),
    sa.Column("members", JSONB, nullable=False),
    sa.Column("decision", sa.Text, nullable=False),  # pay_one | pay_all
    sa.Column("paid_model_id", sa.Text, nullable=True),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("note", sa.Text, nullable=True),
    sa.Index("ix_copy_resolutions_period", "competition", "period_start", "period_end", "cluster_key", "id"),
)

# Append-only: every rules fingerprint a competition scored a cycle or built a checkpoint under,
# with the document it is the hash of (the spec's fields, the callables' sources, the engine's
# version), so anyone can read what a fingerprint stands for and hash it again.
rules_fingerprints = sa.Table(
    "rules_fingerprints",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.Text, nullable=False),  # sha256 of the RFC 8785 bytes of `document`
    sa.Column("cycle_digest", sa.Text, nullable=False),  # sha256 of its per-cycle part
    sa.Column("document", JSONB, nullable=False),
    sa.Column("recorded_at", TZ, nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("competition", "fingerprint", name="uq_rules_fingerprints"),
)

# Append-only: disputes of a checkpoint before it is SUBMITTED, each step a row: OPENED (who
# disputes what, which cycles) and RESOLVED (which dispute, how). An open dispute blocks submission.
checkpoint_disputes = sa.Table(
    "checkpoint_disputes",
    metadata,
    _id(),
    sa.Column("competition", sa.Text, nullable=False),
    sa.Column("checkpoint_id", sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.checkpoints.id"), nullable=False),
    sa.Column("action", sa.Text, nullable=False),  # OPENED | RESOLVED
    sa.Column("dispute_id", sa.BigInteger, nullable=True),  # RESOLVED: the OPENED row it closes
    sa.Column("claimant", sa.Text, nullable=True),  # OPENED: who disputes (a participant, a model)
    sa.Column("what", sa.Text, nullable=True),  # OPENED: what is disputed
    sa.Column("cycles", JSONB, nullable=True),  # OPENED: [{"first": t, "last": t}, ...] within the period
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("at", TZ, nullable=False, server_default=sa.func.now()),
    sa.Column("note", sa.Text, nullable=True),
    sa.Index("ix_checkpoint_disputes_checkpoint", "checkpoint_id", "id"),
    # A dispute is resolved once.
    sa.Index("uq_checkpoint_disputes_resolved", "dispute_id", unique=True,
             postgresql_where=sa.text("action = 'RESOLVED'")),
)

"""lifecycle CHECK constraints: a status column holds only its lifecycle's values.

crunch.inputs.status (RECEIVED | RESOLVED | VOIDED), crunch.predictions.status (PENDING | FAILED |
ABSENT, as made), crunch.checkpoints.status and crunch.checkpoint_audit's from_status / to_status
(PENDING | SUBMITTED | CLAIMABLE | PAID | SKIPPED). The engine only ever wrote these; now a
misspelt status from any writer (a bug, a console session as crunch_engine) is refused by the
database instead of being silently left out of every query that filters on the real ones. The
values are the enums of resources/store/lifecycles.py as of this revision (spelt out: a migration
does not change when the code does); tests/test_lifecycles.py requires the catalog and the enums
to agree.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 22:10:00
"""

from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

INPUT = ("RECEIVED", "RESOLVED", "VOIDED")
PREDICTION = ("PENDING", "FAILED", "ABSENT")
CHECKPOINT = ("PENDING", "SUBMITTED", "CLAIMABLE", "PAID", "SKIPPED")
# (constraint, table, column, allowed values)
CHECKS = (
    ("ck_inputs_status", "inputs", "status", INPUT),
    ("ck_predictions_status", "predictions", "status", PREDICTION),
    ("ck_checkpoints_status", "checkpoints", "status", CHECKPOINT),
    ("ck_checkpoint_audit_from_status", "checkpoint_audit", "from_status", CHECKPOINT),
    ("ck_checkpoint_audit_to_status", "checkpoint_audit", "to_status", CHECKPOINT),
)


def upgrade() -> None:
    for name, table, column, values in CHECKS:
        allowed = ", ".join(f"'{value}'" for value in values)
        op.create_check_constraint(name, table, f"{column} IN ({allowed})", schema='crunch')


def downgrade() -> None:
    for name, table, _, _ in reversed(CHECKS):
        op.drop_constraint(name, table, type_='check', schema='crunch')

"""checkpoint lifecycle: an append-only audit of status transitions, the stored safety-gate results,
and the indexes behind the report API's filters.

The audit table refuses UPDATE and DELETE (a trigger): a transition is recorded once and stays.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 09:00:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('checkpoints', sa.Column('gate', postgresql.JSONB(astext_type=sa.Text()), nullable=True), schema='crunch')
    op.create_index('ix_checkpoints_competition_status', 'checkpoints', ['competition', 'status', 'period_start'],
                    unique=False, schema='crunch')
    op.create_table('checkpoint_audit',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('checkpoint_id', sa.BigInteger(), nullable=False),
    sa.Column('from_status', sa.Text(), nullable=False),
    sa.Column('to_status', sa.Text(), nullable=False),
    sa.Column('tx_hash', sa.Text(), nullable=True),
    sa.Column('actor', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['crunch.checkpoints.id'], ),
    sa.PrimaryKeyConstraint('id'),
    schema='crunch'
    )
    op.create_index('ix_checkpoint_audit_checkpoint', 'checkpoint_audit', ['checkpoint_id', 'id'], unique=False, schema='crunch')
    op.create_index('ix_predictions_competition_scope_cycle', 'predictions', ['competition', 'scope_key', 'cycle_at'],
                    unique=False, schema='crunch')
    op.create_index('ix_predictions_competition_status_cycle', 'predictions', ['competition', 'status', 'cycle_at'],
                    unique=False, schema='crunch')
    op.create_index('ix_snapshots_competition_model_period', 'snapshots', ['competition', 'model_id', 'period_start'],
                    unique=False, schema='crunch')
    op.execute(
        """
        CREATE FUNCTION crunch.checkpoint_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'crunch.checkpoint_audit is append-only (% refused)', TG_OP;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER checkpoint_audit_append_only BEFORE UPDATE OR DELETE ON crunch.checkpoint_audit "
        "FOR EACH ROW EXECUTE FUNCTION crunch.checkpoint_audit_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS checkpoint_audit_append_only ON crunch.checkpoint_audit")
    op.execute("DROP FUNCTION IF EXISTS crunch.checkpoint_audit_append_only()")
    op.drop_index('ix_snapshots_competition_model_period', table_name='snapshots', schema='crunch')
    op.drop_index('ix_predictions_competition_status_cycle', table_name='predictions', schema='crunch')
    op.drop_index('ix_predictions_competition_scope_cycle', table_name='predictions', schema='crunch')
    op.drop_index('ix_checkpoint_audit_checkpoint', table_name='checkpoint_audit', schema='crunch')
    op.drop_table('checkpoint_audit', schema='crunch')
    op.drop_index('ix_checkpoints_competition_status', table_name='checkpoints', schema='crunch')
    op.drop_column('checkpoints', 'gate', schema='crunch')

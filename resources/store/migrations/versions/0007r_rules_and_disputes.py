"""rules fingerprints (on each resolved cycle, and their documents, append-only) and checkpoint
disputes (append-only).

Revision ID: 0007r
Revises: 0006c
Create Date: 2026-12-12 09:00:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0007r'
down_revision = '0006c'
branch_labels = None
depends_on = None

APPEND_ONLY = ("rules_fingerprints", "checkpoint_disputes")


def upgrade() -> None:
    op.add_column('inputs', sa.Column('rules_fingerprint', sa.Text(), nullable=True), schema='crunch')
    op.create_table('rules_fingerprints',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('competition', sa.Text(), nullable=False),
    sa.Column('fingerprint', sa.Text(), nullable=False),
    sa.Column('cycle_digest', sa.Text(), nullable=False),
    sa.Column('document', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('competition', 'fingerprint', name='uq_rules_fingerprints'),
    schema='crunch'
    )
    op.create_table('checkpoint_disputes',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('competition', sa.Text(), nullable=False),
    sa.Column('checkpoint_id', sa.BigInteger(), nullable=False),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('dispute_id', sa.BigInteger(), nullable=True),
    sa.Column('claimant', sa.Text(), nullable=True),
    sa.Column('what', sa.Text(), nullable=True),
    sa.Column('cycles', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('actor', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['crunch.checkpoints.id'], ),
    sa.PrimaryKeyConstraint('id'),
    schema='crunch'
    )
    op.create_index('ix_checkpoint_disputes_checkpoint', 'checkpoint_disputes', ['checkpoint_id', 'id'],
                    unique=False, schema='crunch')
    op.create_index('uq_checkpoint_disputes_resolved', 'checkpoint_disputes', ['dispute_id'], unique=True,
                    schema='crunch', postgresql_where=sa.text("action = 'RESOLVED'"))
    for table in APPEND_ONLY:
        op.execute(
            f"""
            CREATE FUNCTION crunch.{table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'crunch.{table} is append-only (% refused)', TG_OP;
            END $$
            """
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON crunch.{table} "
            f"FOR EACH ROW EXECUTE FUNCTION crunch.{table}_append_only()"
        )


def downgrade() -> None:
    for table in APPEND_ONLY:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON crunch.{table}")
        op.execute(f"DROP FUNCTION IF EXISTS crunch.{table}_append_only()")
    op.drop_index('uq_checkpoint_disputes_resolved', table_name='checkpoint_disputes', schema='crunch')
    op.drop_index('ix_checkpoint_disputes_checkpoint', table_name='checkpoint_disputes', schema='crunch')
    op.drop_table('checkpoint_disputes', schema='crunch')
    op.drop_table('rules_fingerprints', schema='crunch')
    op.drop_column('inputs', 'rules_fingerprint', schema='crunch')

"""copy clusters per checkpoint period, and the operator's resolutions of them (append-only).

Revision ID: 0006c
Revises: 0005
Create Date: 2026-12-10 09:00:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0006c'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('copy_clusters',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('competition', sa.Text(), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cluster_key', sa.Text(), nullable=False),
    sa.Column('members', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('original_model_id', sa.Text(), nullable=True),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('resolved_by', sa.Text(), nullable=True),
    sa.Column('detail', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('competition', 'period_start', 'period_end', 'cluster_key', name='uq_copy_clusters_period'),
    schema='crunch'
    )
    op.create_table('copy_resolutions',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('competition', sa.Text(), nullable=False),
    sa.Column('checkpoint_id', sa.BigInteger(), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cluster_key', sa.Text(), nullable=False),
    sa.Column('members', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('decision', sa.Text(), nullable=False),
    sa.Column('paid_model_id', sa.Text(), nullable=True),
    sa.Column('actor', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['crunch.checkpoints.id'], ),
    sa.PrimaryKeyConstraint('id'),
    schema='crunch'
    )
    op.create_index('ix_copy_resolutions_period', 'copy_resolutions',
                    ['competition', 'period_start', 'period_end', 'cluster_key', 'id'], unique=False, schema='crunch')
    op.execute(
        """
        CREATE FUNCTION crunch.copy_resolutions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'crunch.copy_resolutions is append-only (% refused)', TG_OP;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER copy_resolutions_append_only BEFORE UPDATE OR DELETE ON crunch.copy_resolutions "
        "FOR EACH ROW EXECUTE FUNCTION crunch.copy_resolutions_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS copy_resolutions_append_only ON crunch.copy_resolutions")
    op.execute("DROP FUNCTION IF EXISTS crunch.copy_resolutions_append_only()")
    op.drop_index('ix_copy_resolutions_period', table_name='copy_resolutions', schema='crunch')
    op.drop_table('copy_resolutions', schema='crunch')
    op.drop_table('copy_clusters', schema='crunch')

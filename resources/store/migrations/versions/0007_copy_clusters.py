"""copy clusters per checkpoint period, and the operator's resolutions of them (append-only).

Roles (migration 0006): the engine writes a period's clusters with its PENDING checkpoint
(SELECT, INSERT, UPDATE, DELETE on crunch.copy_clusters); nobody but the owner may write
crunch.copy_resolutions: the operator's decision goes through crunch.resolve_copy_cluster
(SECURITY DEFINER, EXECUTE granted to crunch_api), which checks under the checkpoint row's lock
that the checkpoint is PENDING, the cluster is stored for its period and the paid model is one of
its members, then appends the row and moves the checkpoint's updated_at: a gate result computed
before the decision no longer matches the row, so crunch.advance_checkpoint refuses to submit a
payout the operator has just overruled. UPDATE, DELETE and TRUNCATE of the resolutions are refused
by triggers that are ENABLE ALWAYS (a replica-mode session does not skip them).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10 09:00:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0007'
down_revision = '0006'

ENGINE = "crunch_engine"
API = "crunch_api"
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
    op.execute(
        "CREATE TRIGGER copy_resolutions_no_truncate BEFORE TRUNCATE ON crunch.copy_resolutions "
        "FOR EACH STATEMENT EXECUTE FUNCTION crunch.copy_resolutions_append_only()"
    )
    for trigger in ("copy_resolutions_append_only", "copy_resolutions_no_truncate"):
        op.execute(f"ALTER TABLE crunch.copy_resolutions ENABLE ALWAYS TRIGGER {trigger}")
    _resolve_function()
    _privileges()


def _resolve_function() -> None:
    op.execute("""
        CREATE FUNCTION crunch.resolve_copy_cluster(
            p_competition text, p_checkpoint_id bigint, p_cluster_key text, p_decision text, p_paid_model_id text,
            p_actor text, p_note text DEFAULT NULL)
        RETURNS TABLE (outcome text, message text, checkpoint_status text, resolution_id bigint)
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        DECLARE
            cp record;
            v_members jsonb;
            v_known text;
            v_id bigint;
        BEGIN
            IF p_actor IS NULL OR length(p_actor) NOT BETWEEN 1 AND 200 THEN
                RETURN QUERY SELECT 'invalid', 'actor must be 1..200 characters', NULL::text, NULL::bigint; RETURN;
            END IF;
            IF p_note IS NOT NULL AND length(p_note) > 1000 THEN
                RETURN QUERY SELECT 'invalid', 'note must be at most 1000 characters', NULL::text, NULL::bigint; RETURN;
            END IF;
            IF p_decision IS NULL OR p_decision NOT IN ('pay_one', 'pay_all')
               OR (p_decision = 'pay_one') = (p_paid_model_id IS NULL) THEN
                RETURN QUERY SELECT 'invalid', 'pay one member (pay_one with its model id) or all (pay_all)',
                    NULL::text, NULL::bigint;
                RETURN;
            END IF;
            SELECT c.status, c.period_start, c.period_end INTO cp FROM crunch.checkpoints c
            WHERE c.competition = p_competition AND c.id = p_checkpoint_id FOR UPDATE;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'not_found', format('no checkpoint %s in %s', p_checkpoint_id, p_competition),
                    NULL::text, NULL::bigint;
                RETURN;
            END IF;
            IF cp.status <> 'PENDING' THEN
                RETURN QUERY SELECT 'conflict',
                    format('checkpoint %s is %s: its copy clusters can no longer change', p_checkpoint_id, cp.status),
                    cp.status, NULL::bigint;
                RETURN;
            END IF;
            SELECT k.members INTO v_members FROM crunch.copy_clusters k
            WHERE k.competition = p_competition AND k.period_start = cp.period_start AND k.period_end = cp.period_end
              AND k.cluster_key = p_cluster_key;
            IF NOT FOUND THEN
                SELECT string_agg(k.cluster_key, ', ' ORDER BY k.cluster_key) INTO v_known FROM crunch.copy_clusters k
                WHERE k.competition = p_competition AND k.period_start = cp.period_start AND k.period_end = cp.period_end;
                RETURN QUERY SELECT 'not_found',
                    format('checkpoint %s has no copy cluster %L; its clusters: %s', p_checkpoint_id, p_cluster_key,
                           coalesce(v_known, 'none')),
                    cp.status, NULL::bigint;
                RETURN;
            END IF;
            IF p_decision = 'pay_one' AND NOT v_members ? p_paid_model_id THEN
                RETURN QUERY SELECT 'invalid',
                    format('%L is not a member of cluster %s (%s)', p_paid_model_id, p_cluster_key,
                           (SELECT string_agg(m, ', ') FROM jsonb_array_elements_text(v_members) AS m)),
                    cp.status, NULL::bigint;
                RETURN;
            END IF;
            INSERT INTO crunch.copy_resolutions (competition, checkpoint_id, period_start, period_end, cluster_key,
                                                 members, decision, paid_model_id, actor, note)
            VALUES (p_competition, p_checkpoint_id, cp.period_start, cp.period_end, p_cluster_key, v_members,
                    p_decision, CASE WHEN p_decision = 'pay_one' THEN p_paid_model_id END, p_actor, p_note)
            RETURNING id INTO v_id;
            -- A gate result read before this decision names the old updated_at: its submission is refused.
            UPDATE crunch.checkpoints c SET updated_at = greatest(now(), c.updated_at + interval '1 microsecond')
            WHERE c.id = p_checkpoint_id;
            RETURN QUERY SELECT 'resolved', NULL::text, cp.status, v_id;
        END $$
    """)


def _privileges() -> None:
    for table in ("copy_clusters", "copy_resolutions"):
        op.execute(f"REVOKE ALL ON crunch.{table} FROM PUBLIC")
        op.execute(f"GRANT SELECT ON crunch.{table} TO {ENGINE}, {API}")
    op.execute(f"GRANT INSERT, UPDATE, DELETE ON crunch.copy_clusters TO {ENGINE}")
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA crunch TO {ENGINE}")
    op.execute("REVOKE ALL ON FUNCTION crunch.copy_resolutions_append_only() FROM PUBLIC")  # a trigger's only
    op.execute("REVOKE ALL ON FUNCTION crunch.resolve_copy_cluster(text, bigint, text, text, text, text, text) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION crunch.resolve_copy_cluster(text, bigint, text, text, text, text, text) TO {API}")


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS crunch.resolve_copy_cluster(text, bigint, text, text, text, text, text)")
    op.execute("DROP TRIGGER IF EXISTS copy_resolutions_no_truncate ON crunch.copy_resolutions")
    op.execute("DROP TRIGGER IF EXISTS copy_resolutions_append_only ON crunch.copy_resolutions")
    op.execute("DROP FUNCTION IF EXISTS crunch.copy_resolutions_append_only()")
    op.drop_index('ix_copy_resolutions_period', table_name='copy_resolutions', schema='crunch')
    op.drop_table('copy_resolutions', schema='crunch')
    op.drop_table('copy_clusters', schema='crunch')

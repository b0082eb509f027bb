"""least-privilege roles and a guarded payout lifecycle.

Roles (resources/store/roles.py): whoever runs this migration owns the schema, every table and
function. `crunch_engine` (the pipeline) and `crunch_api` (the report API) are group roles,
created here when missing (that needs CREATEROLE; otherwise create them first):
- crunch_engine: SELECT on every table; INSERT on what the pipeline stores; UPDATE only where it
  rewrites (feed records and state, models, inputs at settlement, snapshots, rollups,
  leaderboards); DELETE only of feed records and spans (retention); predictions and scores are
  INSERT-only; a checkpoint's entries, roots, meta and commitment scheme (INSERT and UPDATE of
  those columns only: never its status, tx hash, submission time, gate or updated_at); the audit
  read-only. No DDL, no TRUNCATE.
- crunch_api: SELECT on every table, EXECUTE on crunch.advance_checkpoint and
  crunch.record_checkpoint_gate. Nothing else.

Checkpoints (`crunch.checkpoints_guard`, ENABLE ALWAYS so `session_replication_role = replica`
does not skip it): stored PENDING; status, tx_hash and submitted_at change only inside
crunch.advance_checkpoint; entries, roots, meta and scheme only while PENDING, never to a
commitment scheme below 2; updated_at follows every content change; a checkpoint past PENDING is
never deleted, and TRUNCATE is refused while one exists.

crunch.advance_checkpoint (SECURITY DEFINER) is the one way to move a checkpoint: under a row
lock it checks the legal move (PENDING -> SUBMITTED -> CLAIMABLE -> PAID), the tx hash (required
and well formed for SUBMITTED), that a passing gate result for this very row (its roots and
updated_at) comes with SUBMITTED, then updates the row and appends the audit row, in one
statement. Each audit row carries a digest chained to the previous row of its checkpoint (and the
checkpoint's chained root), so an edited, removed or forged row shows in `crunch-dagster audit`.

The audit (crunch.checkpoint_audit): UPDATE, DELETE and TRUNCATE refused, INSERT only from
crunch.advance_checkpoint; every trigger ENABLE ALWAYS.

Checkpoints get `commitment_scheme`: 1 for those stored before (the chained root commits to the
scores' root only), 2 from now on (it also commits to the sha256 of the RFC 8785 canonical
entries; crunch_assets/merkle.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:00:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

ENGINE = "crunch_engine"
API = "crunch_api"
TRANSITION_SETTING = "crunch.checkpoint_transition"
TX_HASH_PATTERN = "^(0x)?[0-9A-Za-z]{16,128}$"
CHECKPOINT_CONTENT = ("entries", "merkle_root", "chained_root", "meta", "commitment_scheme")
ENGINE_INSERT_ONLY = ("predictions", "scores", "model_events")
ENGINE_INSERT_UPDATE = ("feed_records", "feed_ingestion_state", "feed_spans", "feed_subscriptions", "prediction_configs",
                        "models", "inputs", "snapshots", "cycle_rollups", "leaderboards")
ENGINE_DELETE = ("feed_records", "feed_spans")


def _create_group_roles() -> None:
    for role in (ENGINE, API):
        op.execute(f"""
            DO $$
            BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                    BEGIN
                        CREATE ROLE {role} NOLOGIN;
                    EXCEPTION WHEN insufficient_privilege THEN
                        RAISE EXCEPTION 'role {role} does not exist and % may not create it: CREATE ROLE {role} NOLOGIN '
                            'as an administrator first (docs/operations.md#database-roles)', current_user;
                    END;
                END IF;
            END $$
        """)


def _check_ownership() -> None:
    op.execute("""
        DO $$
        DECLARE foreign_owned text;
        BEGIN
            SELECT string_agg(format('%I (owned by %s)', c.relname, pg_get_userbyid(c.relowner)), ', ') INTO foreign_owned
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'crunch' AND c.relkind IN ('r', 'p') AND NOT pg_has_role(current_user, c.relowner, 'USAGE');
            IF foreign_owned IS NOT NULL THEN
                RAISE EXCEPTION 'the migrations run as %, which does not own %: run them as the owner of the crunch schema',
                    current_user, foreign_owned;
            END IF;
        END $$
    """)


def _functions() -> None:
    op.execute("""
        CREATE FUNCTION crunch.audit_row_digest(
            p_previous text, p_checkpoint_id bigint, p_from text, p_to text, p_tx_hash text, p_actor text,
            p_at timestamptz, p_note text, p_chained_root text) RETURNS text
        LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
            SELECT encode(sha256(
                decode(coalesce(p_previous, repeat('0', 64)), 'hex')
                || sha256(convert_to(p_checkpoint_id::text, 'UTF8'))
                || sha256(convert_to(p_from, 'UTF8'))
                || sha256(convert_to(p_to, 'UTF8'))
                || sha256(convert_to(coalesce('1' || p_tx_hash, '0'), 'UTF8'))
                || sha256(convert_to(p_actor, 'UTF8'))
                || sha256(convert_to(((extract(epoch FROM p_at) * 1000000)::bigint)::text, 'UTF8'))
                || sha256(convert_to(coalesce('1' || p_note, '0'), 'UTF8'))
                || sha256(convert_to(coalesce('1' || p_chained_root, '0'), 'UTF8'))
            ), 'hex')
        $$
    """)
    op.execute(f"""
        CREATE FUNCTION crunch.checkpoints_guard() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog AS $$
        DECLARE
            in_transition boolean;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                IF OLD.status <> 'PENDING' THEN
                    RAISE EXCEPTION 'checkpoint % is %: a checkpoint past PENDING is never deleted', OLD.id, OLD.status
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
                RETURN OLD;
            END IF;
            IF TG_OP = 'INSERT' THEN
                IF NEW.status <> 'PENDING' OR NEW.tx_hash IS NOT NULL OR NEW.submitted_at IS NOT NULL OR NEW.gate IS NOT NULL THEN
                    RAISE EXCEPTION 'a checkpoint is stored PENDING, without tx_hash, submission or gate result'
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
                IF NEW.commitment_scheme < 2 THEN
                    RAISE EXCEPTION 'commitment scheme % is retired: new checkpoints commit to their entries (scheme 2)',
                        NEW.commitment_scheme USING ERRCODE = 'insufficient_privilege';
                END IF;
                RETURN NEW;
            END IF;
            in_transition := current_setting('{TRANSITION_SETTING}', true) IS NOT DISTINCT FROM OLD.id::text;
            IF ROW(NEW.id, NEW.competition, NEW.period_start, NEW.period_end, NEW.created_at)
               IS DISTINCT FROM ROW(OLD.id, OLD.competition, OLD.period_start, OLD.period_end, OLD.created_at) THEN
                RAISE EXCEPTION 'checkpoint %: its id, competition, period and creation time never change', OLD.id
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            IF ROW(NEW.entries, NEW.merkle_root, NEW.chained_root, NEW.meta, NEW.commitment_scheme)
               IS DISTINCT FROM ROW(OLD.entries, OLD.merkle_root, OLD.chained_root, OLD.meta, OLD.commitment_scheme) THEN
                IF OLD.status <> 'PENDING' THEN
                    RAISE EXCEPTION 'checkpoint % is %: its entries, roots and meta are never rewritten', OLD.id, OLD.status
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
                IF NEW.commitment_scheme < 2 THEN
                    RAISE EXCEPTION 'commitment scheme % is retired: a rebuilt checkpoint commits to its entries (scheme 2)',
                        NEW.commitment_scheme USING ERRCODE = 'insufficient_privilege';
                END IF;
                NEW.updated_at := now();
            END IF;
            IF ROW(NEW.status, NEW.tx_hash, NEW.submitted_at) IS DISTINCT FROM ROW(OLD.status, OLD.tx_hash, OLD.submitted_at)
               AND NOT in_transition THEN
                RAISE EXCEPTION 'checkpoint %: status, tx_hash and submitted_at change only through crunch.advance_checkpoint',
                    OLD.id USING ERRCODE = 'insufficient_privilege';
            END IF;
            IF NEW.gate IS DISTINCT FROM OLD.gate AND OLD.status <> 'PENDING' AND NOT in_transition THEN
                RAISE EXCEPTION 'checkpoint % is %: the gate result it was submitted with is never rewritten', OLD.id, OLD.status
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END $$
    """)
    op.execute("""
        CREATE FUNCTION crunch.checkpoints_truncate_guard() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM crunch.checkpoints WHERE status <> 'PENDING') THEN
                RAISE EXCEPTION 'crunch.checkpoints holds checkpoints past PENDING: TRUNCATE refused'
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NULL;
        END $$
    """)
    # Replaces 0004's: also TRUNCATE (statement level), with an error code clients can tell.
    op.execute("""
        CREATE OR REPLACE FUNCTION crunch.checkpoint_audit_append_only() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog AS $$
        BEGIN
            RAISE EXCEPTION 'crunch.checkpoint_audit is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
        END $$
    """)
    op.execute(f"""
        CREATE FUNCTION crunch.checkpoint_audit_insert_guard() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog AS $$
        BEGIN
            IF current_setting('{TRANSITION_SETTING}', true) IS DISTINCT FROM NEW.checkpoint_id::text THEN
                RAISE EXCEPTION 'crunch.checkpoint_audit rows are appended only by crunch.advance_checkpoint'
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END $$
    """)
    op.execute(f"""
        CREATE FUNCTION crunch.advance_checkpoint(
            p_competition text, p_checkpoint_id bigint, p_to_status text, p_actor text,
            p_tx_hash text DEFAULT NULL, p_note text DEFAULT NULL, p_gate jsonb DEFAULT NULL)
        RETURNS TABLE (outcome text, message text, checkpoint_status text, audit_id bigint)
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        #variable_conflict use_column
        DECLARE
            cp crunch.checkpoints%ROWTYPE;
            v_from text;
            v_recorded text;
            v_previous text;
            v_gated_at timestamptz;
            v_audit bigint;
        BEGIN
            IF p_actor IS NULL OR length(p_actor) NOT BETWEEN 1 AND 200 THEN
                RETURN QUERY SELECT 'invalid', 'actor must be 1..200 characters', NULL::text, NULL::bigint; RETURN;
            END IF;
            IF p_note IS NOT NULL AND length(p_note) > 1000 THEN
                RETURN QUERY SELECT 'invalid', 'note must be at most 1000 characters', NULL::text, NULL::bigint; RETURN;
            END IF;
            v_from := CASE p_to_status WHEN 'SUBMITTED' THEN 'PENDING' WHEN 'CLAIMABLE' THEN 'SUBMITTED'
                                       WHEN 'PAID' THEN 'CLAIMABLE' END;
            IF v_from IS NULL THEN
                RETURN QUERY SELECT 'invalid', format('a checkpoint moves to SUBMITTED, CLAIMABLE or PAID, not %L', p_to_status),
                    NULL::text, NULL::bigint;
                RETURN;
            END IF;
            IF p_tx_hash IS NOT NULL AND p_tx_hash !~ '{TX_HASH_PATTERN}' THEN
                RETURN QUERY SELECT 'invalid', format('tx_hash %L is not a transaction hash', p_tx_hash), NULL::text, NULL::bigint;
                RETURN;
            END IF;
            IF p_to_status = 'SUBMITTED' AND p_tx_hash IS NULL THEN
                RETURN QUERY SELECT 'invalid', 'SUBMITTED needs the transaction hash of the on-chain submission', NULL::text,
                    NULL::bigint;
                RETURN;
            END IF;
            SELECT * INTO cp FROM crunch.checkpoints c WHERE c.competition = p_competition AND c.id = p_checkpoint_id FOR UPDATE;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'not_found', format('no checkpoint %s in %s', p_checkpoint_id, p_competition), NULL::text,
                    NULL::bigint;
                RETURN;
            END IF;
            IF cp.status = p_to_status THEN
                IF p_to_status = 'SUBMITTED' THEN
                    v_recorded := cp.tx_hash;
                ELSE
                    SELECT a.tx_hash INTO v_recorded FROM crunch.checkpoint_audit a
                    WHERE a.checkpoint_id = cp.id AND a.to_status = p_to_status ORDER BY a.id DESC LIMIT 1;
                END IF;
                IF v_recorded IS NOT DISTINCT FROM p_tx_hash OR (p_tx_hash IS NULL AND p_to_status <> 'SUBMITTED') THEN
                    RETURN QUERY SELECT 'unchanged', format('checkpoint %s is already %s: nothing changed', cp.id, p_to_status),
                        cp.status, NULL::bigint;
                    RETURN;
                END IF;
                RETURN QUERY SELECT 'conflict', format('checkpoint %s is already %s with tx_hash %L, not %L', cp.id, p_to_status,
                    v_recorded, p_tx_hash), cp.status, NULL::bigint;
                RETURN;
            END IF;
            IF cp.status <> v_from THEN
                RETURN QUERY SELECT 'conflict', format('checkpoint %s is %s: %s needs it %s', cp.id, cp.status, p_to_status, v_from),
                    cp.status, NULL::bigint;
                RETURN;
            END IF;
            IF p_to_status = 'SUBMITTED' THEN
                IF p_gate IS NULL OR jsonb_typeof(p_gate) IS DISTINCT FROM 'object' OR p_gate->'passed' IS DISTINCT FROM 'true'::jsonb THEN
                    RETURN QUERY SELECT 'gate', format('checkpoint %s: SUBMITTED needs a passing emission safety gate result', cp.id),
                        cp.status, NULL::bigint;
                    RETURN;
                END IF;
                BEGIN
                    v_gated_at := (p_gate->>'checkpoint_updated_at')::timestamptz;
                EXCEPTION WHEN others THEN
                    v_gated_at := NULL;
                END;
                IF v_gated_at IS DISTINCT FROM cp.updated_at OR p_gate->>'merkle_root' IS DISTINCT FROM cp.merkle_root
                   OR p_gate->>'chained_root' IS DISTINCT FROM cp.chained_root THEN
                    RETURN QUERY SELECT 'conflict', format('checkpoint %s was rebuilt while the gate ran; run the transition again', cp.id),
                        cp.status, NULL::bigint;
                    RETURN;
                END IF;
            END IF;
            PERFORM set_config('{TRANSITION_SETTING}', cp.id::text, true);
            UPDATE crunch.checkpoints c SET
                status = p_to_status,
                updated_at = now(),
                tx_hash = CASE WHEN p_to_status = 'SUBMITTED' THEN p_tx_hash ELSE c.tx_hash END,
                submitted_at = CASE WHEN p_to_status = 'SUBMITTED' THEN now() ELSE c.submitted_at END,
                gate = CASE WHEN p_to_status = 'SUBMITTED' THEN p_gate ELSE c.gate END
            WHERE c.id = cp.id;
            SELECT a.digest INTO v_previous FROM crunch.checkpoint_audit a WHERE a.checkpoint_id = cp.id ORDER BY a.id DESC LIMIT 1;
            INSERT INTO crunch.checkpoint_audit AS a (checkpoint_id, from_status, to_status, tx_hash, actor, at, note, chained_root, digest)
            VALUES (cp.id, cp.status, p_to_status, p_tx_hash, p_actor, now(), p_note, cp.chained_root,
                    crunch.audit_row_digest(v_previous, cp.id, cp.status, p_to_status, p_tx_hash, p_actor, now(), p_note,
                                            cp.chained_root))
            RETURNING a.id INTO v_audit;
            PERFORM set_config('{TRANSITION_SETTING}', '', true);
            RETURN QUERY SELECT 'changed', format('checkpoint %s: %s -> %s', cp.id, cp.status, p_to_status), p_to_status, v_audit;
        END $$
    """)
    op.execute("""
        CREATE FUNCTION crunch.record_checkpoint_gate(p_competition text, p_checkpoint_id bigint, p_gate jsonb)
        RETURNS text
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        DECLARE
            v_status text;
        BEGIN
            SELECT c.status INTO v_status FROM crunch.checkpoints c
            WHERE c.competition = p_competition AND c.id = p_checkpoint_id FOR UPDATE;
            IF NOT FOUND THEN
                RETURN 'not_found';
            END IF;
            IF v_status <> 'PENDING' THEN
                RETURN v_status;  -- the gate a checkpoint was submitted with stays
            END IF;
            UPDATE crunch.checkpoints c SET gate = p_gate WHERE c.id = p_checkpoint_id;
            RETURN 'recorded';
        END $$
    """)


def _backfill_audit_digests() -> None:
    op.execute("""
        DO $$
        DECLARE
            r record;
            previous text;
            current_checkpoint bigint;
        BEGIN
            FOR r IN SELECT a.*, c.chained_root AS checkpoint_root FROM crunch.checkpoint_audit a
                     JOIN crunch.checkpoints c ON c.id = a.checkpoint_id ORDER BY a.checkpoint_id, a.id
            LOOP
                IF current_checkpoint IS DISTINCT FROM r.checkpoint_id THEN
                    previous := NULL;
                    current_checkpoint := r.checkpoint_id;
                END IF;
                previous := crunch.audit_row_digest(previous, r.checkpoint_id, r.from_status, r.to_status, r.tx_hash, r.actor,
                                                    r.at, r.note, r.checkpoint_root);
                UPDATE crunch.checkpoint_audit SET chained_root = r.checkpoint_root, digest = previous WHERE id = r.id;
            END LOOP;
        END $$
    """)


def _triggers() -> None:
    op.execute("DROP TRIGGER IF EXISTS checkpoint_audit_append_only ON crunch.checkpoint_audit")
    statements = [
        "CREATE TRIGGER checkpoint_audit_append_only BEFORE UPDATE OR DELETE ON crunch.checkpoint_audit "
        "FOR EACH ROW EXECUTE FUNCTION crunch.checkpoint_audit_append_only()",
        "CREATE TRIGGER checkpoint_audit_no_truncate BEFORE TRUNCATE ON crunch.checkpoint_audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION crunch.checkpoint_audit_append_only()",
        "CREATE TRIGGER checkpoint_audit_insert_guard BEFORE INSERT ON crunch.checkpoint_audit "
        "FOR EACH ROW EXECUTE FUNCTION crunch.checkpoint_audit_insert_guard()",
        "CREATE TRIGGER checkpoints_guard BEFORE INSERT OR UPDATE OR DELETE ON crunch.checkpoints "
        "FOR EACH ROW EXECUTE FUNCTION crunch.checkpoints_guard()",
        "CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON crunch.checkpoints "
        "FOR EACH STATEMENT EXECUTE FUNCTION crunch.checkpoints_truncate_guard()",
    ]
    for statement in statements:
        op.execute(statement)
    # ALWAYS: they fire under session_replication_role = replica too.
    for table, trigger in (("checkpoint_audit", "checkpoint_audit_append_only"), ("checkpoint_audit", "checkpoint_audit_no_truncate"),
                           ("checkpoint_audit", "checkpoint_audit_insert_guard"), ("checkpoints", "checkpoints_guard"),
                           ("checkpoints", "checkpoints_no_truncate")):
        op.execute(f"ALTER TABLE crunch.{table} ENABLE ALWAYS TRIGGER {trigger}")


def _privileges() -> None:
    op.execute("REVOKE ALL ON SCHEMA crunch FROM PUBLIC")
    op.execute(f"GRANT USAGE ON SCHEMA crunch TO {ENGINE}, {API}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA crunch FROM PUBLIC, {ENGINE}, {API}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA crunch FROM PUBLIC, {ENGINE}, {API}")
    op.execute(f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA crunch FROM PUBLIC, {ENGINE}, {API}")
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA crunch TO {ENGINE}, {API}")
    op.execute(f"GRANT INSERT ON {', '.join(f'crunch.{t}' for t in ENGINE_INSERT_ONLY + ENGINE_INSERT_UPDATE)} TO {ENGINE}")
    op.execute(f"GRANT UPDATE ON {', '.join(f'crunch.{t}' for t in ENGINE_INSERT_UPDATE)} TO {ENGINE}")
    op.execute(f"GRANT DELETE ON {', '.join(f'crunch.{t}' for t in ENGINE_DELETE)} TO {ENGINE}")
    content = ", ".join(CHECKPOINT_CONTENT)
    op.execute(f"GRANT INSERT (competition, period_start, period_end, {content}) ON crunch.checkpoints TO {ENGINE}")
    op.execute(f"GRANT UPDATE ({content}) ON crunch.checkpoints TO {ENGINE}")
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA crunch TO {ENGINE}")
    op.execute(f"GRANT EXECUTE ON FUNCTION crunch.advance_checkpoint(text, bigint, text, text, text, text, jsonb), "
               f"crunch.record_checkpoint_gate(text, bigint, jsonb) TO {API}")


def upgrade() -> None:
    _create_group_roles()
    _check_ownership()
    op.alter_column('checkpoints', 'status', server_default='PENDING', schema='crunch')
    op.add_column('checkpoints', sa.Column('commitment_scheme', sa.SmallInteger(), server_default='1', nullable=False),
                  schema='crunch')
    op.alter_column('checkpoints', 'commitment_scheme', server_default='2', schema='crunch')
    op.add_column('checkpoint_audit', sa.Column('chained_root', sa.Text(), nullable=True), schema='crunch')
    op.add_column('checkpoint_audit', sa.Column('digest', sa.Text(), nullable=True), schema='crunch')
    _functions()
    op.execute("ALTER TABLE crunch.checkpoint_audit DISABLE TRIGGER checkpoint_audit_append_only")
    _backfill_audit_digests()
    op.alter_column('checkpoint_audit', 'digest', nullable=False, schema='crunch')
    _triggers()
    _privileges()


def downgrade() -> None:
    for table, trigger in (("checkpoint_audit", "checkpoint_audit_no_truncate"), ("checkpoint_audit", "checkpoint_audit_insert_guard"),
                           ("checkpoints", "checkpoints_guard"), ("checkpoints", "checkpoints_no_truncate"),
                           ("checkpoint_audit", "checkpoint_audit_append_only")):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON crunch.{table}")
    for function in ("advance_checkpoint(text, bigint, text, text, text, text, jsonb)",
                     "record_checkpoint_gate(text, bigint, jsonb)", "checkpoint_audit_insert_guard()",
                     "checkpoints_truncate_guard()", "checkpoints_guard()",
                     "audit_row_digest(text, bigint, text, text, text, text, timestamptz, text, text)"):
        op.execute(f"DROP FUNCTION IF EXISTS crunch.{function}")
    op.execute("""
        CREATE OR REPLACE FUNCTION crunch.checkpoint_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'crunch.checkpoint_audit is append-only (% refused)', TG_OP;
        END $$
    """)
    op.execute("CREATE TRIGGER checkpoint_audit_append_only BEFORE UPDATE OR DELETE ON crunch.checkpoint_audit "
               "FOR EACH ROW EXECUTE FUNCTION crunch.checkpoint_audit_append_only()")
    op.drop_column('checkpoint_audit', 'digest', schema='crunch')
    op.drop_column('checkpoint_audit', 'chained_root', schema='crunch')
    op.drop_column('checkpoints', 'commitment_scheme', schema='crunch')
    op.alter_column('checkpoints', 'status', server_default=None, schema='crunch')
    op.execute("GRANT USAGE ON SCHEMA crunch TO PUBLIC")

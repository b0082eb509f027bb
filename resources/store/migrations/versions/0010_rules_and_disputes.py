"""rules fingerprints (on each resolved cycle, and their documents, append-only), checkpoint
disputes (append-only, written only through the database's functions), and a submission or skip
that the database itself refuses while a dispute is open or the dispute window runs.

Roles (migration 0006):
- crunch_engine writes what the pipeline writes: `inputs.rules_fingerprint` (with the cycle's
  scores) and the documents of crunch.rules_fingerprints (INSERT only; a recorded fingerprint is
  never rewritten). It reads the disputes and writes none.
- crunch_api reads both tables, and writes a dispute only through crunch.open_checkpoint_dispute and
  crunch.resolve_checkpoint_dispute (SECURITY DEFINER, EXECUTE granted to it alone), as
  crunch.resolve_copy_cluster does for copy clusters: under the checkpoint row's lock, only while
  it is PENDING; cycles inside its period; a dispute resolved once.

crunch.advance_checkpoint is replaced (same signature; everything migration 0008 made it do, the
PENDING -> SKIPPED move and its checks included; 0009 left it alone) and, for SUBMITTED and for
SKIPPED (a skip is final too: a dispute left open could never be answered, a window cut short
never used), also refuses under the checkpoint row's lock (the lock the dispute functions take
too, so a dispute recorded while the gate ran still blocks):
- `disputed`: a dispute of the checkpoint is open;
- `dispute_window`: the dispute window has not passed since the checkpoint was last built
  (`updated_at`). The window is the one declared in the rules the checkpoint was built under:
  `gate.dispute_window_seconds` of the document its `entries.rules.fingerprint` names in
  crunch.rules_fingerprints (the engine records it with the checkpoint). A checkpoint naming no
  recorded rules document has no known window and is refused too: rebuild it while it is PENDING.
No client (a token, a forged gate result passed to the function) can skip either.

Triggers, every one ENABLE ALWAYS (a replica-mode session does not skip them): UPDATE, DELETE and
TRUNCATE of both tables refused; a dispute row is appended only from inside the two functions, for
a PENDING checkpoint of the same competition, a resolution only of an open dispute of the same
checkpoint (a unique index: once).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-18 09:00:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

ENGINE = "crunch_engine"
API = "crunch_api"
TRANSITION_SETTING = "crunch.checkpoint_transition"  # migration 0006's
DISPUTE_SETTING = "crunch.checkpoint_dispute"
TX_HASH_PATTERN = "^(0x)?[0-9A-Za-z]{16,128}$"  # migration 0006's
APPEND_ONLY = ("rules_fingerprints", "checkpoint_disputes")
OPEN_SIGNATURE = "crunch.open_checkpoint_dispute(text, bigint, text, text, jsonb, text, text)"
RESOLVE_SIGNATURE = "crunch.resolve_checkpoint_dispute(text, bigint, bigint, text, text)"
ADVANCE_SIGNATURE = "crunch.advance_checkpoint(text, bigint, text, text, text, text, jsonb)"
MAX_DISPUTED_RANGES = 50  # crunch_assets/payouts.py's

# What 0010 adds to crunch.advance_checkpoint: before SUBMITTED and before SKIPPED (both final for
# the period: a skip pays nothing, and nothing moves a skipped checkpoint, so a dispute left open or
# a window cut short could never be answered), under the row lock, after the move's own checks
# (SUBMITTED: the passing gate result is this row's; SKIPPED: migration 0008's order and refusing gate).
DISPUTE_CHECKS = """
            IF p_to_status IN ('SUBMITTED', 'SKIPPED') THEN
                SELECT count(*) INTO v_open FROM crunch.checkpoint_disputes d
                WHERE d.checkpoint_id = cp.id AND d.action = 'OPENED'
                  AND NOT EXISTS (SELECT 1 FROM crunch.checkpoint_disputes r
                                  WHERE r.dispute_id = d.id AND r.action = 'RESOLVED');
                IF v_open > 0 THEN
                    RETURN QUERY SELECT 'disputed', format('checkpoint %s has %s open dispute(s): resolve them before '
                        'it is %s (crunch-dagster disputes resolve)', cp.id, v_open, p_to_status), cp.status, NULL::bigint;
                    RETURN;
                END IF;
                v_fingerprint := cp.entries #>> '{rules,fingerprint}';
                SELECT r.document #>> '{period,spec,gate,dispute_window_seconds}' INTO v_window_text
                FROM crunch.rules_fingerprints r WHERE r.competition = cp.competition AND r.fingerprint = v_fingerprint;
                IF v_fingerprint IS NULL OR NOT FOUND OR v_window_text IS NULL OR v_window_text !~ '^[0-9]{1,10}$' THEN
                    RETURN QUERY SELECT 'dispute_window', format('checkpoint %s names no recorded rules document '
                        '(fingerprint %s): its dispute window is unknown; rebuild it (materialize emission_checkpoints '
                        'for its period) while it is PENDING', cp.id, coalesce(v_fingerprint, 'none')),
                        cp.status, NULL::bigint;
                    RETURN;
                END IF;
                v_window_ends := cp.updated_at + make_interval(secs => v_window_text::bigint);
                IF now() < v_window_ends THEN
                    RETURN QUERY SELECT 'dispute_window', format('checkpoint %s: the dispute window ends at %s '
                        '(%s s after it was built at %s)', cp.id, v_window_ends, v_window_text, cp.updated_at),
                        cp.status, NULL::bigint;
                    RETURN;
                END IF;
            END IF;"""

DISPUTE_DECLARATIONS = """
            v_open bigint;
            v_fingerprint text;
            v_window_text text;
            v_window_ends timestamptz;"""

# Migration 0008's additions (PENDING -> SKIPPED), kept verbatim by this replacement and its downgrade.
SKIP_REQUEST = """
            IF p_to_status = 'SKIPPED' THEN
                IF p_note IS NULL OR p_note !~ '[^[:space:]]' THEN
                    RETURN QUERY SELECT 'invalid', 'SKIPPED needs the reason (a note): why nobody can be paid for the period',
                        NULL::text, NULL::bigint;
                    RETURN;
                END IF;
                IF p_tx_hash IS NOT NULL OR p_gate IS NOT NULL THEN
                    RETURN QUERY SELECT 'invalid', 'SKIPPED pays nothing on-chain: it takes no tx_hash and no gate result',
                        NULL::text, NULL::bigint;
                    RETURN;
                END IF;
            END IF;"""
SKIPPED_IS_FINAL = """
            IF cp.status = 'SKIPPED' AND p_to_status <> 'SKIPPED' THEN
                RETURN QUERY SELECT 'conflict', format('checkpoint %s was SKIPPED: a skipped checkpoint is final, it is never '
                    'submitted or paid', cp.id), cp.status, NULL::bigint;
                RETURN;
            END IF;"""
SKIP_CHECKS = """
            IF p_to_status = 'SKIPPED' THEN
                SELECT c.id, c.status INTO v_previous_id, v_previous_status FROM crunch.checkpoints c
                WHERE c.competition = cp.competition AND c.period_end <= cp.period_start
                ORDER BY c.period_end DESC LIMIT 1;
                IF v_previous_status = 'PENDING' THEN
                    RETURN QUERY SELECT 'conflict', format('checkpoint %s: the checkpoint before it (#%s) is still PENDING: '
                        'skip or submit in order', cp.id, v_previous_id), cp.status, NULL::bigint;
                    RETURN;
                END IF;
                IF cp.gate IS NULL OR jsonb_typeof(cp.gate) IS DISTINCT FROM 'object'
                   OR cp.gate->'passed' IS DISTINCT FROM 'false'::jsonb THEN
                    RETURN QUERY SELECT 'gate', format('checkpoint %s: SKIPPED needs a stored emission safety gate result that '
                        'refuses it (a checkpoint the gate passes is submitted, not skipped)', cp.id), cp.status, NULL::bigint;
                    RETURN;
                END IF;
                BEGIN
                    v_gated_at := (cp.gate->>'checkpoint_updated_at')::timestamptz;
                EXCEPTION WHEN others THEN
                    v_gated_at := NULL;
                END;
                IF v_gated_at IS DISTINCT FROM cp.updated_at OR cp.gate->>'merkle_root' IS DISTINCT FROM cp.merkle_root
                   OR cp.gate->>'chained_root' IS DISTINCT FROM cp.chained_root THEN
                    RETURN QUERY SELECT 'conflict', format('checkpoint %s was rebuilt after its gate ran; run the skip again',
                        cp.id), cp.status, NULL::bigint;
                    RETURN;
                END IF;
            END IF;"""


def _advance_checkpoint(with_disputes: bool) -> str:
    """crunch.advance_checkpoint as migration 0008 left it (0006's moves and PENDING -> SKIPPED;
    0009 did not change it), with DISPUTE_CHECKS before SUBMITTED and SKIPPED (upgrade) or without
    them (downgrade: 0008's function exactly)."""
    dispute_declarations = DISPUTE_DECLARATIONS if with_disputes else ""
    dispute_checks = DISPUTE_CHECKS if with_disputes else ""
    return f"""
        CREATE OR REPLACE FUNCTION crunch.advance_checkpoint(
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
            v_previous_id bigint;
            v_previous_status text;{dispute_declarations}
        BEGIN
            IF p_actor IS NULL OR length(p_actor) NOT BETWEEN 1 AND 200 THEN
                RETURN QUERY SELECT 'invalid', 'actor must be 1..200 characters', NULL::text, NULL::bigint; RETURN;
            END IF;
            IF p_note IS NOT NULL AND length(p_note) > 1000 THEN
                RETURN QUERY SELECT 'invalid', 'note must be at most 1000 characters', NULL::text, NULL::bigint; RETURN;
            END IF;
            v_from := CASE p_to_status WHEN 'SUBMITTED' THEN 'PENDING' WHEN 'CLAIMABLE' THEN 'SUBMITTED'
                                       WHEN 'PAID' THEN 'CLAIMABLE' WHEN 'SKIPPED' THEN 'PENDING' END;
            IF v_from IS NULL THEN
                RETURN QUERY SELECT 'invalid', format('a checkpoint moves to SUBMITTED, CLAIMABLE, PAID or SKIPPED, not %L',
                    p_to_status), NULL::text, NULL::bigint;
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
            END IF;{SKIP_REQUEST}
            SELECT * INTO cp FROM crunch.checkpoints c WHERE c.competition = p_competition AND c.id = p_checkpoint_id FOR UPDATE;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'not_found', format('no checkpoint %s in %s', p_checkpoint_id, p_competition), NULL::text,
                    NULL::bigint;
                RETURN;
            END IF;{SKIPPED_IS_FINAL}
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
            END IF;{SKIP_CHECKS}
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
            END IF;{dispute_checks}
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
    """


def _tables() -> None:
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


def _guards() -> None:
    for table in APPEND_ONLY:
        op.execute(f"""
            CREATE FUNCTION crunch.{table}_append_only() RETURNS trigger
            LANGUAGE plpgsql SET search_path = pg_catalog AS $$
            BEGIN
                RAISE EXCEPTION 'crunch.{table} is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
            END $$
        """)
    # Also for a superuser writing around the functions: a row only from inside them, each checked again.
    op.execute(f"""
        CREATE FUNCTION crunch.checkpoint_disputes_insert_guard() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog AS $$
        DECLARE
            v_status text;
            v_competition text;
        BEGIN
            IF current_setting('{DISPUTE_SETTING}', true) IS DISTINCT FROM NEW.checkpoint_id::text THEN
                RAISE EXCEPTION 'crunch.checkpoint_disputes rows are appended only by crunch.open_checkpoint_dispute and '
                    'crunch.resolve_checkpoint_dispute' USING ERRCODE = 'insufficient_privilege';
            END IF;
            SELECT c.status, c.competition INTO v_status, v_competition FROM crunch.checkpoints c WHERE c.id = NEW.checkpoint_id;
            IF v_status IS DISTINCT FROM 'PENDING' OR v_competition IS DISTINCT FROM NEW.competition THEN
                RAISE EXCEPTION 'checkpoint % of % is %: a dispute is recorded only while it is PENDING', NEW.checkpoint_id,
                    NEW.competition, coalesce(v_status, 'missing') USING ERRCODE = 'insufficient_privilege';
            END IF;
            IF NEW.action = 'OPENED' THEN
                IF NEW.dispute_id IS NOT NULL OR NEW.claimant IS NULL OR NEW.what IS NULL OR NEW.cycles IS NULL THEN
                    RAISE EXCEPTION 'an opened dispute names its claimant, what is disputed and its cycles, and no other dispute'
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
            ELSIF NEW.action = 'RESOLVED' THEN
                IF NEW.claimant IS NOT NULL OR NEW.what IS NOT NULL OR NEW.cycles IS NOT NULL OR NEW.note IS NULL
                   OR NOT EXISTS (SELECT 1 FROM crunch.checkpoint_disputes d WHERE d.id = NEW.dispute_id
                                  AND d.action = 'OPENED' AND d.checkpoint_id = NEW.checkpoint_id
                                  AND d.competition = NEW.competition) THEN
                    RAISE EXCEPTION 'a resolution names how an opened dispute of the same checkpoint was resolved'
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
            ELSE
                RAISE EXCEPTION 'a dispute row is OPENED or RESOLVED, not %', NEW.action USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END $$
    """)
    for table in APPEND_ONLY:
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON crunch.{table} "
                   f"FOR EACH ROW EXECUTE FUNCTION crunch.{table}_append_only()")
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON crunch.{table} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION crunch.{table}_append_only()")
    op.execute("CREATE TRIGGER checkpoint_disputes_insert_guard BEFORE INSERT ON crunch.checkpoint_disputes "
               "FOR EACH ROW EXECUTE FUNCTION crunch.checkpoint_disputes_insert_guard()")
    # ALWAYS: they fire under session_replication_role = replica too.
    for table, trigger in [*((t, f"{t}_append_only") for t in APPEND_ONLY), *((t, f"{t}_no_truncate") for t in APPEND_ONLY),
                           ("checkpoint_disputes", "checkpoint_disputes_insert_guard")]:
        op.execute(f"ALTER TABLE crunch.{table} ENABLE ALWAYS TRIGGER {trigger}")


def _dispute_functions() -> None:
    op.execute(f"""
        CREATE FUNCTION crunch.open_checkpoint_dispute(
            p_competition text, p_checkpoint_id bigint, p_claimant text, p_what text, p_cycles jsonb, p_actor text,
            p_note text DEFAULT NULL)
        RETURNS TABLE (outcome text, message text, checkpoint_status text, dispute_id bigint)
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        DECLARE
            cp record;
            v_range jsonb;
            v_first timestamptz;
            v_last timestamptz;
            v_cycles jsonb := '[]'::jsonb;
            v_id bigint;
        BEGIN
            IF p_actor IS NULL OR length(p_actor) NOT BETWEEN 1 AND 200 OR p_actor ~ '[\\x01-\\x08\\x0b-\\x1f]' THEN
                RETURN QUERY SELECT 'invalid', 'actor must be 1..200 characters of text', NULL::text, NULL::bigint; RETURN;
            END IF;
            IF p_claimant IS NULL OR length(btrim(p_claimant)) = 0 OR length(p_claimant) > 200
               OR p_claimant ~ '[\\x01-\\x08\\x0b-\\x1f]' THEN
                RETURN QUERY SELECT 'invalid', 'claimant must be 1..200 characters of text', NULL::text, NULL::bigint; RETURN;
            END IF;
            IF p_what IS NULL OR length(btrim(p_what)) = 0 OR length(p_what) > 1000 OR p_what ~ '[\\x01-\\x08\\x0b-\\x1f]' THEN
                RETURN QUERY SELECT 'invalid', 'what must be 1..1000 characters of text', NULL::text, NULL::bigint; RETURN;
            END IF;
            IF p_note IS NOT NULL AND (length(p_note) > 1000 OR p_note ~ '[\\x01-\\x08\\x0b-\\x1f]') THEN
                RETURN QUERY SELECT 'invalid', 'note must be at most 1000 characters of text', NULL::text, NULL::bigint; RETURN;
            END IF;
            IF jsonb_typeof(p_cycles) IS DISTINCT FROM 'array' OR jsonb_array_length(p_cycles) NOT BETWEEN 1 AND {MAX_DISPUTED_RANGES} THEN
                RETURN QUERY SELECT 'invalid', 'cycles: name 1..{MAX_DISPUTED_RANGES} ranges [{{"first": t, "last": t}}, ...]',
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
                RETURN QUERY SELECT 'conflict', format('checkpoint %s is %s: a dispute can be opened only while it is PENDING '
                    '(before it is submitted)', p_checkpoint_id, cp.status), cp.status, NULL::bigint;
                RETURN;
            END IF;
            FOR v_range IN SELECT value FROM jsonb_array_elements(p_cycles) LOOP
                BEGIN
                    IF jsonb_typeof(v_range->'first') IS DISTINCT FROM 'string' OR jsonb_typeof(v_range->'last') IS DISTINCT FROM 'string'
                       OR v_range->>'first' !~ '(Z|[+-][0-9]{{2}}(:?[0-9]{{2}})?)$' OR v_range->>'last' !~ '(Z|[+-][0-9]{{2}}(:?[0-9]{{2}})?)$' THEN
                        RAISE EXCEPTION 'not a time';
                    END IF;
                    v_first := (v_range->>'first')::timestamptz;
                    v_last := (v_range->>'last')::timestamptz;
                EXCEPTION WHEN others THEN
                    RETURN QUERY SELECT 'invalid', format('cycles: %s is not {{"first": t, "last": t}} with ISO-8601 times '
                        'carrying a UTC offset', v_range), cp.status, NULL::bigint;
                    RETURN;
                END;
                IF NOT (cp.period_start <= v_first AND v_first <= v_last AND v_last < cp.period_end) THEN
                    RETURN QUERY SELECT 'outside', format('cycles %s .. %s are not inside checkpoint %s''s period %s .. %s '
                        '(first <= last, end exclusive)', v_range->>'first', v_range->>'last', p_checkpoint_id,
                        cp.period_start, cp.period_end), cp.status, NULL::bigint;
                    RETURN;
                END IF;
                v_cycles := v_cycles || jsonb_build_array(jsonb_build_object('first', v_range->>'first', 'last', v_range->>'last'));
            END LOOP;
            PERFORM set_config('{DISPUTE_SETTING}', p_checkpoint_id::text, true);
            INSERT INTO crunch.checkpoint_disputes AS d (competition, checkpoint_id, action, claimant, what, cycles, actor, note)
            VALUES (p_competition, p_checkpoint_id, 'OPENED', p_claimant, p_what, v_cycles, p_actor, p_note)
            RETURNING d.id INTO v_id;
            PERFORM set_config('{DISPUTE_SETTING}', '', true);
            RETURN QUERY SELECT 'opened', NULL::text, cp.status, v_id;
        END $$
    """)
    op.execute(f"""
        CREATE FUNCTION crunch.resolve_checkpoint_dispute(
            p_competition text, p_checkpoint_id bigint, p_dispute_id bigint, p_resolution text, p_actor text)
        RETURNS TABLE (outcome text, message text, checkpoint_status text, resolution_id bigint)
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        DECLARE
            v_status text;
            v_done bigint;
            v_id bigint;
        BEGIN
            IF p_actor IS NULL OR length(p_actor) NOT BETWEEN 1 AND 200 OR p_actor ~ '[\\x01-\\x08\\x0b-\\x1f]' THEN
                RETURN QUERY SELECT 'invalid', 'actor must be 1..200 characters of text', NULL::text, NULL::bigint; RETURN;
            END IF;
            IF p_resolution IS NULL OR length(btrim(p_resolution)) = 0 OR length(p_resolution) > 1000
               OR p_resolution ~ '[\\x01-\\x08\\x0b-\\x1f]' THEN
                RETURN QUERY SELECT 'invalid', 'resolution must be 1..1000 characters of text', NULL::text, NULL::bigint;
                RETURN;
            END IF;
            SELECT c.status INTO v_status FROM crunch.checkpoints c
            WHERE c.competition = p_competition AND c.id = p_checkpoint_id FOR UPDATE;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'not_found', format('no checkpoint %s in %s', p_checkpoint_id, p_competition),
                    NULL::text, NULL::bigint;
                RETURN;
            END IF;
            IF v_status <> 'PENDING' THEN
                RETURN QUERY SELECT 'conflict', format('checkpoint %s is %s: a dispute can be resolved only while it is PENDING '
                    '(before it is submitted)', p_checkpoint_id, v_status), v_status, NULL::bigint;
                RETURN;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM crunch.checkpoint_disputes d WHERE d.competition = p_competition
                           AND d.checkpoint_id = p_checkpoint_id AND d.id = p_dispute_id AND d.action = 'OPENED') THEN
                RETURN QUERY SELECT 'not_found', format('checkpoint %s has no dispute %s', p_checkpoint_id, p_dispute_id),
                    v_status, NULL::bigint;
                RETURN;
            END IF;
            SELECT d.id INTO v_done FROM crunch.checkpoint_disputes d WHERE d.dispute_id = p_dispute_id AND d.action = 'RESOLVED';
            IF FOUND THEN
                RETURN QUERY SELECT 'invalid', format('dispute %s is already resolved (#%s)', p_dispute_id, v_done),
                    v_status, NULL::bigint;
                RETURN;
            END IF;
            PERFORM set_config('{DISPUTE_SETTING}', p_checkpoint_id::text, true);
            INSERT INTO crunch.checkpoint_disputes AS d (competition, checkpoint_id, action, dispute_id, actor, note)
            VALUES (p_competition, p_checkpoint_id, 'RESOLVED', p_dispute_id, p_actor, p_resolution)
            RETURNING d.id INTO v_id;
            PERFORM set_config('{DISPUTE_SETTING}', '', true);
            RETURN QUERY SELECT 'resolved', NULL::text, v_status, v_id;
        END $$
    """)


def _privileges() -> None:
    for table in APPEND_ONLY:
        op.execute(f"REVOKE ALL ON crunch.{table} FROM PUBLIC")
        op.execute(f"GRANT SELECT ON crunch.{table} TO {ENGINE}, {API}")
    # The pipeline's writes: a cycle's fingerprint with its scores, a fingerprint's document once.
    # (0006's table-level UPDATE on crunch.inputs covers the new column; granted here by name too.)
    op.execute(f"GRANT UPDATE (rules_fingerprint) ON crunch.inputs TO {ENGINE}")
    op.execute(f"GRANT INSERT ON crunch.rules_fingerprints TO {ENGINE}")
    op.execute(f"GRANT USAGE ON SEQUENCE crunch.rules_fingerprints_id_seq TO {ENGINE}")
    for function in ("rules_fingerprints_append_only()", "checkpoint_disputes_append_only()",
                     "checkpoint_disputes_insert_guard()"):
        op.execute(f"REVOKE ALL ON FUNCTION crunch.{function} FROM PUBLIC")
    for signature in (OPEN_SIGNATURE, RESOLVE_SIGNATURE):
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {API}")


def upgrade() -> None:
    _tables()
    _guards()
    _dispute_functions()
    # CREATE OR REPLACE keeps the function's owner and grants (EXECUTE: crunch_api alone).
    op.execute(_advance_checkpoint(with_disputes=True))
    _privileges()


def downgrade() -> None:
    op.execute(_advance_checkpoint(with_disputes=False))
    for signature in (OPEN_SIGNATURE, RESOLVE_SIGNATURE):
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
    op.execute("DROP TRIGGER IF EXISTS checkpoint_disputes_insert_guard ON crunch.checkpoint_disputes")
    for table in APPEND_ONLY:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON crunch.{table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON crunch.{table}")
        op.execute(f"DROP FUNCTION IF EXISTS crunch.{table}_append_only()")
    op.execute("DROP FUNCTION IF EXISTS crunch.checkpoint_disputes_insert_guard()")
    op.drop_index('uq_checkpoint_disputes_resolved', table_name='checkpoint_disputes', schema='crunch')
    op.drop_index('ix_checkpoint_disputes_checkpoint', table_name='checkpoint_disputes', schema='crunch')
    op.drop_table('checkpoint_disputes', schema='crunch')
    op.drop_table('rules_fingerprints', schema='crunch')
    op.drop_column('inputs', 'rules_fingerprint', schema='crunch')

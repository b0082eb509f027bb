"""an operator may skip a checkpoint nobody can be paid for: PENDING -> SKIPPED, audited, final.

A period can be impossible to pay (no eligible model; fewer participants than the gate's policy
allows; a participant over its share cap). Submissions go in order, so such a checkpoint, PENDING
forever, used to block every later period. crunch.advance_checkpoint (replaced here, same
signature: its owner, SECURITY DEFINER and the crunch_api grant stay) now also moves
PENDING -> SKIPPED:
- only with a note (the reason: 1..1000 characters, not blank), never with a tx hash or a gate
  result (a skip pays nothing on-chain);
- only when the checkpoint before it (the latest period ending at or before its start) is past
  PENDING, as a submission must be: skips go in order too, so a mistyped id is refused rather
  than skipped for good;
- only when the gate result stored with it (crunch.record_checkpoint_gate) refused it, for this
  very row (its updated_at and roots): a checkpoint the gate passes is submitted, and one rebuilt
  since its gate ran is gated again. That refusal stays with the checkpoint as the evidence (the
  guard freezes the gate of a checkpoint past PENDING). Which refusals justify a skip (nobody
  payable, the field or a share against the declared policy) is the engine's to say
  (crunch_assets/payouts.py), as which checks the gate runs is;
- under the same row lock, with the same audit row and chained digest as every other move (the
  note, the reason, is in the digest).
A SKIPPED checkpoint is final: nothing moves it (SKIPPED -> anything is refused), and migration
0006's guard already freezes it like any checkpoint past PENDING (never rewritten or deleted).
The next period's gate accepts it as its predecessor (crunch_assets/payouts.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-12 09:00:00
"""

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

TRANSITION_SETTING = "crunch.checkpoint_transition"
TX_HASH_PATTERN = "^(0x)?[0-9A-Za-z]{16,128}$"


def _advance_checkpoint(with_skip: bool) -> str:
    """The function's text: migration 0006's (with_skip False), or with PENDING -> SKIPPED."""
    targets = "SUBMITTED, CLAIMABLE, PAID or SKIPPED" if with_skip else "SUBMITTED, CLAIMABLE or PAID"
    skip_source = " WHEN 'SKIPPED' THEN 'PENDING'" if with_skip else ""
    skip_request = f"""
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
            END IF;""" if with_skip else ""
    skipped_is_final = """
            IF cp.status = 'SKIPPED' AND p_to_status <> 'SKIPPED' THEN
                RETURN QUERY SELECT 'conflict', format('checkpoint %s was SKIPPED: a skipped checkpoint is final, it is never '
                    'submitted or paid', cp.id), cp.status, NULL::bigint;
                RETURN;
            END IF;""" if with_skip else ""
    skip_checks = """
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
            END IF;""" if with_skip else ""
    previous_declarations = """
            v_previous_id bigint;
            v_previous_status text;""" if with_skip else ""
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
            v_audit bigint;{previous_declarations}
        BEGIN
            IF p_actor IS NULL OR length(p_actor) NOT BETWEEN 1 AND 200 THEN
                RETURN QUERY SELECT 'invalid', 'actor must be 1..200 characters', NULL::text, NULL::bigint; RETURN;
            END IF;
            IF p_note IS NOT NULL AND length(p_note) > 1000 THEN
                RETURN QUERY SELECT 'invalid', 'note must be at most 1000 characters', NULL::text, NULL::bigint; RETURN;
            END IF;
            v_from := CASE p_to_status WHEN 'SUBMITTED' THEN 'PENDING' WHEN 'CLAIMABLE' THEN 'SUBMITTED'
                                       WHEN 'PAID' THEN 'CLAIMABLE'{skip_source} END;
            IF v_from IS NULL THEN
                RETURN QUERY SELECT 'invalid', format('a checkpoint moves to {targets}, not %L', p_to_status),
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
            END IF;{skip_request}
            SELECT * INTO cp FROM crunch.checkpoints c WHERE c.competition = p_competition AND c.id = p_checkpoint_id FOR UPDATE;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'not_found', format('no checkpoint %s in %s', p_checkpoint_id, p_competition), NULL::text,
                    NULL::bigint;
                RETURN;
            END IF;{skipped_is_final}
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
            END IF;{skip_checks}
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
    """


def upgrade() -> None:
    op.execute(_advance_checkpoint(with_skip=True))


def downgrade() -> None:
    op.execute("""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM crunch.checkpoints WHERE status = 'SKIPPED') THEN
                RAISE EXCEPTION 'crunch.checkpoints holds SKIPPED checkpoints, which migration 0007 does not know: '
                    'downgrade refused (a skip is final)';
            END IF;
        END $$
    """)
    op.execute(_advance_checkpoint(with_skip=False))

"""portable leaves: new checkpoints commit under scheme 3.

Scheme 3 (crunch_assets/merkle.py) hashes each leaf, and the output and truth inside it, over RFC
8785 canonical JSON with the score value a JSON number, so a browser or any language recomputes
the leaves; the chained root is sha256(0x03 || previous chained root || root || entries hash).
Checkpoints stored before keep their scheme (1 or 2) and keep verifying under it.

`crunch.checkpoints_guard` (migration 0006) is replaced by the same function with a higher floor:
a new or rebuilt checkpoint is refused below scheme 3 (for every role: the trigger is ENABLE
ALWAYS, and stays so: CREATE OR REPLACE keeps the trigger). The column's default becomes 3. No
table, role or grant changes: the engine writes the same columns as before.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-17 09:00:00
"""

from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

TRANSITION_SETTING = "crunch.checkpoint_transition"
MINIMUM_SCHEME = 3
PREVIOUS_MINIMUM_SCHEME = 2


def _guard(minimum: int, new_why: str, rebuilt_why: str) -> str:
    """crunch.checkpoints_guard as migration 0006 wrote it, with `minimum` as the floor of a new or
    rebuilt checkpoint's commitment scheme."""
    return f"""
        CREATE OR REPLACE FUNCTION crunch.checkpoints_guard() RETURNS trigger
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
                IF NEW.commitment_scheme < {minimum} THEN
                    RAISE EXCEPTION 'commitment scheme % is retired: new checkpoints {new_why} (scheme {minimum})',
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
                IF NEW.commitment_scheme < {minimum} THEN
                    RAISE EXCEPTION 'commitment scheme % is retired: a rebuilt checkpoint {rebuilt_why} (scheme {minimum})',
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
    """


def upgrade() -> None:
    op.execute(_guard(MINIMUM_SCHEME, "have portable leaves", "has portable leaves"))
    op.alter_column('checkpoints', 'commitment_scheme', server_default=str(MINIMUM_SCHEME), schema='crunch')


def downgrade() -> None:
    op.execute(_guard(PREVIOUS_MINIMUM_SCHEME, "commit to their entries", "commits to its entries"))
    op.alter_column('checkpoints', 'commitment_scheme', server_default=str(PREVIOUS_MINIMUM_SCHEME), schema='crunch')

"""`crunch-dagster audit <slug>`: recompute every checkpoint's commitments from the store, check each
one's payment lifecycle, and recompute what the PENDING ones pay."""

from __future__ import annotations

import json
from datetime import datetime

import click
from resources.store.lifecycles import CheckpointStatus


@click.command()
@click.argument("slug")
@click.option("--proof", "proof_model", metavar="MODEL_ID", help="Print the inclusion proof of one of this model's scores.")
@click.option("--cycle", "cycle_at", metavar="ISO_TIME", help="With --proof: the cycle time of the score.")
@click.option("--scope", "scope_key", metavar="SCOPE_KEY", help="With --proof: the scope, if the cycle has several.")
@click.option("--checkpoint", "checkpoint_id", type=int, help="With --proof: the checkpoint holding the score.")
def audit(slug: str, proof_model: str | None, cycle_at: str | None, scope_key: str | None, checkpoint_id: int | None) -> None:
    """Recompute the Merkle root of every checkpoint's scores (in its commitment scheme), the hash
    of its entries and the chain of roots from the store; check that each checkpoint past PENDING
    has its audit trail (every step, with actor, tx hash and an unbroken digest chain) and the
    passing gate result it was submitted with; that each chained root since scheme 3 is in the
    publication file; recompute what each PENDING checkpoint pays from the stored snapshots.
    Report every checkpoint that does not verify (exit 1), or print a score's proof."""
    from crunch_assets.api.competitions import load_report_competition
    from crunch_assets.defs.checkpoints.assets import checkpoint_entries
    from crunch_assets.payouts import accounts_of, payout_differences
    from crunch_assets.publication import RootSink, audit_problem, read_publications
    from crunch_assets.verification import audit_checkpoints, first_problem, inclusion_proof

    c = load_report_competition(slug)
    store = c.store
    if proof_model:
        if not (cycle_at and checkpoint_id is not None):
            raise click.UsageError("--proof needs --cycle and --checkpoint")
        checkpoint = store.checkpoint_by_id(checkpoint_id)
        if checkpoint is None:
            raise click.ClickException(f"no checkpoint {checkpoint_id} in {slug}")
        try:
            proof = inclusion_proof(store, checkpoint, proof_model, datetime.fromisoformat(cycle_at), scope_key)
        except LookupError as error:
            raise click.ClickException(str(error)) from None
        click.echo(json.dumps(proof, indent=2))
        raise SystemExit(0 if proof["verified"] else 1)
    audits = audit_checkpoints(store, c.payouts.audit_trails())
    by_id = {cp.id: cp for cp in store.checkpoints()}
    payout_problems: dict[int, list[str]] = {}
    if c.rules is not None:
        for a in audits:
            cp = by_id.get(a.checkpoint_id)
            if cp is not None and cp.status == CheckpointStatus.PENDING:
                differences = payout_differences(cp.entries, checkpoint_entries(
                    c.spec, c.rules, store, accounts_of(cp.entries), cp.period_start, cp.period_end,
                    ground_truth=c.ground_truth))
                if differences:
                    payout_problems[a.checkpoint_id] = [f"the payout does not recompute from the stored snapshots: {d}"
                                                        for d in differences]
    # The chained roots as published outside the database when each checkpoint was built.
    sink = RootSink.from_settings(c.settings)
    try:
        published, unreadable = read_publications(sink), None
    except OSError as error:
        published, unreadable = [], f"the publication file {sink.path} cannot be read ({error.strerror or error})"
    for a in audits:
        cp = by_id.get(a.checkpoint_id)
        problem = audit_problem(sink, cp, published) if cp is not None else None
        if problem and unreadable:
            problem = unreadable
        if problem:
            payout_problems.setdefault(a.checkpoint_id, []).append(problem)
    failing = []
    for a in audits:
        problems = a.problems + payout_problems.get(a.checkpoint_id, [])
        mark = "ok " if not problems else "BAD"
        click.echo(f"{mark} #{a.checkpoint_id} {a.period_start.isoformat()} .. {a.period_end.isoformat()} {a.status:9} "
                   f"scheme {a.commitment_scheme} root {a.recomputed_root[:16]}"
                   + ("" if a.root_matches else f"  (stored {str(a.stored_root)[:16]})"))
        for problem in problems:
            click.echo(f"      {problem}")
        if problems:
            failing.append(a)
    changed = first_problem([a for a in audits if not a.data_ok])
    if changed is not None:
        click.echo(f"first checkpoint whose data changed: #{changed.checkpoint_id} "
                   f"({changed.period_start.isoformat()} .. {changed.period_end.isoformat()})", err=True)
    for a in failing:
        if a is not changed:
            first = (a.problems + payout_problems.get(a.checkpoint_id, []))[0]
            click.echo(f"checkpoint #{a.checkpoint_id} ({a.status}) does not verify: {first}", err=True)
    if failing:
        raise SystemExit(1)
    click.echo(f"{len(audits)} checkpoint(s) verified")

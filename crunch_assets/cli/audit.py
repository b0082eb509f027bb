"""`crunch-dagster audit <slug>`: recompute every checkpoint's Merkle commitment from the store."""

from __future__ import annotations

import json
from datetime import datetime

import click

from crunch_assets.cli.common import load_competition


@click.command()
@click.argument("slug")
@click.option("--proof", "proof_model", metavar="MODEL_ID", help="Print the inclusion proof of one of this model's scores.")
@click.option("--cycle", "cycle_at", metavar="ISO_TIME", help="With --proof: the cycle time of the score.")
@click.option("--scope", "scope_key", metavar="SCOPE_KEY", help="With --proof: the scope, if the cycle has several.")
@click.option("--checkpoint", "checkpoint_id", type=int, help="With --proof: the checkpoint holding the score.")
def audit(slug: str, proof_model: str | None, cycle_at: str | None, scope_key: str | None, checkpoint_id: int | None) -> None:
    """Recompute the Merkle root of every checkpoint's scores from the store and the chain of
    roots; report the first checkpoint whose data changed (exit 1), or print a score's proof."""
    from crunch_assets.verification import (
        audit_checkpoints,
        first_problem,
        inclusion_proof,
    )
    from resources.store.database import CrunchDatabase

    load_competition(slug)
    store = CrunchDatabase().competition(slug)
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
    audits = audit_checkpoints(store)
    for a in audits:
        mark = "ok " if a.ok else "BAD"
        click.echo(f"{mark} #{a.checkpoint_id} {a.period_start.isoformat()} .. {a.period_end.isoformat()} {a.status:9} "
                   f"root {a.recomputed_root[:16]}" + ("" if a.ok else f"  (stored {str(a.stored_root)[:16]}): {a.problem}"))
    problem = first_problem(audits)
    if problem is not None:
        click.echo(f"first checkpoint whose data changed: #{problem.checkpoint_id} "
                   f"({problem.period_start.isoformat()} .. {problem.period_end.isoformat()})", err=True)
        raise SystemExit(1)
    click.echo(f"{len(audits)} checkpoint(s) verified")

"""`crunch-dagster checkpoints list|show|submit|advance|skip|resolve-copy|publish|receipt <slug> ...`:
a competition's checkpoints, their payment lifecycle, their copy clusters, the publication of their
chained roots and participants' receipts from the command line, with the same gate and audit as the
report API.

The actor recorded in the audit is the OS user, unless --actor is given.
"""

from __future__ import annotations

import getpass
import json

import click

from crunch_assets.api.competitions import load_report_competition
from resources.store.lifecycles import CheckpointStatus


def _json(value) -> str:
    return json.dumps(value, indent=2, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        return "unknown-os-user"


@click.group()
def checkpoints() -> None:
    """A competition's checkpoints: list, show, submit (PENDING -> SUBMITTED, gated), advance, skip (PENDING ->
    SKIPPED, a period nobody can be paid for), resolve-copy, publish, receipt."""


@checkpoints.command("list")
@click.argument("slug")
@click.option("--status", type=click.Choice([status.value for status in CheckpointStatus]))
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_checkpoints(slug: str, status: str | None, limit: int, as_json: bool) -> None:
    """The newest checkpoints first. A SKIPPED one shows its reason; a PENDING one that can never be
    submitted as built says why, and how an operator skips it."""
    from crunch_assets.api.views import checkpoint_summary

    c = load_report_competition(slug)
    rows = c.reports.checkpoints(status=status, limit=limit)
    trails = c.payouts.audit_trails([cp.id for cp in rows])
    summaries = [checkpoint_summary(cp, trails.get(cp.id, []), c.spec) for cp in rows]
    if as_json:
        click.echo(_json(summaries))
        return
    if not rows:
        click.echo(f"{slug}: no checkpoint" + (f" {status}" if status else ""))
    for cp, summary in zip(rows, summaries):
        paid = sum(1 for r in cp.entries.get("ranking", []) if r.get("reward_pct"))
        lifecycle = summary["lifecycle"]
        click.echo(f"#{cp.id:<5} {cp.period_start.isoformat()} .. {cp.period_end.isoformat()}  {cp.status:9}  "
                   f"{paid} paid model(s)  root {str(cp.merkle_root)[:16]}" + (f"  tx {cp.tx_hash}" if cp.tx_hash else "")
                   + ("" if lifecycle["verified"] else f"  NOT VERIFIED: {lifecycle['problems'][0]}"))
        if summary["skipped"]:
            skipped = summary["skipped"]
            click.echo(f"       skipped by {skipped['actor']} at {skipped['at'].isoformat()}: {skipped['reason']}")
        if summary["unpayable"]:
            click.echo(f"       CANNOT BE SUBMITTED: {'; '.join(summary['unpayable']['reasons'])}")
            click.echo(f"       later periods wait for it; if nobody can be paid for it, skip it: crunch-dagster checkpoints "
                       f"skip {slug} {cp.id} --reason '<why>'")


@checkpoints.command("show")
@click.argument("slug")
@click.argument("checkpoint_id", type=click.IntRange(1))
@click.option("--format", "output", type=click.Choice(["full", "emission", "cli"]), default="full", show_default=True,
              help="full: everything stored with the audit; emission: the on-chain shape; cli: percentages and prizes")
@click.option("--pool", type=click.IntRange(1), help="with --format cli: the prize pool to split")
@click.option("--gate", "run_gate", is_flag=True, help="also run the safety gate now (stores nothing)")
def show(slug: str, checkpoint_id: int, output: str, pool: int | None, run_gate: bool) -> None:
    """One checkpoint as JSON."""
    from crunch_assets import payouts
    from crunch_assets.api.views import checkpoint_view

    c = load_report_competition(slug)
    cp = c.store.checkpoint_by_id(checkpoint_id)
    if cp is None:
        raise click.ClickException(f"no checkpoint {checkpoint_id} in {slug}")
    if output == "emission":
        result = payouts.emission_of(cp)
    elif output == "cli":
        result = payouts.cli_format(cp, pool)
    else:
        result = checkpoint_view(cp, c.payouts.gate(cp.id), c.payouts.audit_trail(cp.id), c.store.disputes.disputes(cp.id),
                                 c.spec)
    if run_gate:
        result = {**result, "gate_now": payouts.run_gate(c.spec, c.store, cp, c.accounts, c.settings, rules=c.rules,
                                                          payouts=c.payouts, ground_truth=c.ground_truth)}
    click.echo(_json(result))


def _transition(slug: str, checkpoint_id: int, status: str, tx_hash: str | None, actor: str | None, note: str | None) -> None:
    from crunch_assets import payouts
    from resources.store.payouts import CheckpointNotFound, TransitionConflict

    c = load_report_competition(slug)
    try:
        outcome = payouts.advance(c.spec, c.store, c.payouts, c.accounts, checkpoint_id, status, actor=_actor(actor),
                                  tx_hash=tx_hash, note=note, settings=c.settings, rules=c.rules,
                                  ground_truth=c.ground_truth)
    except (CheckpointNotFound, payouts.InvalidRequest, TransitionConflict) as error:
        raise click.ClickException(str(error)) from error
    except payouts.GateFailed as error:
        click.echo("the emission safety gate refused the submission:", err=True)
        for reason in error.reasons:
            click.echo(f"  - {reason}", err=True)
        raise SystemExit(1) from None
    except payouts.SkipRefused as error:
        click.echo(f"checkpoint {checkpoint_id} cannot be skipped:", err=True)
        for reason in error.reasons:
            click.echo(f"  - {reason}", err=True)
        raise SystemExit(1) from None
    click.echo(outcome.message)
    if outcome.audit is not None:
        click.echo(f"audit #{outcome.audit.id}: {outcome.audit.from_status} -> {outcome.audit.to_status} by "
                   f"{outcome.audit.actor} at {outcome.audit.at.isoformat()}")


@checkpoints.command("submit")
@click.argument("slug")
@click.argument("checkpoint_id", type=click.IntRange(1))
@click.option("--tx-hash", required=True, help="the on-chain transaction hash of the submitted emission")
@click.option("--actor", help="who does this (default: the OS user)")
@click.option("--note")
def submit(slug: str, checkpoint_id: int, tx_hash: str, actor: str | None, note: str | None) -> None:
    """PENDING -> SUBMITTED, after the emission safety gate (exit 1 with its reasons when it refuses)."""
    _transition(slug, checkpoint_id, CheckpointStatus.SUBMITTED, tx_hash, actor, note)


@checkpoints.command("advance")
@click.argument("slug")
@click.argument("checkpoint_id", type=click.IntRange(1))
@click.argument("status", type=click.Choice([CheckpointStatus.SUBMITTED.value, CheckpointStatus.CLAIMABLE.value,
                                             CheckpointStatus.PAID.value]))
@click.option("--tx-hash", help="a transaction hash (required for SUBMITTED)")
@click.option("--actor", help="who does this (default: the OS user)")
@click.option("--note")
def advance(slug: str, checkpoint_id: int, status: str, tx_hash: str | None, actor: str | None, note: str | None) -> None:
    """One step forward: SUBMITTED -> CLAIMABLE -> PAID (repeating a done step changes nothing)."""
    _transition(slug, checkpoint_id, status, tx_hash, actor, note)


@checkpoints.command("skip")
@click.argument("slug")
@click.argument("checkpoint_id", type=click.IntRange(1))
@click.option("--reason", required=True, help="why nobody can be paid for the period (kept in the audit)")
@click.option("--actor", help="who does this (default: the OS user)")
def skip(slug: str, checkpoint_id: int, reason: str, actor: str | None) -> None:
    """PENDING -> SKIPPED, final: the period pays nothing, now or later, and the next one may be
    submitted. Only for a checkpoint the gate refuses because nobody can be paid (no model paid,
    the field below the gate's minimum, a participant over its cap), settled, genuine and in order
    (exit 1 with the reasons otherwise)."""
    _transition(slug, checkpoint_id, CheckpointStatus.SKIPPED, None, actor, reason)


@checkpoints.command("resolve-copy")
@click.argument("slug")
@click.argument("checkpoint_id", type=click.IntRange(1))
@click.argument("cluster_key")
@click.option("--pay", "paid_model_id", help="the one member the cluster pays")
@click.option("--pay-all", is_flag=True, help="the members are not copies: pay every one")
@click.option("--actor", help="who does this (default: the OS user)")
@click.option("--note", help="why (kept in the audit)")
def resolve_copy(slug: str, checkpoint_id: int, cluster_key: str, paid_model_id: str | None, pay_all: bool,
                 actor: str | None, note: str | None) -> None:
    """Resolve a copy cluster of a PENDING checkpoint (audited): --pay MODEL or --pay-all. The
    checkpoint applies it when it is next built (the checkpoint sensor sees the change)."""
    from crunch_assets import payouts

    c = load_report_competition(slug)
    try:
        resolution = payouts.resolve_copy(c.spec, c.store, checkpoint_id, cluster_key, actor=_actor(actor),
                                          paid_model_id=paid_model_id, pay_all=pay_all, note=note)
    except (payouts.InvalidRequest, payouts.CopyResolutionRefused) as error:
        raise click.ClickException(str(error)) from error
    decision = "pay every member" if resolution.decision == "pay_all" else f"pay only {resolution.paid_model_id}"
    click.echo(f"resolution #{resolution.id}: cluster {cluster_key} ({', '.join(resolution.members)}) of checkpoint "
               f"{checkpoint_id}: {decision}, by {resolution.actor} at {resolution.at.isoformat()}")
    click.echo("the checkpoint applies it when it is rebuilt: the checkpoint sensor does it, or materialize "
               f"{slug}/emission_checkpoints for its period; `checkpoints submit` refuses it until then")


@checkpoints.command("publish")
@click.argument("slug")
@click.argument("checkpoint_id", type=click.IntRange(1))
def publish(slug: str, checkpoint_id: int) -> None:
    """Publish the checkpoint's chained root to the competition's sink (the publication file, and the
    webhook when one is set), as the checkpoint asset does when it builds it: after a publication
    failed, or once the sink is configured. Nothing is done when it is already published."""
    from crunch_assets.publication import RootSink, publication_problem
    from crunch_assets.publication import publish as publish_root

    c = load_report_competition(slug)
    cp = c.store.checkpoint_by_id(checkpoint_id)
    if cp is None:
        raise click.ClickException(f"no checkpoint {checkpoint_id} in {slug}")
    sink = RootSink.from_settings(c.settings)
    try:
        done = publish_root(sink, cp)
    except OSError as error:
        raise click.ClickException(f"could not write {sink.path}: {error}") from error
    verb = "published" if done.appended else "already published"
    click.echo(f"checkpoint #{cp.id}: chained root {cp.chained_root} {verb} to {sink.describe()}")
    problem = publication_problem(sink, cp)
    if problem:
        click.echo(problem, err=True)
        raise SystemExit(1)


@checkpoints.command("receipt")
@click.argument("slug")
@click.argument("checkpoint_id", type=click.IntRange(1))
@click.argument("model_id")
def receipt(slug: str, checkpoint_id: int, model_id: str) -> None:
    """A model's receipt for the checkpoint, as JSON (what GET .../models/{model_id}/receipt serves;
    check it with verify_receipt.py)."""
    from crunch_assets.receipts import ReceiptUnavailable, build_receipt
    from resources.store import json_codec

    c = load_report_competition(slug)
    cp = c.store.checkpoint_by_id(checkpoint_id)
    if cp is None:
        raise click.ClickException(f"no checkpoint {checkpoint_id} in {slug}")
    try:
        click.echo(json_codec.dumps(build_receipt(slug, c.store, cp, model_id)))
    except ReceiptUnavailable as error:
        raise click.ClickException(str(error)) from error

"""`crunch-dagster rules|whatif|shadow|disputes`: the rules fingerprint of a competition, past
periods under proposed rules, a candidate model in the past field, and the disputes of a
checkpoint before it is submitted (crunch_assets/fingerprint.py, whatif.py, payouts.py).

whatif and shadow read the store and write nothing; disputes are appended to the audit.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from crunch_assets.api.competitions import load_report_competition
from crunch_assets.cli.checkpoints import _actor, _json
from crunch_assets.cli.replay import parse_hour


def _range(start_text: str, end_text: str) -> tuple[datetime, datetime]:
    start, end = parse_hour("--from", start_text), parse_hour("--to", end_text)
    if end <= start:
        raise click.BadParameter(f"{end_text} is not after --from {start_text}", param_hint="--to")
    return start, end


def _loaded(slug: str):
    c = load_report_competition(slug)
    if c.rules is None:
        raise click.ClickException(f"competitions.{slug}.definitions has no `rules` resource")
    return c


def _percent(reward_pct: int | None) -> str:
    return "-" if reward_pct is None else f"{reward_pct / 1e7:.4f} %"


@click.command("rules")
@click.argument("slug")
@click.option("--document", is_flag=True, help="print the whole document the fingerprint is the hash of")
def rules(slug: str, document: bool) -> None:
    """The competition's rules fingerprint in force now, and every declared version."""
    c = _loaded(slug)
    book = c.rules_book
    if document:
        click.echo(_json(book.current.document))
        return
    click.echo(f"{slug}: rules fingerprint {book.current.fingerprint} (in force now)")
    for version in book.versions:
        since = version.effective_from.isoformat() if version.effective_from else "the beginning"
        click.echo(f"  from {since}: {version.fingerprint}  cycle rules {version.cycle_digest[:16]}"
                   + (f"  ({version.note})" if version.note else ""))


@click.command("whatif")
@click.argument("slug")
@click.option("--spec", "spec_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the proposal: a JSON object of spec fields (emission, eligibility, payout, failure_policy, ...) and "
                   "\"callables\" (scoring_function, emission_builder, ...)")
@click.option("--from", "start_text", required=True, metavar="ISO_TIME", help="first hour (UTC offset, on the hour)")
@click.option("--to", "end_text", required=True, metavar="ISO_TIME", help="end, exclusive: every checkpoint period inside")
@click.option("--rescore", is_flag=True, help="rescore every prediction from its stored output and truth even when "
                                              "the per-cycle rules are unchanged")
@click.option("--movers", default=5, show_default=True, type=click.IntRange(1, 100), help="largest movers shown")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def whatif(slug: str, spec_path: str, start_text: str, end_text: str, rescore: bool, movers: int, as_json: bool) -> None:
    """Recompute the standings and emission of past checkpoint periods under proposed rules, from the
    stored outputs and truth, writing nothing: each model's rank and share before (as stored) and
    after, and the largest movers. With the current spec it reproduces the stored checkpoints."""
    from crunch_assets.whatif import ProposalError, load_proposal
    from crunch_assets.whatif import whatif as recompute

    start, end = _range(start_text, end_text)
    c = _loaded(slug)
    try:
        proposal = load_proposal(spec_path)
        comparisons = recompute(c.spec, c.rules, c.ground_truth, c.store, c.accounts, proposal, start, end,
                                rescore=rescore)
    except ProposalError as error:
        raise click.ClickException(f"{spec_path}: {error}") from None
    if as_json:
        click.echo(_json([p.as_dict() for p in comparisons]))
        return
    if not comparisons:
        click.echo(f"no checkpoint period ({c.spec.checkpoint_interval_seconds} s) inside {start.isoformat()} .. "
                   f"{end.isoformat()}")
    for p in comparisons:
        stored = f"checkpoint #{p.checkpoint_id} {p.status}" if p.checkpoint_id else "no stored checkpoint"
        how = "rescored from the stored outputs and truth" if p.rescored else "from the stored hourly rollups"
        click.echo(f"\nperiod {p.start.isoformat()} .. {p.end.isoformat()} ({stored}; {how})")
        click.echo(f"  {'model':<28} {'rank':>11} {'share before':>16} {'share after':>16} {'change (frac64)':>16}")
        for row in p.rows():
            ranks = f"{row['rank_before'] or '-'} -> {row['rank_after'] or '-'}"
            click.echo(f"  {row['model_id']:<28} {ranks:>11} {_percent(row['reward_pct_before']):>16} "
                       f"{_percent(row['reward_pct_after']):>16} {row['change_pct']:>+16,}")
        changed = [r for r in p.movers(movers) if r["change_pct"]]
        click.echo("  largest movers: " + (", ".join(f"{r['model_id']} {r['change_pct']:+,}" for r in changed)
                                           or "none: every share is unchanged"))


@click.command("shadow")
@click.argument("slug")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True),
              help="the candidate: a model file (.py) or package directory, as participants submit them")
@click.option("--from", "start_text", required=True, metavar="ISO_TIME", help="first hour (UTC offset, on the hour)")
@click.option("--to", "end_text", required=True, metavar="ISO_TIME", help="end, exclusive: every checkpoint period inside")
@click.option("--replaces", metavar="MODEL_ID", help="the candidate takes this model's place in the field (else it joins "
                                                      "as a new participant)")
@click.option("--cycles", "with_cycles", is_flag=True, help="with --json: every cycle's status and score")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def shadow(slug: str, model_path: str, start_text: str, end_text: str, replaces: str | None, with_cycles: bool,
           as_json: bool) -> None:
    """Run a candidate model on the stored inputs of past cycles (what the field saw, nothing later),
    score it against the stored truth and report, per checkpoint period, the rank it would have
    taken, the share it would have been paid and its breakdown, with the field as it really was.
    Nothing is written."""
    from crunch_assets.whatif import shadow as run_shadow

    start, end = _range(start_text, end_text)
    c = _loaded(slug)
    try:
        report = run_shadow(c.spec, c.rules, c.ground_truth, c.store, c.accounts, Path(model_path), start, end,
                            replaces=replaces, configured_runner=c.model_runner)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(_json(report.as_dict(with_cycles=with_cycles)))
        return
    click.echo(f"candidate {report.candidate_id}: {report.cycles_run} cycle(s) run; "
               + ", ".join(f"{n} {status}" for status, n in sorted(report.statuses.items())))
    click.echo(f"field: {report.field_note}")
    for p in report.periods:
        click.echo(f"\nperiod {p.start.isoformat()} .. {p.end.isoformat()}: {p.field_size} models")
        mine = p.candidate
        if mine is None:
            click.echo("  the candidate has no score in the period")
            continue
        b = mine["breakdown"]
        click.echo(f"  rank {mine['rank']} (by score {b.get('rank_by_score')}), score {mine['score']}, "
                   f"share {_percent(mine['reward_pct'])} ({mine['reward_pct']:,} frac64)")
        click.echo(f"  cycles {b.get('cycles_in_period')}: scored {b.get('scored')}, failed {b.get('failed')}, "
                   f"absent {b.get('absent')}, rejected {b.get('rejected')}, missed {b.get('missed_cycles')}; "
                   f"coverage {b.get('coverage')}")
        click.echo(f"  rule: {b.get('rule')}")
        if b.get("unpaid_reason"):
            click.echo(f"  not paid: {b['unpaid_reason']}")


@click.group()
def disputes() -> None:
    """Disputes of a checkpoint before it is submitted: list, open, resolve (audited, append-only)."""


def _cycle_range(text: str) -> tuple[datetime, datetime]:
    first_text, _, last_text = text.partition("..")
    try:
        first = datetime.fromisoformat(first_text)
        last = datetime.fromisoformat(last_text) if last_text else first
    except ValueError:
        raise click.BadParameter(f"{text!r}: give a cycle time, or FIRST..LAST (ISO-8601 with a UTC offset)",
                                 param_hint="--cycles") from None
    if first.tzinfo is None or last.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no UTC offset: add +00:00", param_hint="--cycles")
    return first.astimezone(timezone.utc), last.astimezone(timezone.utc)


def _dispute_line(d) -> str:
    cycles = ", ".join(r["first"] if r["first"] == r["last"] else f"{r['first']}..{r['last']}" for r in d.cycles)
    state = (f"resolved by {d.resolved_by} at {d.resolved_at.isoformat()}: {d.resolution}" if not d.is_open
             else "OPEN: blocks submission")
    return (f"dispute #{d.id} by {d.claimant}, recorded by {d.opened_by} at {d.opened_at.isoformat()}: {d.what} "
            f"[cycles {cycles}] - {state}")


@disputes.command("list")
@click.argument("slug")
@click.argument("checkpoint_id", type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_disputes(slug: str, checkpoint_id: int, as_json: bool) -> None:
    """Every dispute of the checkpoint, open or resolved."""
    c = load_report_competition(slug)
    if c.store.checkpoint_by_id(checkpoint_id) is None:
        raise click.ClickException(f"no checkpoint {checkpoint_id} in {slug}")
    rows = c.store.disputes.disputes(checkpoint_id)
    if as_json:
        click.echo(_json([vars(d) for d in rows]))
        return
    if not rows:
        click.echo(f"checkpoint {checkpoint_id}: no dispute")
    for d in rows:
        click.echo(_dispute_line(d))


@disputes.command("open")
@click.argument("slug")
@click.argument("checkpoint_id", type=click.IntRange(1))
@click.option("--claimant", required=True, help="who disputes (a participant, a model)")
@click.option("--what", required=True, help="what is disputed")
@click.option("--cycles", "cycle_ranges", required=True, multiple=True, metavar="FIRST[..LAST]",
              help="disputed cycles, inside the checkpoint's period (repeat for several ranges)")
@click.option("--actor", help="who records it (default: the OS user)")
@click.option("--note")
def open_dispute(slug: str, checkpoint_id: int, claimant: str, what: str, cycle_ranges: tuple[str, ...],
                 actor: str | None, note: str | None) -> None:
    """Record a dispute of a PENDING checkpoint: it cannot be SUBMITTED until the dispute is resolved."""
    from crunch_assets import payouts

    c = load_report_competition(slug)
    try:
        dispute = payouts.open_dispute(c.spec, c.store, checkpoint_id, claimant=claimant, what=what,
                                       cycles=[_cycle_range(text) for text in cycle_ranges], actor=_actor(actor),
                                       note=note)
    except (payouts.InvalidRequest, payouts.DisputeRefused) as error:
        raise click.ClickException(str(error)) from error
    click.echo(_dispute_line(dispute))


@disputes.command("resolve")
@click.argument("slug")
@click.argument("checkpoint_id", type=click.IntRange(1))
@click.argument("dispute_id", type=click.IntRange(1))
@click.option("--resolution", required=True, help="how it was resolved (kept in the audit)")
@click.option("--actor", help="who resolves it (default: the OS user)")
def resolve_dispute(slug: str, checkpoint_id: int, dispute_id: int, resolution: str, actor: str | None) -> None:
    """Record how a dispute of a PENDING checkpoint was resolved (the block on submission is lifted)."""
    from crunch_assets import payouts

    c = load_report_competition(slug)
    try:
        dispute = payouts.resolve_dispute(c.spec, c.store, checkpoint_id, dispute_id, resolution=resolution,
                                          actor=_actor(actor))
    except (payouts.InvalidRequest, payouts.DisputeRefused) as error:
        raise click.ClickException(str(error)) from error
    click.echo(_dispute_line(dispute))

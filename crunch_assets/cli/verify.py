"""`crunch-dagster verify <slug>`: against a running deployment, wait until the competition's store
holds scored predictions and a leaderboard with entries (the reference's `make verify-e2e`)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import click
from resources import clock
from resources.store.lifecycles import PredictionReportStatus


@click.command()
@click.argument("slug")
@click.option("--timeout-seconds", default=300.0, show_default=True, type=click.FloatRange(min=0),
              help="Give up (exit 1) after this long.")
@click.option("--poll-seconds", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Time between two looks at the store.")
@click.option("--min-scored", default=1, show_default=True, type=click.IntRange(min=1),
              help="Scored predictions needed.")
@click.option("--since", "since_text", metavar="ISO_TIME",
              help="Count only cycles at or after this instant (default: the competition's start).")
def verify(slug: str, timeout_seconds: float, poll_seconds: float, min_scored: int, since_text: str | None) -> None:
    """Wait until competition SLUG has at least --min-scored scored predictions and a leaderboard
    with entries in its store; exit 0 with a verdict, or exit 1 at the timeout saying what is
    still missing. Reads the store only ($CRUNCH_DATABASE_URL or the embedded server)."""
    from crunch_assets.code_locations import load_competition
    from resources.store.database import CrunchDatabase

    _, spec = load_competition(slug)
    since = spec.start
    if since_text:
        try:
            since = datetime.fromisoformat(since_text)
        except ValueError:
            raise click.BadParameter(f"{since_text!r} is not an ISO-8601 instant", param_hint="--since") from None
        if since.tzinfo is None:
            raise click.BadParameter(f"{since_text!r} has no UTC offset: add +00:00", param_hint="--since")
    store = CrunchDatabase(role="api").competition(slug)
    deadline = time.monotonic() + timeout_seconds
    last_state = None
    while True:
        until = clock.now() + timedelta(days=1)
        statuses = store.prediction_statuses(since, until)
        scored = statuses.get(PredictionReportStatus.SCORED, 0)
        board = store.leaderboard()
        entries = len(board[1]) if board else 0
        state = (scored, entries, tuple(sorted(statuses.items())))
        if state != last_state:
            summary = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())) or "no predictions"
            click.echo(f"{slug}: {summary}; leaderboard: " + (f"{entries} entries as of {board[0].isoformat()}" if board else "none"))
            last_state = state
        if scored >= min_scored and entries > 0:
            click.echo(f"verified: {slug} has {scored} scored predictions and a leaderboard of {entries} models")
            return
        if time.monotonic() >= deadline:
            missing = []
            if scored < min_scored:
                missing.append(f"{scored} of {min_scored} scored predictions")
            if entries == 0:
                missing.append("no leaderboard entries")
            click.echo(f"NOT verified after {timeout_seconds:g} s: {'; '.join(missing)} "
                       "(is the deployment running with its sensors on? see the Dagster UI's runs and sensor ticks)", err=True)
            raise SystemExit(1)
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))

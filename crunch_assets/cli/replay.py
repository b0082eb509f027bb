"""`crunch-dagster replay <slug> --from T --to T`: the whole chain over a past range, in this process,
exactly as a backfill of the same partitions (crunch_assets.replay), with a progress bar and a summary."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import click
from resources import clock


def parse_hour(option: str, value: str) -> datetime:
    """An ISO-8601 instant with its UTC offset, on an hour boundary."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 instant like 2026-11-02T00:00:00+00:00", param_hint=option) from None
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no UTC offset: add +00:00", param_hint=option)
    parsed = parsed.astimezone(timezone.utc)
    if parsed != parsed.replace(minute=0, second=0, microsecond=0):
        raise click.BadParameter(f"{value!r} is not on an hour boundary (partitions are hourly)", param_hint=option)
    return parsed


@click.command()
@click.argument("slug")
@click.option("--from", "start_text", required=True, metavar="ISO_TIME", help="First hour replayed (UTC offset required, on the hour).")
@click.option("--to", "end_text", required=True, metavar="ISO_TIME", help="End of the range, exclusive (on the hour).")
@click.option("--days-per-run", default=1, show_default=True, type=click.IntRange(1, 31),
              help="Hours of cycles materialized per run, in days.")
def replay(slug: str, start_text: str, end_text: str, days_per_run: int) -> None:
    """Replay [--from, --to) of competition SLUG through feed, predictions, scores, snapshots,
    leaderboards and every checkpoint period closed inside the range: the same assets and
    partitions as a backfill launched from the UI, so the same numbers. Runs are recorded in the
    deployment's Dagster instance ($DAGSTER_HOME's when set, otherwise the checkout's
    dagster.yaml: the one the demo's UI reads), so the UI shows the replayed partitions
    materialized. Idempotent: replaying again changes nothing."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from crunch_assets.code_locations import load_competition
    from crunch_assets.replay import deployment_instance
    from crunch_assets.replay import replay as replay_range
    from resources.store.database import CrunchDatabase

    start, end = parse_hour("--from", start_text), parse_hour("--to", end_text)
    if end <= start:
        raise click.BadParameter(f"{end_text} is not after --from {start_text}", param_hint="--to")
    defs, spec = load_competition(slug)
    if start < spec.start:
        raise click.ClickException(
            f"--from {start.isoformat()} is before {slug}'s first partition {spec.start.isoformat()} "
            f"(move the start with CRUNCH_{slug.upper()}_START)"
        )
    if end > clock.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1):
        raise click.ClickException(f"--to {end.isoformat()} is in the future: only hours that have begun can be replayed")

    console = Console(stderr=True)
    instance = deployment_instance()
    with instance, Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                label = "cycles (feed, predictions, scores)" if stage == "cycles" else stage
                tasks[stage] = progress.add_task(label, total=max(total, 1))
            progress.update(tasks[stage], completed=done if total else 1, total=max(total, 1))

        try:
            timings = replay_range(defs, spec, start, end, instance=instance, days_per_run=days_per_run, progress=report,
                                   quiet=True)
        except Exception as error:  # a failed run: say which, exit 1
            raise click.ClickException(f"replay failed: {type(error).__name__}: {error}") from error

    store = CrunchDatabase().competition(slug)
    statuses = store.prediction_statuses(start, end)
    out = Console(soft_wrap=True)
    out.print(f"replayed {slug} {start.isoformat()} .. {end.isoformat()}: "
              f"{len(spec.cycle_times(start, end))} cycles, {sum(statuses.values())} predictions "
              + ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())))
    steps = Table("step", "seconds", title=None)
    for step, seconds in timings.seconds_by_step.items():
        steps.add_row(step, f"{seconds:.1f}")
    out.print(steps)
    last_day_end = (end - timedelta(microseconds=1)).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    board = store.leaderboard(last_day_end)  # the replay's last daily leaderboard, not a newer live one
    if board is not None:
        as_of, entries, _ = board
        table = Table("rank", "model", spec.ranking_key, title=f"leaderboard as of {as_of.isoformat()}")
        for entry in entries[:10]:
            value = entry.get(spec.ranking_key)
            table.add_row(str(entry.get("rank")), str(entry.get("model_id")), "-" if value is None else f"{value:.6f}")
        out.print(table)
    checkpoints = [c for c in store.checkpoints() if start <= c.period_start and c.period_end <= end]
    for checkpoint in checkpoints:
        paid = sum(r["reward_pct"] for r in checkpoint.entries.get("ranking", []))
        out.print(f"checkpoint #{checkpoint.id} {checkpoint.period_start.isoformat()} .. {checkpoint.period_end.isoformat()} "
                  f"{checkpoint.status}: {len(checkpoint.entries.get('ranking', []))} models, {paid:,} frac64 paid")
    if not checkpoints:
        out.print(f"no checkpoint period ({spec.checkpoint_interval_seconds} s) closes inside the range")


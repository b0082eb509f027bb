"""`crunch-dagster migrate`: upgrade the competition store's schema as the migrations' role."""

from __future__ import annotations

import click


@click.command()
def migrate() -> None:
    """Migrate the crunch schema to this code's head, as the owner role ($CRUNCH_DATABASE_URL, else
    the embedded server's). With an external server, run it (once per release) before the parts
    that connect as the engine, api or dagster roles: they may not migrate."""
    from resources.store.database import engine_for
    from resources.store.migrations import current_revision, head_revision

    engine = engine_for(role="owner")
    with engine.connect() as connection:
        revision = current_revision(connection)
    click.echo(f"the crunch schema is at {revision} (head {head_revision()})")

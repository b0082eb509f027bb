"""`crunch-dagster api [--host --port --slug ... | --workspace FILE]`: the report API and the participant page (uvicorn)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--slug", "slugs", multiple=True, default=("btc_updown",), show_default=True,
              help="a competition to serve (repeat for several; the first is the default of /reports and /)")
@click.option("--workspace", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="serve the competitions of this workspace.yaml, with the specs its code locations run "
                   "(what `serve --workspace` passes); instead of --slug")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def api(host: str, port: int, slugs: tuple[str, ...], workspace: Path | None, log_level: str) -> None:
    """Serve the report API (OpenAPI at /docs) and the participant page (/). Mutations need
    CRUNCH_API_TOKEN (unset: disabled); the audit names CRUNCH_API_ACTOR (default "api").
    SIGTERM or SIGINT stops it cleanly (the embedded PostgreSQL with it, when it was its last user)."""
    from crunch_assets.api import create_app, load_report_competition
    from crunch_assets.api.app import run_server
    from crunch_assets.api.competitions import report_competition
    from crunch_assets.cli.common import exit_cleanly_on_sigterm, load_workspace_competitions

    if workspace is not None:
        competitions = [report_competition(defs, spec) for defs, spec in load_workspace_competitions(workspace)]
    else:
        competitions = [load_report_competition(slug) for slug in slugs]
    app = create_app(competitions)
    with exit_cleanly_on_sigterm():
        run_server(app, host, port, log_level)

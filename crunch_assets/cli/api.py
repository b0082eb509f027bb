"""`crunch-dagster api [--host --port --slug ...]`: the report API and the participant page (uvicorn)."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--slug", "slugs", multiple=True, default=("btc_updown",), show_default=True,
              help="a competition to serve (repeat for several; the first is the default of /reports and /)")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def api(host: str, port: int, slugs: tuple[str, ...], log_level: str) -> None:
    """Serve the report API (OpenAPI at /docs) and the participant page (/). Mutations need
    CRUNCH_API_TOKEN (unset: disabled); the audit names CRUNCH_API_ACTOR (default "api")."""
    from crunch_assets.api import create_app, load_report_competition
    from crunch_assets.api.app import run_server

    app = create_app([load_report_competition(slug) for slug in slugs])
    run_server(app, host, port, log_level)

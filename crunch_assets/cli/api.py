"""`crunch-dagster api [--host --port --slug ... --workspace]`: the report API and the participant
page (uvicorn), for every competition of the workspace unless --slug names some."""

from __future__ import annotations

from pathlib import Path

import click

from crunch_assets.api.server import ServerLimits
from resources.database_url import PROJECT_ROOT

DEFAULTS = ServerLimits()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--slug", "slugs", multiple=True,
              help="a competition to serve (repeat for several; the first is the default of /reports and /); "
                   "default: every competition of the workspace")
@click.option("--workspace", type=click.Path(dir_okay=False, path_type=Path), default=PROJECT_ROOT / "workspace.yaml",
              show_default="the checkout's workspace.yaml",
              help="whose competitions to serve when no --slug is given, with the specs its code locations run "
                   "(what `serve --workspace` passes)")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--max-connections", type=click.IntRange(min=1), default=DEFAULTS.max_connections, show_default=True,
              help="open connections at most; one more is answered 503 and closed at once")
@click.option("--max-connections-per-client", type=click.IntRange(min=0), default=DEFAULTS.max_connections_per_client,
              show_default=True, help="open connections from one address at most; 0: no limit (behind a proxy, "
                                      "which limits each client itself)")
@click.option("--request-timeout-seconds", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULTS.request_timeout_seconds, show_default=True,
              help="a request (line, headers, body) must arrive within this time of the server waiting for it, "
                   "or it gets 408 and the connection is closed")
@click.option("--keep-alive-seconds", type=click.IntRange(min=1), default=DEFAULTS.keep_alive_seconds, show_default=True,
              help="an idle connection is closed after this long")
def api(host: str, port: int, slugs: tuple[str, ...], workspace: Path, log_level: str, max_connections: int,
        max_connections_per_client: int, request_timeout_seconds: float, keep_alive_seconds: int) -> None:
    """Serve the report API (OpenAPI at /docs) and the participant page (/). Mutations need
    CRUNCH_API_TOKEN (unset: disabled); the audit names CRUNCH_API_ACTOR (default "api").
    SIGTERM or SIGINT stops it cleanly (the embedded PostgreSQL with it, when it was its last user)."""
    from crunch_assets.api import create_app, load_report_competition
    from crunch_assets.api.competitions import WorkspaceError, report_competition
    from crunch_assets.api.server import run_server
    from crunch_assets.cli.common import exit_cleanly_on_sigterm
    from crunch_assets.code_locations import load_workspace_competitions
    from crunch_assets.settings import SettingsError
    from resources.database_url import DatabaseConfigError, configured_role_url, uses_embedded_server

    if not uses_embedded_server():
        # A wrong configuration is refused here, by name; the database itself is reached lazily
        # (a server not up yet is /health's 503, not a failed start).
        try:
            configured_role_url("api")
        except DatabaseConfigError as error:
            raise click.ClickException(str(error)) from None
    limits = ServerLimits(max_connections=max_connections,
                          max_connections_per_client=max_connections_per_client or None,
                          request_timeout_seconds=request_timeout_seconds, keep_alive_seconds=keep_alive_seconds)
    try:
        if slugs:
            competitions = [load_report_competition(slug) for slug in slugs]
        else:
            competitions = [report_competition(defs, spec) for defs, spec in load_workspace_competitions(workspace)]
        app = create_app(competitions)
    except (WorkspaceError, SettingsError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    with exit_cleanly_on_sigterm():
        run_server(app, host, port, log_level, limits)

"""The `crunch-dagster` command line (click): one group, each family of commands in its own module.

Exit codes scripts can rely on: 0 success, 1 a check or verification failed (the output says
what), 2 a usage error (click's own).

Every command but `serve` and `db` (the production supervisor's) first reads the settings the demo
runs with from the data directory, when the demo wrote them there (crunch_assets/demo_settings.py):
a second shell then sees the competitions the running demo runs.
"""

from __future__ import annotations

import click

from crunch_assets.cli.api import api
from crunch_assets.cli.audit import audit
from crunch_assets.cli.checkpoints import checkpoints
from crunch_assets.cli.migrate import migrate
from crunch_assets.cli.replay import replay
from crunch_assets.cli.rules import disputes, rules, shadow, whatif
from crunch_assets.cli.scaffold import doctor, init
from crunch_assets.cli.serve import db, serve
from crunch_assets.cli.verify import verify


# The supervised deployment never takes the demo's settings (its own environment says what it runs).
WITHOUT_DEMO_SETTINGS = ("serve", "db")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crunch-dagster")
@click.pass_context
def main(ctx: click.Context) -> None:
    """crunch-dagster: run, audit and scaffold prediction competitions on Dagster."""
    if ctx.invoked_subcommand in WITHOUT_DEMO_SETTINGS or ctx.resilient_parsing:
        return
    from crunch_assets.demo_settings import DemoSettingsError, load_demo_settings

    try:
        load_demo_settings()
    except DemoSettingsError as error:
        raise click.ClickException(str(error)) from None


main.add_command(audit)
main.add_command(init)
main.add_command(doctor)
main.add_command(replay)
main.add_command(verify)
main.add_command(checkpoints)
main.add_command(api)
main.add_command(serve)
main.add_command(db)
main.add_command(migrate)
main.add_command(rules)
main.add_command(whatif)
main.add_command(shadow)
main.add_command(disputes)

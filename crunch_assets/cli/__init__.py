"""The `crunch-dagster` command line (click): one group, each family of commands in its own module.

Exit codes scripts can rely on: 0 success, 1 a check or verification failed (the output says
what), 2 a usage error (click's own).
"""

from __future__ import annotations

import click

from crunch_assets.cli.api import api
from crunch_assets.cli.audit import audit
from crunch_assets.cli.checkpoints import checkpoints
from crunch_assets.cli.migrate import migrate
from crunch_assets.cli.replay import replay
from crunch_assets.cli.scaffold import doctor, init
from crunch_assets.cli.serve import db, serve
from crunch_assets.cli.verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crunch-dagster")
def main() -> None:
    """crunch-dagster: run, audit and scaffold prediction competitions on Dagster."""


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

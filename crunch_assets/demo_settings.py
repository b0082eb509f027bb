"""The settings ./scripts/demo runs its competitions with, for the commands of a second shell.

The demo sets each competition's start, checkpoint period and emission accounts in its own
environment (scripts/demo_launcher.py). A `crunch-dagster checkpoints submit` typed in another
terminal would otherwise load the competition with none of them, and the emission safety gate
would rightly refuse checkpoints built for the demo's accounts. So the demo writes what it runs
with to `<data dir>/demo.env` (shell syntax: `set -a; . .crunch/demo.env; set +a` gives it to
any other tool), and the `crunch-dagster` command line reads it for the same data directory.

What it cannot do: override the environment (a variable set in the shell, the competition's own
or the shared `CRUNCH_<NAME>`, always wins), reach another database (only read when the embedded
server of that data directory is used), or set anything but the names below (any other line is
refused by name). `crunch-dagster serve`, the production supervisor, never reads it.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Mapping, MutableMapping


class DemoSettingsError(ValueError):
    """The demo's settings file has a line that is not one of its settings; the message names it."""

DEMO_SETTINGS_FILE = "demo.env"
# What defines the demo's partitions and checkpoints, per competition: CRUNCH_<SLUG>_<NAME>.
DEMO_SETTING_NAMES = ("START", "CHECKPOINT_INTERVAL_SECONDS", "CRUNCH_PUBKEY", "COMPUTE_PROVIDER_PUBKEY",
                      "DATA_PROVIDER_PUBKEY", "NETWORK")
_VARIABLE = re.compile(r"CRUNCH_([A-Z0-9_]+?)_(" + "|".join(DEMO_SETTING_NAMES) + r")")


def demo_settings_path(data_dir: Path) -> Path:
    return Path(data_dir) / DEMO_SETTINGS_FILE


def write_demo_settings(data_dir: Path, slugs: list[str], environ: Mapping[str, str]) -> Path:
    """Write the settings each competition of `slugs` runs with (the competition's own variable
    as `environ` has it) to <data dir>/demo.env, replacing the file."""
    lines = ["# Written by ./scripts/demo at each start: the settings its competitions run with.",
             "# `crunch-dagster` reads it for this data directory; a variable set in the shell wins.",
             "# Any other tool: set -a; . <this file>; set +a"]
    for slug in slugs:
        for name in DEMO_SETTING_NAMES:
            variable = f"CRUNCH_{slug.upper()}_{name}"
            if environ.get(variable):
                lines.append(f"{variable}={shlex.quote(environ[variable])}")
    path = demo_settings_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".env.partial")
    partial.write_text("\n".join(lines) + "\n")
    os.replace(partial, path)
    return path


def read_demo_settings(path: Path) -> dict[str, str]:
    """The file's variables; a line that is not `CRUNCH_<SLUG>_<NAME>=value` with one of the
    demo's names is refused with its line number."""
    settings = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        variable, sep, value = line.partition("=")
        try:
            words = shlex.split(value)
        except ValueError as error:
            raise DemoSettingsError(f"{path}:{number}: {error}") from None
        if not sep or not _VARIABLE.fullmatch(variable) or len(words) != 1:
            raise DemoSettingsError(f"{path}:{number}: expected CRUNCH_<SLUG>_<NAME>=value with NAME one of "
                                f"{', '.join(DEMO_SETTING_NAMES)}; got {line[:80]!r}")
        settings[variable] = words[0]
    return settings


def load_demo_settings(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put the demo's settings of this data directory into `environ` (os.environ), each unless the
    shell sets it (the competition's variable or the shared one); returns what was put. Nothing
    when an external database is configured or the demo never ran here."""
    from resources.database_url import DATA_DIR_ENV, PROJECT_ROOT, uses_embedded_server

    environ = os.environ if environ is None else environ
    if not uses_embedded_server(environ):
        return {}
    configured = environ.get(DATA_DIR_ENV)  # as default_data_dir() reads it, from `environ`
    data_dir = Path(configured).expanduser().resolve() if configured else PROJECT_ROOT / ".crunch"
    path = demo_settings_path(data_dir)
    if not path.is_file():
        return {}
    loaded = {}
    for variable, value in read_demo_settings(path).items():
        shared = "CRUNCH_" + _VARIABLE.fullmatch(variable).group(2)
        if variable in environ or shared in environ:
            continue
        environ[variable] = loaded[variable] = value
    return loaded

"""What the commands share: loading a competition's code location by slug, or every competition
of a workspace file (the code locations a deployment serves)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import signal
import sys
from pathlib import Path

import click
import dagster as dg


def load_competition(slug: str):
    """(definitions, spec) of competitions/<slug>/definitions.py."""
    try:
        module = importlib.import_module(f"competitions.{slug}.definitions")
    except ModuleNotFoundError as error:
        raise click.ClickException(f"no competition {slug!r}: cannot import competitions.{slug}.definitions ({error})") from None
    defs = getattr(module, "defs", None)
    spec = getattr(module, "SPEC", None)
    if not isinstance(defs, dg.Definitions) or spec is None:
        raise click.ClickException(f"competitions.{slug}.definitions must expose `defs` (Definitions) and `SPEC`")
    return defs, spec


def load_workspace_competitions(workspace: Path) -> list[tuple[dg.Definitions, object]]:
    """(definitions, spec) of each code location of a workspace.yaml, loaded as Dagster loads it
    (python_module or python_file): the spec a deployment of that workspace actually runs, which
    may differ from competitions/<slug>/definitions.py (a faster cycle, another start). A location
    without `defs` and `SPEC` is not a competition and is skipped, with a note."""
    from crunch_assets.serve import ServeConfigError, read_code_locations
    from crunch_assets.spec import CompetitionSpec

    try:
        locations = read_code_locations(workspace)
    except ServeConfigError as error:
        raise click.ClickException(str(error)) from None
    found = []
    for location in locations:
        if location.working_directory and location.working_directory not in sys.path:
            sys.path.insert(0, location.working_directory)
        try:
            if location.module:
                module = importlib.import_module(location.module)
            else:
                module_spec = importlib.util.spec_from_file_location(f"crunch_workspace_{location.name}", location.python_file)
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[module_spec.name] = module
                module_spec.loader.exec_module(module)
        except Exception as error:  # noqa: BLE001 - whatever breaks the load is named with its location
            raise click.ClickException(f"{workspace}: code location {location.name!r} does not load: "
                                       f"{type(error).__name__}: {error}") from None
        defs, spec = getattr(module, "defs", None), getattr(module, "SPEC", None)
        if not isinstance(defs, dg.Definitions) or not isinstance(spec, CompetitionSpec):
            click.echo(f"{workspace}: code location {location.name!r} has no `defs` and `SPEC`: not a competition, "
                       "not served", err=True)
            continue
        found.append((defs, spec))
    if not found:
        raise click.ClickException(f"{workspace}: no code location is a competition (`defs` and `SPEC`)")
    slugs = [spec.slug for _, spec in found]
    if len(set(slugs)) != len(slugs):
        raise click.ClickException(f"{workspace}: two code locations serve the same competition: {slugs}")
    return found


@contextlib.contextmanager
def exit_cleanly_on_sigterm():
    """uvicorn handles SIGTERM by shutting down, then raises the signal again with the handler it
    found: Python's default one would end the process without its exit handlers, and the embedded
    PostgreSQL (stopped by its last user's exit handler) would keep running. Here SIGTERM ends
    the process like Ctrl-C does (SystemExit 0), exit handlers included."""

    def exit_now(_signum, _frame):
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    except KeyboardInterrupt:  # uvicorn raises SIGINT again after its shutdown: a clean stop too
        raise SystemExit(0) from None
    finally:
        signal.signal(signal.SIGTERM, previous)

"""Code locations: which a workspace.yaml lists, and loading a competition's (its `defs` and `SPEC`)
by slug or from a workspace, as Dagster loads them. The CLI, the report API and the supervised
deployment (crunch_assets/serve.py) all read them here, so none of them imports another for it.
A location that cannot be read or loaded is refused with a message naming it (click's
ClickException: the commands print it as their error)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import dagster as dg
import yaml


class ServeConfigError(ValueError):
    """The workspace or the options cannot be served; the message says what."""


@dataclass(frozen=True)
class CodeLocation:
    name: str
    module: str | None = None
    python_file: str | None = None
    working_directory: str | None = None

    def target_args(self) -> list[str]:
        if self.module:
            return ["-m", self.module]
        return ["-f", str(self.python_file)]


def read_code_locations(workspace: Path) -> list[CodeLocation]:
    """The code locations of a workspace.yaml of python_module / python_file entries."""
    try:
        document = yaml.safe_load(workspace.read_text())
    except FileNotFoundError:
        raise ServeConfigError(f"no workspace file at {workspace}") from None
    entries = (document or {}).get("load_from") or []
    locations = []
    for entry in entries:
        if "python_module" in entry:
            spec = entry["python_module"]
            spec = {"module_name": spec} if isinstance(spec, str) else spec
            module = spec["module_name"]
            name = spec.get("location_name") or module
            locations.append(CodeLocation(name, module=module, working_directory=spec.get("working_directory")))
        elif "python_file" in entry:
            spec = entry["python_file"]
            spec = {"relative_path": spec} if isinstance(spec, str) else spec
            path = (workspace.parent / spec["relative_path"]).resolve()
            name = spec.get("location_name") or path.stem
            locations.append(CodeLocation(name, python_file=str(path), working_directory=spec.get("working_directory")))
        else:
            raise ServeConfigError(f"{workspace}: only python_module and python_file entries can be served, got {sorted(entry)}")
    if not locations:
        raise ServeConfigError(f"{workspace} lists no code location")
    names = [location.name for location in locations]
    if len(set(names)) != len(names):
        raise ServeConfigError(f"{workspace}: code location names must be unique, got {names}")
    return locations


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

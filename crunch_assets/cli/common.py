"""What the commands share: loading a competition's code location by slug."""

from __future__ import annotations

import importlib

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

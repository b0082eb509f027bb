"""Configuration that is given and wrong is refused by name, never ignored or replaced by a default.

One helper for every declaration: the spec's dataclasses (crunch_assets.spec.Declared), the rules
resources (crunch_assets.rules) and the spec file's keys (crunch_assets.scaffold.config). A message
names the unknown field, where it was given, and the nearest valid name (or, for a field that has
moved, where it lives now; or else every valid name)."""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping

# A close enough spelling is a typo (difflib's ratio: "emision_builder" -> "emission_builder" 0.97).
NEAREST_CUTOFF = 0.6


def nearest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name closest to `name`, if one is close enough to be what was meant."""
    close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=NEAREST_CUTOFF)
    return close[0] if close else None


def unknown_field_message(owner: str, name: str, valid: Iterable[str], moved: Mapping[str, str] | None = None) -> str:
    """`<owner>: unknown field 'x'; did you mean 'y'?` (or where it moved, or the valid names)."""
    valid = sorted(valid)
    if moved and name in moved:
        hint = f"it is no longer a field here: {moved[name]}"
    elif (close := nearest(name, valid)) is not None:
        hint = f"did you mean {close!r}?"
    else:
        hint = f"valid fields: {', '.join(valid)}"
    return f"{owner}: unknown field {name!r}; {hint}"


def unknown_field_problems(owner: str, given: Iterable[str], valid: Iterable[str],
                           moved: Mapping[str, str] | None = None) -> list[str]:
    """One message per given name that is not valid, in the order given."""
    valid = set(valid)
    return [unknown_field_message(owner, name, valid, moved) for name in given if name not in valid]


def refuse_unknown_fields(owner: str, given: Iterable[str], valid: Iterable[str], error: type[Exception] = ValueError,
                          moved: Mapping[str, str] | None = None) -> None:
    """Raise `error` naming every unknown field at once (a load reports them all, not the first)."""
    problems = unknown_field_problems(owner, given, valid, moved)
    if problems:
        raise error("; ".join(problems))

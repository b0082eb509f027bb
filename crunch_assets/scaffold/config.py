"""What `crunch-dagster init` generates from: a pack (baseline, realtime, tournament) with a spec
file merged over it. Every problem is reported with the key it is about (and the closest known key
for a typo), never silently dropped.

Merge rule: every top-level key of the spec file replaces the pack's value, except `callables`,
which is merged slot by slot.

One schema: the keys of a spec file that are fields of `CompetitionSpec` (scopes, policies,
windows, payout, gate, ... every field but `slug`) are validated by `CompetitionSpec.model_validate`
itself, with its declarations' defaults and checks. This module declares only what is not the spec:
the header (`spec_version`, `slug`, `pack`), the generated feed (`feed`), the callables' wiring
(`callables`), and the values every pack supplies where the spec has no default of its own or the
scaffold's logic needs another one (PACK_DEFAULTS; the start, when none is given, is midnight UTC of
the day `init` runs).
"""

from __future__ import annotations

import json
import keyword
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from crunch_assets.spec import (
    SLUG_PATTERN,
    CompetitionSpec,
    EmissionPolicy,
    SpecError,
    cadence_problems,
)
from crunch_assets.strict import nearest

SPEC_VERSION = "1"
PACKS = ("baseline", "realtime", "tournament")
DEFAULT_PACK = "baseline"
HEADER_KEYS = ("spec_version", "slug", "pack")

IMPORT_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"

ImportPath = Annotated[str, StringConstraints(pattern=IMPORT_PATH_PATTERN)]

# Values, not rules: what every pack gives where CompetitionSpec has no default (failure_policy) or
# where the generated logic needs another one (its scores lie in [-1, 1]: -1 is the worst, so failing
# never beats answering). A pack or a spec file replaces each; CompetitionSpec checks the result.
CONTRIBUTION_PRESET_FLOOR_PCT = EmissionPolicy.contribution().floor_pct
PACK_DEFAULTS: dict[str, Any] = {
    "failure_policy": {"kind": "constant", "value": -1.0},
    "score_name": "position x direction, from -1 to 1",
}


class ScaffoldError(ValueError):
    """A spec, pack or slug that cannot be generated; `problems` lists every one, each naming the key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeedConfig(_Strict):
    """The generated competition's feed records (its FEED_DEFAULTS; not part of the spec)."""

    kind: Literal["candle", "tick"] = "candle"
    granularity_seconds: int = Field(default=60, ge=0)

    @model_validator(mode="after")
    def _granularity_fits_kind(self) -> FeedConfig:
        if self.kind == "candle" and self.granularity_seconds <= 0:
            raise ValueError("a candle feed needs granularity_seconds > 0")
        if self.kind == "tick" and self.granularity_seconds != 0:
            raise ValueError("a tick feed has granularity_seconds 0")
        return self


class CallablesConfig(_Strict):
    """Import paths `package.module:attribute`; a slot left out uses the generated default."""

    model_base_class: ImportPath | None = None
    input_builder: ImportPath | None = None
    call_builder: ImportPath | None = None
    output_validator: ImportPath | None = None
    ground_truth_resolver: ImportPath | None = None
    scoring_function: ImportPath | None = None
    snapshot_aggregator: ImportPath | None = None
    cross_sectional: ImportPath | None = None
    emission_builder: ImportPath | None = None
    input_schema: ImportPath | None = None
    output_schema: ImportPath | None = None
    score_schema: ImportPath | None = None


class ScaffoldConfig(_Strict):
    """The keys of a spec file that are not the spec: what `init` generates around it."""

    feed: FeedConfig = FeedConfig()
    callables: CallablesConfig = CallablesConfig()


class SpecHeader(BaseModel):
    """The keys of a spec file that name it (not part of the competition itself)."""

    model_config = ConfigDict(extra="ignore")

    spec_version: Literal["1"]
    slug: str | None = None
    pack: Literal["baseline", "realtime", "tournament"] | None = None


def spec_keys() -> set[str]:
    """The keys of a spec file that are CompetitionSpec's fields (the slug is the header's)."""
    return {f.name for f in fields(CompetitionSpec)} - {"slug"}


def known_top_keys() -> set[str]:
    return set(HEADER_KEYS) | set(ScaffoldConfig.model_fields) | spec_keys()


def walk_location(loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """An error's location as the spec file spells it (`feed.kind`) and the model the last key belongs to."""
    model: type[BaseModel] | None = ScaffoldConfig
    owner: type[BaseModel] | None = ScaffoldConfig
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        owner = model
        text += ("." if text else "") + str(part)
        annotation = model.model_fields[str(part)].annotation if model is not None and str(part) in model.model_fields else None
        held = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = held[0] if held else None
    return text or "(root)", owner


def known_keys(model: type[BaseModel] | None) -> set[str]:
    if model is None:
        return set()
    return known_top_keys() if model is ScaffoldConfig else set(model.model_fields)


def unknown_key(source: str, where: str, key: str, known: set[str]) -> str:
    close = nearest(key, sorted(known))
    hint = f"; did you mean {close!r}?" if close else f"; known keys here: {', '.join(sorted(known))}"
    return f"{source}: {where}: unknown key{hint}"


def describe_errors(error: ValidationError, source: str) -> list[str]:
    """One line per problem: `<source>: <key>: <what is wrong>[; did you mean <key>?]`."""
    problems = []
    for item in error.errors():
        loc = tuple(item.get("loc", ()))
        where, owner = walk_location(loc)
        if item["type"] == "extra_forbidden":
            problems.append(unknown_key(source, where, str(loc[-1]), known_keys(owner)))
        elif item["type"] == "missing":
            problems.append(f"{source}: {where}: required key missing")
        else:
            message = item.get("msg", "invalid")
            shown = item.get("input")
            value = "" if isinstance(shown, (dict, list)) else f" (got {shown!r})"
            problems.append(f"{source}: {where}: {message}{value}")
    return problems


def pack_path(pack: str) -> Path:
    return Path(str(resources.files("crunch_assets.scaffold").joinpath("packs", f"{pack}.json")))


def load_pack(pack: str) -> dict:
    if pack not in PACKS:
        raise ScaffoldError([f"--pack {pack!r}: expected one of {', '.join(PACKS)}"])
    return {**PACK_DEFAULTS, **json.loads(pack_path(pack).read_text())}


def read_spec_file(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ScaffoldError([f"{path}: cannot read the spec file: {error.strerror or error}"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ScaffoldError([f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"]) from None
    if not isinstance(data, dict):
        raise ScaffoldError([f"{path}: a spec file is a JSON object ({{\"spec_version\": \"1\", ...}})"])
    return data


def check_slug(slug: str) -> list[str]:
    """Problems with a slug as a name (not whether it is free)."""
    if not SLUG_PATTERN.match(slug):
        suggestion = slug.strip().lower().replace("-", "_").replace(" ", "_")
        hint = f"; did you mean {suggestion!r}?" if SLUG_PATTERN.match(suggestion) and not keyword.iskeyword(suggestion) else ""
        return [
            f"slug {slug!r} must match {SLUG_PATTERN.pattern} (lower snake case: it names Python modules and "
            f"prefixes Dagster asset keys; kebab-case is not converted){hint}"
        ]
    if keyword.iskeyword(slug):
        return [f"slug {slug!r} is a Python keyword and cannot name a module; choose another"]
    return []


@dataclass(frozen=True)
class ResolvedSpec:
    slug: str
    pack: str
    spec: CompetitionSpec  # checked by CompetitionSpec itself; its start: the given one, else `init`'s day
    scaffold: ScaffoldConfig
    # the CompetitionSpec fields the spec file (or pack) gives, as given (the generated config.py
    # writes the ones it does not lay out itself this way)
    spec_fields: dict = field(default_factory=dict)


def midnight_utc(now: datetime | None = None) -> datetime:
    """The start of a spec that gives none: midnight UTC of the day `init` runs."""
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def resolve(slug: str | None, pack: str | None, spec_path: Path | None) -> ResolvedSpec:
    """The competition to generate: the pack (the option, else the spec file's `pack`, else
    baseline) with the spec file merged over it, validated; raises ScaffoldError listing every problem."""
    spec: dict[str, Any] = {}
    source = str(spec_path) if spec_path else "pack"
    header = SpecHeader(spec_version=SPEC_VERSION)
    if spec_path is not None:
        spec = read_spec_file(spec_path)
        try:
            header = SpecHeader.model_validate(spec)
        except ValidationError as error:
            raise ScaffoldError(describe_errors(error, source)) from None
    problems: list[str] = []
    if header.slug is not None and slug is not None and header.slug != slug:
        problems.append(f"{source}: slug: the spec names {header.slug!r} but the command names {slug!r}; make them agree")
    slug = slug or header.slug
    slug_problems: list[str] = []
    if slug is None:
        slug_problems.append("no slug: give it as the argument (crunch-dagster init <slug>) or as \"slug\" in the spec file")
    else:
        slug_problems += check_slug(slug)
    problems += slug_problems
    if header.pack is not None and pack is not None and header.pack != pack:
        problems.append(f"{source}: pack: the spec names {header.pack!r} but --pack is {pack!r}; make them agree")
    pack = pack or header.pack or DEFAULT_PACK
    merged = load_pack(pack)
    body = {key: value for key, value in spec.items() if key not in HEADER_KEYS}
    for key, value in body.items():
        if key == "callables" and isinstance(value, dict) and isinstance(merged.get("callables", {}), dict):
            merged["callables"] = {**merged.get("callables", {}), **value}
        else:
            merged[key] = value
    known = known_top_keys()
    problems += [unknown_key(source, key, key, known) for key in merged if key not in known]
    scaffold = None
    try:
        scaffold = ScaffoldConfig.model_validate({k: v for k, v in merged.items() if k in ScaffoldConfig.model_fields})
    except ValidationError as error:
        problems += describe_errors(error, source)
    spec_fields = {key: merged[key] for key in sorted(set(merged) & spec_keys())}
    emission_given = spec_fields.get("emission")
    if isinstance(emission_given, dict) and emission_given.get("kind") == "contribution" and "floor_pct" not in emission_given:
        # A spec file's contribution emission is the reference's preset (EmissionPolicy.contribution():
        # a 1 % floor), as it was before the spec file was checked by CompetitionSpec itself; the
        # declaration's own default (no floor) would change what a file that left it out pays.
        spec_fields["emission"] = {**emission_given, "floor_pct": CONTRIBUTION_PRESET_FLOOR_PCT}
    competition = None
    try:
        # the rest of the spec is checked even when the slug is wrong (reported above)
        competition = CompetitionSpec.model_validate(
            {"start": midnight_utc(), **spec_fields, "slug": "unnamed" if slug_problems else slug})
    except SpecError as error:
        problems += [f"{source}: {problem.removeprefix('CompetitionSpec: ')}"
                     for problem in getattr(error, "problems", [str(error)])]
    if problems or competition is None or scaffold is None:
        raise ScaffoldError(problems)
    # the generated feed's granularity (a tick feed's interval is only known to its source)
    cadence = cadence_problems(competition, scaffold.feed.kind, scaffold.feed.granularity_seconds)
    if cadence:
        raise ScaffoldError([f"{source}: {problem.message()}" for problem in cadence])
    return ResolvedSpec(slug, pack, competition, scaffold, spec_fields)


def to_competition_spec(resolved: ResolvedSpec, start: datetime) -> CompetitionSpec:
    """The checked spec with another start (its checks run again: raises SpecError naming the field)."""
    return replace(resolved.spec, start=start)

"""What `crunch-dagster init` generates from: a pack (baseline, realtime, tournament) with a spec
file merged over it, validated by pydantic models that forbid unknown keys, then by the engine's
own `CompetitionSpec` checks. Every problem is reported with the key it is about (and the closest
known key for a typo), never silently dropped.

Merge rule: every top-level key of the spec file replaces the pack's value, except `callables`,
which is merged slot by slot.

One schema: every field of `CompetitionSpec` can be set in a spec file. The keys below that shape
what `init` renders (scopes, policies, windows, ...) are checked here first; every other field of
`CompetitionSpec` (payout, gate, copy_detection, ensembles, metrics, rules_changes, the sensor
intervals, ...) is passed to `CompetitionSpec` as given and checked by it, with the same messages.
"""

from __future__ import annotations

import json
import keyword
import math
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from crunch_assets.spec import (
    DEFAULT_WINDOWS,
    SLUG_PATTERN,
    WEEK_SECONDS,
    CompetitionSpec,
    Eligibility,
    EmissionPolicy,
    FailurePolicy,
    LeaderboardWindow,
    Scope,
    SpecError,
    cadence_problems,
)
from crunch_assets.strict import nearest

SPEC_VERSION = "1"
PACKS = ("baseline", "realtime", "tournament")
DEFAULT_PACK = "baseline"
HEADER_KEYS = ("spec_version", "slug", "pack")

IMPORT_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
NAME_PATTERN = r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$"
SUBJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"

ImportPath = Annotated[str, StringConstraints(pattern=IMPORT_PATH_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Subject = Annotated[str, StringConstraints(pattern=SUBJECT_PATTERN, max_length=64)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class ScaffoldError(ValueError):
    """A spec, pack or slug that cannot be generated; `problems` lists every one, each naming the key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScopeConfig(_Strict):
    name: Name
    subject: Subject
    prediction_interval_seconds: int = Field(ge=1, le=WEEK_SECONDS)
    resolve_horizon_seconds: int = Field(ge=1, le=WEEK_SECONDS)
    step_seconds: int | None = Field(default=None, ge=1)
    weight: FiniteFloat = Field(default=1.0, gt=0)


class FeedConfig(_Strict):
    kind: Literal["candle", "tick"] = "candle"
    granularity_seconds: int = Field(default=60, ge=0)

    @model_validator(mode="after")
    def _granularity_fits_kind(self) -> FeedConfig:
        if self.kind == "candle" and self.granularity_seconds <= 0:
            raise ValueError("a candle feed needs granularity_seconds > 0")
        if self.kind == "tick" and self.granularity_seconds != 0:
            raise ValueError("a tick feed has granularity_seconds 0")
        return self


class ConstantFailure(_Strict):
    kind: Literal["constant"]
    value: FiniteFloat


class RelativeFailure(_Strict):
    kind: Literal["relative"]
    percentile: FiniteFloat = Field(default=100.0, ge=0, le=100)


class EveryCycle(_Strict):
    mode: Literal["every_cycle"]
    min_scored_answers: int = Field(default=1, ge=1)
    require_every_scope: bool = False


class MinimumCoverage(_Strict):
    mode: Literal["min_coverage"]
    min_coverage: FiniteFloat = Field(ge=0, le=1)
    min_scored_answers: int = Field(default=1, ge=1)
    require_every_scope: bool = False


class TieredEmission(_Strict):
    kind: Literal["tiered"]
    tiers_pct: list[tuple[Annotated[int, Field(ge=1)], Annotated[FiniteFloat, Field(ge=0)]]] = Field(
        default=[(1, 35.0), (5, 10.0), (10, 5.0)], min_length=1
    )
    unclaimed: Literal["equal", "pro_rata"] = "equal"


class SoftmaxEmission(_Strict):
    kind: Literal["softmax"]
    temperature: FiniteFloat = Field(gt=0)


class ProportionalEmission(_Strict):
    kind: Literal["proportional"]
    floor_pct: FiniteFloat = Field(default=0.0, ge=0, le=100)


class ContributionEmission(_Strict):
    kind: Literal["contribution"]
    rank_weight: FiniteFloat = Field(default=0.5, ge=0)
    contribution_weight: FiniteFloat = Field(default=0.3, ge=0)
    diversity_weight: FiniteFloat = Field(default=0.2, ge=0)
    floor_pct: FiniteFloat = Field(default=1.0, ge=0, le=100)
    ensemble: str | None = None


class WindowConfig(_Strict):
    name: Name
    seconds: int = Field(ge=3600)


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


FailurePolicyConfig = Annotated[Union[ConstantFailure, RelativeFailure], Field(discriminator="kind")]
EligibilityConfig = Annotated[Union[EveryCycle, MinimumCoverage], Field(discriminator="mode")]
EmissionConfig = Annotated[Union[TieredEmission, SoftmaxEmission, ProportionalEmission, ContributionEmission],
                           Field(discriminator="kind")]


class CompetitionConfig(_Strict):
    """Everything a generated competition is made from (a pack, with a spec file merged over it)."""

    description: str = Field(default="", max_length=500)
    # What a score is, for people: the participant page says it, with its direction.
    score_name: str = Field(default="position x direction, from -1 to 1", max_length=200)
    # The first partition (UTC, on an hour); unset: midnight UTC of the day `init` runs.
    start: AwareDatetime | None = None
    scopes: list[ScopeConfig] = Field(min_length=1)
    extra_subjects: list[Subject] = []
    feed: FeedConfig = FeedConfig()
    # The scaffold's default scores lie in [-1, 1]: -1 is the worst, so failing never beats answering.
    failure_policy: FailurePolicyConfig = ConstantFailure(kind="constant", value=-1.0)
    eligibility: EligibilityConfig = EveryCycle(mode="every_cycle")
    emission: EmissionConfig = TieredEmission(kind="tiered")
    checkpoint_interval_seconds: int = Field(default=WEEK_SECONDS, ge=3600)
    leaderboard_windows: list[WindowConfig] = Field(
        default=[WindowConfig(name=w.name, seconds=w.seconds) for w in DEFAULT_WINDOWS], min_length=1
    )
    ranking_key: str = "score_recent"
    ranking_descending: bool = True
    checkpoint_ranking: str = "period"
    history_seconds: int = Field(default=3600, ge=1)
    max_price_staleness_seconds: int = Field(default=30, ge=1)
    settle_delay_seconds: int = Field(default=0, ge=0)
    void_after_seconds: int = Field(default=3600, ge=1)
    quarantine_after_failures: int = Field(default=5, ge=0)
    quarantine_cooldown_seconds: int = Field(default=600, ge=0)
    feed_retention_days: int = Field(default=90, ge=1)
    public_input_keys: list[str] = []
    callables: CallablesConfig = CallablesConfig()

    @model_validator(mode="after")
    def _unique_scope_names(self) -> CompetitionConfig:
        names = [scope.name for scope in self.scopes]
        if len(set(names)) != len(names):
            raise ValueError(f"scope names must be unique, got {names}")
        return self


class SpecHeader(BaseModel):
    """The keys of a spec file that are not part of the competition itself."""

    model_config = ConfigDict(extra="ignore")

    spec_version: Literal["1"]
    slug: str | None = None
    pack: Literal["baseline", "realtime", "tournament"] | None = None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation can hold (one; several for a tagged union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in _models_in(argument)]


def _tags(model: type[BaseModel]) -> set[Any]:
    """The literal values a model's fields accept (a union variant's tag, e.g. kind "constant")."""
    return {value for field in model.model_fields.values() if get_origin(field.annotation) is Literal
            for value in get_args(field.annotation)}


def walk_location(loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """An error's location as the spec file spells it (`scopes[0].subject`; a union's tag, e.g.
    "constant", is pydantic's and not a key of the file) and the config model the last key belongs
    to, found from the models themselves: a new config model gets its "did you mean" for free."""
    model: type[BaseModel] | None = CompetitionConfig
    owner: type[BaseModel] | None = CompetitionConfig
    variants: list[type[BaseModel]] | None = None
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        if variants is not None:  # the tag that chose the union's variant
            model, variants = next((m for m in variants if part in _tags(m)), None), None
            continue
        owner = model
        text += ("." if text else "") + str(part)
        field = model.model_fields.get(str(part)) if model is not None else None
        models = _models_in(field.annotation) if field is not None else []
        model, variants = (None, models) if len(models) > 1 else (models[0] if models else None, None)
    return text or "(root)", owner


def spec_only_keys() -> set[str]:
    """The CompetitionSpec fields a spec file gives as they are (checked by CompetitionSpec)."""
    return {f.name for f in fields(CompetitionSpec)} - set(CompetitionConfig.model_fields) - {"slug"}


def known_keys(model: type[BaseModel] | None) -> set[str]:
    if model is None:
        return set()
    top = set(HEADER_KEYS) | spec_only_keys() if model is CompetitionConfig else set()
    return set(model.model_fields) | top


def describe_errors(error: ValidationError, source: str) -> list[str]:
    """One line per problem: `<source>: <key>: <what is wrong>[; did you mean <key>?]`."""
    problems = []
    for item in error.errors():
        loc = tuple(item.get("loc", ()))
        where, owner = walk_location(loc)
        if item["type"] == "extra_forbidden":
            known = sorted(known_keys(owner))
            close = nearest(str(loc[-1]), known)
            hint = f"; did you mean {close!r}?" if close else f"; known keys here: {', '.join(known)}"
            problems.append(f"{source}: {where}: unknown key{hint}")
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
    return json.loads(pack_path(pack).read_text())


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
    config: CompetitionConfig
    # the CompetitionSpec fields the spec file (or pack) gives beyond CompetitionConfig's, as given
    spec_fields: dict = field(default_factory=dict)


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
    if slug is None:
        problems.append("no slug: give it as the argument (crunch-dagster init <slug>) or as \"slug\" in the spec file")
        slug = "unnamed"  # the rest of the spec is still checked
    else:
        problems += check_slug(slug)
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
    passed_through = spec_only_keys()
    spec_fields = {key: merged.pop(key) for key in sorted(set(merged) & passed_through)}
    try:
        config = CompetitionConfig.model_validate(merged)
    except ValidationError as error:
        raise ScaffoldError(problems + describe_errors(error, source)) from None
    if problems:
        raise ScaffoldError(problems)
    resolved = ResolvedSpec(slug, pack, config, spec_fields)
    try:
        spec = to_competition_spec(resolved, start=resolved_start(config))
    except SpecError as error:
        raise ScaffoldError([f"{source}: {error}"]) from None
    # the generated feed's granularity (a tick feed's interval is only known to its source)
    cadence = cadence_problems(spec, config.feed.kind, config.feed.granularity_seconds)
    if cadence:
        raise ScaffoldError([f"{source}: {problem.message()}" for problem in cadence])
    return resolved


def resolved_start(config: CompetitionConfig, now: datetime | None = None) -> datetime:
    if config.start is not None:
        return config.start.astimezone(timezone.utc)
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def failure_policy(config: CompetitionConfig) -> FailurePolicy:
    policy = config.failure_policy
    if isinstance(policy, ConstantFailure):
        return FailurePolicy.constant(policy.value)
    return FailurePolicy.relative(policy.percentile)


def eligibility(config: CompetitionConfig) -> Eligibility:
    policy = config.eligibility
    options = {"min_scored_answers": policy.min_scored_answers, "require_every_scope": policy.require_every_scope}
    if isinstance(policy, EveryCycle):
        return Eligibility.every_cycle(**options)
    return Eligibility.minimum_coverage(policy.min_coverage, **options)


def emission(config: CompetitionConfig) -> EmissionPolicy:
    policy = config.emission
    if isinstance(policy, TieredEmission):
        return EmissionPolicy.tiered(tuple((int(rank), float(pct)) for rank, pct in policy.tiers_pct), policy.unclaimed)
    if isinstance(policy, SoftmaxEmission):
        return EmissionPolicy.softmax(policy.temperature)
    if isinstance(policy, ContributionEmission):
        return EmissionPolicy.contribution(policy.rank_weight, policy.contribution_weight, policy.diversity_weight,
                                           policy.floor_pct, policy.ensemble)
    return EmissionPolicy.proportional(policy.floor_pct)


def scopes(config: CompetitionConfig) -> tuple[Scope, ...]:
    return tuple(
        Scope(subject=s.subject, resolve_horizon_seconds=s.resolve_horizon_seconds,
              prediction_interval_seconds=s.prediction_interval_seconds, step_seconds=s.step_seconds,
              weight=s.weight, name=s.name)
        for s in config.scopes
    )


def to_competition_spec(resolved: ResolvedSpec, start: datetime) -> CompetitionSpec:
    """The engine's spec of this config (its checks run here: raises SpecError naming the field)."""
    c = resolved.config
    if not math.isfinite(start.timestamp()):
        raise SpecError("start must be a finite instant")
    return CompetitionSpec(
        slug=resolved.slug, start=start, scopes=scopes(c), failure_policy=failure_policy(c),
        extra_subjects=tuple(c.extra_subjects), checkpoint_interval_seconds=c.checkpoint_interval_seconds,
        leaderboard_windows=tuple(LeaderboardWindow(w.name, w.seconds) for w in c.leaderboard_windows),
        ranking_key=c.ranking_key, ranking_descending=c.ranking_descending, checkpoint_ranking=c.checkpoint_ranking,
        eligibility=eligibility(c), emission=emission(c), history_seconds=c.history_seconds,
        max_price_staleness_seconds=c.max_price_staleness_seconds, settle_delay_seconds=c.settle_delay_seconds,
        quarantine_after_failures=c.quarantine_after_failures, quarantine_cooldown_seconds=c.quarantine_cooldown_seconds,
        void_after_seconds=c.void_after_seconds, feed_retention_days=c.feed_retention_days,
        public_input_keys=tuple(c.public_input_keys), description=c.description,
        score_name=c.score_name, **resolved.spec_fields,
    )

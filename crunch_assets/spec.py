"""What a competition declares: scopes, schedule, windows, and the policies that decide rewards,
checked when the code location loads (an error names the field and what to change).

One schema for every way a spec is given: each declaration below is a pydantic dataclass (frozen,
unknown fields forbidden, whole numbers and booleans strict: `"30"`, `30.5` or `True` for a number of
seconds is refused, never coerced), so a Python definition (`CompetitionSpec(...)`,
`dataclasses.replace(SPEC, ...)`), a spec file (`CompetitionSpec.model_validate(data)`) and
`crunch-dagster doctor` are checked by the same code, and `CompetitionSpec.model_json_schema()` is
the published schema (docs/competition-spec.schema.json). Every problem is a SpecError naming the
field (an unknown one with the nearest valid name)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Sequence, get_args, get_type_hints

from pydantic import BeforeValidator, ConfigDict, Strict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from crunch_assets.strict import nearest, refuse_unknown_fields

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
HOUR_SECONDS = 3600
DAY_SECONDS = 86400
WEEK_SECONDS = 7 * DAY_SECONDS
MAX_HORIZON_SECONDS = WEEK_SECONDS


class SpecError(ValueError):
    """A competition's declaration is wrong; the message names the field."""


class Declared:
    """The base of every declaration in a spec (each dataclass below inherits it): a keyword that
    is not one of its fields is refused when the spec is built, also through dataclasses.replace,
    with the field's name and the nearest valid one (SpecError), never ignored."""

    __slots__ = ()

    def __new__(cls, *args, **kwargs):
        if kwargs:
            refuse_unknown_fields(cls.__name__, kwargs, [f.name for f in fields(cls) if f.init], SpecError)
        return super().__new__(cls)


# Whole numbers and booleans are taken as given: pydantic's lax mode would read "30", 30.0 or True as
# 30 seconds (or 1), a wrong value silently made right. A float field takes an int (2 -> 2.0).
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, Strict()]
DECLARATION_CONFIG = ConfigDict(extra="forbid")


def _declared_types(hint: Any) -> list[type]:
    """The declarations a field's type can hold (Scope in tuple[Scope, ...], FailurePolicy | None)."""
    found = [hint] if isinstance(hint, type) and issubclass(hint, Declared) else []
    return found + [held for argument in get_args(hint) for held in _declared_types(argument)]


def _walk(owner: type, loc: Sequence[Any]) -> tuple[str, type]:
    """An error's location as a spec file spells it (`scopes[0].weight`) and the declaration the
    last key belongs to."""
    where, current, last_owner = "", owner, owner
    for part in loc:
        if isinstance(part, int):
            where += f"[{part}]"
            continue
        last_owner = current
        where += ("." if where else "") + str(part)
        hints = get_type_hints(current) if current is not None and is_dataclass(current) else {}
        held = _declared_types(hints.get(str(part)))
        current = held[0] if held else None
    return where, last_owner


def validation_problems(owner: type, error: ValidationError, positional: Sequence[Any] = ()) -> list[str]:
    """One line per problem of a pydantic ValidationError, each naming the field (`where: what`);
    a SpecError raised by a declaration's own checks is kept word for word."""
    problems = []
    names = [f.name for f in fields(owner) if f.init]
    for item in error.errors():
        loc = list(item.get("loc", ()))
        if loc and isinstance(loc[0], int) and positional and loc[0] < len(names):
            loc[0] = names[loc[0]]  # a positional argument, by its field's name
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, SpecError):
            problems.append(str(cause))
            continue
        where, declaration = _walk(owner, loc)
        if item["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            valid = sorted(f.name for f in fields(declaration) if f.init) if is_dataclass(declaration) else []
            close = nearest(str(loc[-1]), valid)
            hint = f"did you mean {close!r}?" if close else f"known keys here: {', '.join(valid)}"
            problems.append(f"{owner.__name__}: {where}: unknown key; {hint}")
        elif item["type"] == "missing" or item["type"] == "missing_argument":
            problems.append(f"{owner.__name__}: {where}: required field missing")
        else:
            shown = item.get("input")
            value = "" if isinstance(shown, (dict, list)) else f" (got {shown!r})"
            problems.append(f"{owner.__name__}: {where or '(root)'}: {item.get('msg', 'invalid')}{value}")
    return problems


def declaration(cls: type) -> type:
    """A spec declaration: a frozen pydantic dataclass refusing unknown fields, whose validation
    errors are SpecErrors naming the field (a `dataclasses.replace` is validated again the same way)."""
    cls = pydantic_dataclass(frozen=True, config=DECLARATION_CONFIG)(cls)
    validated_init = cls.__init__

    def __init__(self, *args, **kwargs):
        try:
            validated_init(self, *args, **kwargs)
        except ValidationError as error:
            raise SpecError("; ".join(validation_problems(type(self), error, args))) from None

    __init__.__doc__ = validated_init.__doc__
    cls.__init__ = __init__
    return cls


def refuse_settings_of_other_kinds(policy: Any, section: str, kind: str, settings_of: dict[str, tuple[str, ...]]) -> None:
    """A policy's setting that its kind does not use (a softmax emission's floor_pct) is refused by
    name when it is given (differs from its default), never silently ignored."""
    for f in fields(policy):
        kinds = settings_of.get(f.name)
        if kinds is not None and kind not in kinds and getattr(policy, f.name) != f.default:
            own = [name for name, used_by in settings_of.items() if kind in used_by]
            raise SpecError(f"{section}: {f.name} is not a setting of the {kind} {section.replace('_', ' ')} "
                            f"(its settings: {', '.join(own) or 'none'})")


@declaration
class Scope(Declared):
    """One prediction config: what is predicted, how often, when it resolves, and its weight in
    the combined leaderboard."""

    subject: str
    resolve_horizon_seconds: Int
    prediction_interval_seconds: Int
    step_seconds: Int | None = None
    weight: Float = 1.0
    name: str | None = None  # a label for reports (e.g. "in-sample"); the key stays derived

    @property
    def key(self) -> str:
        return f"{self.subject}-{self.resolve_horizon_seconds}-{self.prediction_interval_seconds}"

    @property
    def effective_step_seconds(self) -> int:
        return self.step_seconds or self.resolve_horizon_seconds

    @property
    def horizon(self) -> timedelta:
        return timedelta(seconds=self.resolve_horizon_seconds)

    def as_dict(self) -> dict:
        return {
            "subject": self.subject,
            "resolve_horizon_seconds": self.resolve_horizon_seconds,
            "prediction_interval_seconds": self.prediction_interval_seconds,
            "step_seconds": self.effective_step_seconds,
        }


@declaration
class LeaderboardWindow(Declared):
    name: str
    seconds: Int


DEFAULT_WINDOWS = (
    LeaderboardWindow("score_recent", DAY_SECONDS),
    LeaderboardWindow("score_steady", 3 * DAY_SECONDS),
    LeaderboardWindow("score_anchor", WEEK_SECONDS),
)


@declaration
class FailurePolicy(Declared):
    """What a FAILED or ABSENT prediction scores, and what a model missing from a cycle counts at.

    - constant(v): always v (the worst possible score, when the score is bounded);
    - relative(p): the p-th percentile of the cycle's successful scores counted from the best
      (p=100: the worst answer of the cycle, as Synth does), for unbounded scores that have no
      worst value. A cycle in which no model answered usefully has no relative value: it is voided.
    """

    kind: str
    value: Float | None = None
    percentile: Float = 100.0
    # the settings only some kinds use (the others are refused when given)
    SETTINGS_OF: ClassVar[dict[str, tuple[str, ...]]] = {"value": ("constant",), "percentile": ("relative",)}

    @classmethod
    def constant(cls, value: float) -> "FailurePolicy":
        return cls("constant", value=float(value))

    @classmethod
    def relative(cls, percentile: float = 100.0) -> "FailurePolicy":
        return cls("relative", percentile=float(percentile))

    def validate(self) -> None:
        if self.kind == "constant":
            if self.value is None or not math.isfinite(self.value):
                raise SpecError(f"failure_policy: a constant failure value must be a finite number, got {self.value!r}")
        elif self.kind == "relative":
            if not 0.0 <= self.percentile <= 100.0:
                raise SpecError(f"failure_policy: percentile must be in [0, 100], got {self.percentile}")
        else:
            raise SpecError(f"failure_policy: kind must be 'constant' or 'relative', got {self.kind!r}")
        refuse_settings_of_other_kinds(self, "failure_policy", self.kind, self.SETTINGS_OF)

    def value_for(self, successful_values: Sequence[float], higher_is_better: bool) -> float | None:
        """The cycle's failure value; None when a relative policy has no successful value."""
        if self.kind == "constant":
            return self.value
        if not successful_values:
            return None
        best_first = sorted(successful_values, reverse=higher_is_better)
        position = (len(best_first) - 1) * self.percentile / 100.0
        lower = math.floor(position)
        upper = min(lower + 1, len(best_first) - 1)
        fraction = position - lower
        return best_first[lower] + (best_first[upper] - best_first[lower]) * fraction

    def describe(self) -> str:
        if self.kind == "constant":
            return f"constant {self.value}"
        return "the worst successful score of the cycle" if self.percentile == 100 else (
            f"the {self.percentile:g}th percentile (from the best) of the cycle's successful scores"
        )


@declaration
class Eligibility(Declared):
    """Who is ranked over what, identically on the leaderboard and at the checkpoint, and who may
    be paid. Coverage counts scored answers only: FAILED, ABSENT and rejected cycles are never
    coverage (they still count in the mean, at the failure value).

    - every_cycle (default): every model with a prediction in the period is ranked over every
      counted cycle of it; cycles it has no prediction in (before it joined, after it left) count
      at the cycle's failure value, as ABSENT does. A late joiner cannot win on a few lucky cycles.
    - min_coverage(f): a model is ranked on its own rows, and listed but not paid when its scored
      answers cover less than a fraction f of the period's counted cycles, combined or in any one
      scope. A scope it has no row in counts at that scope's failure value in its combined mean.
    - min_scored_answers (default 1): a model with fewer scored answers in the period is not paid,
      whatever the mode: a model that never answered did no work.
    - require_every_scope (default False): True also refuses payment to a model with no scored
      answer in some scope (by default that scope just counts at its failure value).
    """

    mode: str = "every_cycle"
    min_coverage: Float = 0.0
    # the settings only some modes use (the others are refused when given)
    SETTINGS_OF: ClassVar[dict[str, tuple[str, ...]]] = {"min_coverage": ("min_coverage",)}
    min_scored_answers: Int = 1
    require_every_scope: Bool = False

    @classmethod
    def every_cycle(cls, min_scored_answers: int = 1, require_every_scope: bool = False) -> "Eligibility":
        return cls("every_cycle", min_scored_answers=min_scored_answers, require_every_scope=require_every_scope)

    @classmethod
    def minimum_coverage(cls, fraction: float, min_scored_answers: int = 1,
                         require_every_scope: bool = False) -> "Eligibility":
        return cls("min_coverage", float(fraction), min_scored_answers=min_scored_answers,
                   require_every_scope=require_every_scope)

    @property
    def pads_missing_cycles(self) -> bool:
        return self.mode == "every_cycle"

    def validate(self) -> None:
        if self.mode not in ("every_cycle", "min_coverage"):
            raise SpecError(f"eligibility: mode must be 'every_cycle' or 'min_coverage', got {self.mode!r}")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise SpecError(f"eligibility: min_coverage must be in [0, 1], got {self.min_coverage}")
        if isinstance(self.min_scored_answers, bool) or not isinstance(self.min_scored_answers, int) \
                or self.min_scored_answers < 1:
            raise SpecError(f"eligibility: min_scored_answers must be a whole number >= 1 (a model that never "
                            f"answered is never paid), got {self.min_scored_answers!r}")
        if not isinstance(self.require_every_scope, bool):
            raise SpecError(f"eligibility: require_every_scope must be True or False, got {self.require_every_scope!r}")
        refuse_settings_of_other_kinds(self, "eligibility", self.mode, self.SETTINGS_OF)


UNCLAIMED_RULES = ("equal", "pro_rata")
TIE_RULES = ("share", "by_model_id")


@declaration
class EmissionPolicy(Declared):
    """How a checkpoint's ranked, eligible models share 1,000,000,000 frac64 (see emission.py).

    - tiered(tiers, unclaimed): the reference tiers by rank (default 35 % / 10 % x 4 / 5 % x 5) over
      the paid models; what fewer paid models leave unclaimed is split equally over them
      (unclaimed="equal", the reference) or in proportion to the tier each one holds
      (unclaimed="pro_rata");
    - softmax(temperature): shares proportional to exp(score / temperature) (direction-aware);
    - proportional(floor_pct): every model gets floor_pct %, the rest is split in proportion to how
      far each score is above the worst one.
    - contribution(rank, contribution, diversity, floor_pct): a declared blend of the rank, the
      model's leave-one-out contribution to an ensemble and its diversity (1 - its correlation
      with the field), each normalised over the paid models; every paid model gets at least
      floor_pct % (crunch_assets/contribution.py). The reference's preset: 0.5 / 0.3 / 0.2, 1 %.
    """

    kind: str = "tiered"
    tiers_pct: tuple[tuple[Int, Float], ...] = ((1, 35.0), (5, 10.0), (10, 5.0))
    temperature: Float = 1.0
    floor_pct: Float = 0.0
    unclaimed: str = "equal"  # tiered: how the tiers no paid model holds are shared ("equal" | "pro_rata")
    # contribution: the blend's weights (exact decimals summing to 1) and the ensemble contributed to
    # (None: the first declared)
    rank_weight: Float = 0.5
    contribution_weight: Float = 0.3
    diversity_weight: Float = 0.2
    ensemble: str | None = None
    # the settings only some kinds use (the others are refused when given)
    SETTINGS_OF: ClassVar[dict[str, tuple[str, ...]]] = {
        "tiers_pct": ("tiered",), "unclaimed": ("tiered",), "temperature": ("softmax",),
        "floor_pct": ("proportional", "contribution"), "rank_weight": ("contribution",),
        "contribution_weight": ("contribution",), "diversity_weight": ("contribution",), "ensemble": ("contribution",)}

    @classmethod
    def tiered(cls, tiers_pct: tuple[tuple[int, float], ...] = ((1, 35.0), (5, 10.0), (10, 5.0)),
               unclaimed: str = "equal") -> "EmissionPolicy":
        return cls("tiered", tiers_pct=tuple(tiers_pct), unclaimed=unclaimed)

    @classmethod
    def softmax(cls, temperature: float) -> "EmissionPolicy":
        return cls("softmax", temperature=float(temperature))

    @classmethod
    def proportional(cls, floor_pct: float = 0.0) -> "EmissionPolicy":
        return cls("proportional", floor_pct=float(floor_pct))

    @classmethod
    def contribution(cls, rank: float = 0.5, contribution: float = 0.3, diversity: float = 0.2,
                     floor_pct: float = 1.0, ensemble: str | None = None) -> "EmissionPolicy":
        return cls("contribution", floor_pct=float(floor_pct), rank_weight=float(rank),
                   contribution_weight=float(contribution), diversity_weight=float(diversity), ensemble=ensemble)

    def validate(self) -> None:
        if self.unclaimed not in UNCLAIMED_RULES:
            raise SpecError(f"emission: unclaimed must be one of {', '.join(UNCLAIMED_RULES)}, got {self.unclaimed!r}")
        if self.kind == "tiered":
            last = 0
            for last_rank, pct in self.tiers_pct:
                if last_rank <= last or pct < 0:
                    raise SpecError(f"emission: tiers must have increasing last ranks and pct >= 0, got {self.tiers_pct}")
                last = last_rank
            pcts = [pct for _, pct in self.tiers_pct]
            if any(a < b for a, b in zip(pcts, pcts[1:])):
                raise SpecError(f"emission: a later tier cannot pay more per rank than an earlier one: {self.tiers_pct}")
            total = 0.0
            previous = 0
            for last_rank, pct in self.tiers_pct:
                total += (last_rank - previous) * pct
                previous = last_rank
            if total > 100.0 + 1e-9:
                raise SpecError(f"emission: tiers give {total} % > 100 %")
        elif self.kind == "softmax":
            if not (math.isfinite(self.temperature) and self.temperature > 0):
                raise SpecError(f"emission: softmax temperature must be > 0, got {self.temperature}")
        elif self.kind == "proportional":
            if not 0.0 <= self.floor_pct <= 100.0:
                raise SpecError(f"emission: floor_pct must be in [0, 100], got {self.floor_pct}")
        elif self.kind == "contribution":
            weights = (self.rank_weight, self.contribution_weight, self.diversity_weight)
            if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0
                   for w in weights):
                raise SpecError(f"emission: contribution weights must be finite numbers >= 0, got {weights}")
            if sum(Fraction(repr(float(w))) for w in weights) != 1:
                raise SpecError(f"emission: contribution weights rank + contribution + diversity must sum to exactly 1 "
                                f"(as decimals), got {' + '.join(f'{w:g}' for w in weights)}")
            if not 0.0 <= self.floor_pct <= 100.0:
                raise SpecError(f"emission: floor_pct must be in [0, 100], got {self.floor_pct}")
        else:
            raise SpecError(f"emission: kind must be 'tiered', 'softmax', 'proportional' or 'contribution', "
                            f"got {self.kind!r}")
        refuse_settings_of_other_kinds(self, "emission", self.kind, self.SETTINGS_OF)


COPY_POLICIES = ("pay_first", "flag", "off")
COPY_DISTANCES = ("rounded_equality", "max_abs_difference")


@declaration
class CopyDetection(Declared):
    """How a checkpoint finds models that return what another model returns (crunch_assets/copies.py).

    Every pair of models is compared on every cycle of the period where both answered: the same
    cycle, and model B's output against model A's of `lags` cycles earlier (copying a forecast
    once it is visible). A pair that matches on at least `match_fraction` of its common cycles of
    a scope (and on at least `min_common_cycles` of them) links a copy cluster.

    - distance "rounded_equality" (default): equal after rounding every number to `decimals`
      decimal places (keys sorted; 1 and 1.0 are equal). Grouped by hashing: O(models) per cycle.
    - distance "max_abs_difference": the same structure and every number within `tolerance`.
      O(pairs) per cycle (see docs/rewards.md for what that costs).
    - never_match: outputs that never count as a match nor as a common cycle (e.g. the neutral
      answer {"p_up": 0.5}), compared after rounding.
    - policy "pay_first" (default): a cluster is paid once, to the model that made the output
      first (earliest registered; a lagged copy is always the copier; registered together: the
      operator decides); "flag": nothing is excluded and the emission safety gate refuses the
      checkpoint until the operator resolves every cluster; "off": no detection.
    """

    policy: str = "pay_first"
    distance: str = "rounded_equality"
    decimals: Int = 6
    tolerance: Float = 0.0
    match_fraction: Float = 0.9
    min_common_cycles: Int = 1
    lags: tuple[Int, ...] = (1,)
    never_match: tuple = ()

    def __post_init__(self) -> None:
        for name in ("lags", "never_match"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            elif not isinstance(value, tuple):
                raise SpecError(f"copy_detection: {name} must be a tuple, got {value!r}")

    @classmethod
    def pay_first(cls, **options) -> "CopyDetection":
        return cls("pay_first", **options)

    @classmethod
    def flag(cls, **options) -> "CopyDetection":
        return cls("flag", **options)

    @classmethod
    def off(cls) -> "CopyDetection":
        return cls("off")

    @property
    def enabled(self) -> bool:
        return self.policy != "off"

    def validate(self) -> None:
        if self.policy not in COPY_POLICIES:
            raise SpecError(f"copy_detection: policy must be one of {', '.join(COPY_POLICIES)}, got {self.policy!r}")
        if self.distance not in COPY_DISTANCES:
            raise SpecError(f"copy_detection: distance must be one of {', '.join(COPY_DISTANCES)}, got {self.distance!r}")
        if isinstance(self.decimals, bool) or not isinstance(self.decimals, int) or not 0 <= self.decimals <= 15:
            raise SpecError(f"copy_detection: decimals must be a whole number in [0, 15], got {self.decimals!r}")
        if not (isinstance(self.tolerance, (int, float)) and math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise SpecError(f"copy_detection: tolerance must be a finite number >= 0, got {self.tolerance!r}")
        if self.distance == "rounded_equality" and self.tolerance:
            raise SpecError("copy_detection: tolerance is for distance 'max_abs_difference'; rounded_equality "
                            f"compares after rounding to `decimals` (got tolerance {self.tolerance})")
        if not (isinstance(self.match_fraction, (int, float)) and 0 < self.match_fraction <= 1):
            raise SpecError(f"copy_detection: match_fraction must be in (0, 1], got {self.match_fraction!r}")
        if isinstance(self.min_common_cycles, bool) or not isinstance(self.min_common_cycles, int) \
                or self.min_common_cycles < 1:
            raise SpecError(f"copy_detection: min_common_cycles must be a whole number >= 1, got {self.min_common_cycles!r}")
        if any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 10_080 for k in self.lags) \
                or len(set(self.lags)) != len(self.lags):
            raise SpecError(f"copy_detection: lags must be distinct whole numbers of cycles in [1, 10080], got {self.lags!r}")
        for value in self.never_match:
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as error:
                raise SpecError(f"copy_detection: never_match {value!r} is not a JSON value: {error}") from None

    def describe(self) -> str:
        if not self.enabled:
            return "copy detection off"
        distance = (f"equal after rounding to {self.decimals} decimals" if self.distance == "rounded_equality"
                    else f"every number within {self.tolerance:g}")
        lagged = f", and lagged by {', '.join(str(k) for k in self.lags)} cycle(s)" if self.lags else ""
        policy = ("a cluster is paid once, to the model that made the output first (earliest registered; a lagged "
                  "copy is always the copier)" if self.policy == "pay_first"
                  else "clusters are flagged and the gate blocks until the operator resolves them")
        ignored = f"; never a match: {', '.join(json.dumps(v, sort_keys=True) for v in self.never_match)}" \
            if self.never_match else ""
        return (f"a pair is a copy when {distance} on at least {self.match_fraction:.0%} of its common cycles "
                f"(at least {self.min_common_cycles}), same cycle{lagged}; {policy}{ignored}")

# The metrics registry (crunch_assets/metrics.py): what a competition may declare it computes.
SIGNAL_METRICS = ("ic", "ic_sharpe", "hit_rate", "mean_return", "sortino_ratio", "turnover", "fnc",
                  "model_correlation", "ensemble_correlation")
METRIC_NAMES = SIGNAL_METRICS + ("max_drawdown", "contribution")
ENSEMBLE_MEMBERS = ("all", "top_n", "min_metric")
ENSEMBLE_WEIGHTINGS = ("equal", "inverse_variance")
ENSEMBLE_WINDOW_METRICS = ("mean_score",)  # over the model's scores of the window (ensembles.window_stats)
ENSEMBLE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@declaration
class Ensemble(Declared):
    """A virtual model (`__ensemble_<name>__`) built every cycle from that cycle's stored outputs
    (crunch_assets/ensembles.py): every model that answered (made status PENDING) is a member. It is
    stored as a prediction, resolved and scored like a model, ranked and shown (marked), never paid,
    and it never changes a real model's score (it is left out of the failure value and of the
    cross-sectional step).

    - combine: "mean" (the weighted mean of the numeric fields every member's output has), or an
      import path `module:attr(scope, outputs, weights) -> output` (e.g. a mixture of densities);
    - weighting: "equal", or an import path `module:attr(scope, model_ids, outputs) -> [weight]`
      (finite, >= 0, not all 0), from the cycle's outputs only;
    - leave_one_out: an optional import path `module:attr(scope, outputs, weights, ground_truth) ->
      [score of the ensemble without member i]` (None where it cannot be scored): the fast path of
      contribution. Without it, "mean" has the engine's own (O(1) a member); a custom combine is
      rebuilt without each member (O(members) a member);
    - min_members: fewer answering members make the ensemble's prediction ABSENT for the cycle.
    - members: "all" (every model that answered), "top_n" (the `top_n` best by `metric` over the
      window), "min_metric" (those whose `metric` over the window passes `min_metric`: >= when higher
      is better, else <=). weighting "inverse_variance": 1 / the variance of the member's scores
      over the window. The window of a cycle at t: the model's scores of the same scope's cycles
      in [t - window_seconds, t) that resolved by t, fixed before the cycle; a model with fewer than
      min_history_cycles of them is not a member. Such an ensemble is built when its cycle is
      scored, once every cycle of its window is settled (crunch_assets/ensembles.py, docs/rewards.md).
    """

    name: str
    combine: str = "mean"
    weighting: str = "equal"
    leave_one_out: str | None = None
    min_members: Int = 1
    members: str = "all"
    top_n: Int | None = None
    min_metric: Float | None = None
    metric: str = "mean_score"
    window_seconds: Int | None = None
    min_history_cycles: Int = 1

    @property
    def model_id(self) -> str:
        return f"__ensemble_{self.name}__"

    def validate(self) -> None:
        if not isinstance(self.name, str) or not ENSEMBLE_NAME_PATTERN.match(self.name):
            raise SpecError(f"ensembles: name {self.name!r} must match {ENSEMBLE_NAME_PATTERN.pattern}")
        for slot in ("combine", "weighting", "leave_one_out"):
            value = getattr(self, slot)
            builtin = {"combine": ("mean",), "weighting": ENSEMBLE_WEIGHTINGS, "leave_one_out": ()}[slot]
            if value is None and slot == "leave_one_out":
                continue
            if not isinstance(value, str) or (value not in builtin and ":" not in value):
                choices = " or ".join([repr(b) for b in builtin] + ["an import path 'package.module:attribute'"])
                raise SpecError(f"ensemble {self.name}: {slot} must be {choices}, got {value!r}")
        if isinstance(self.min_members, bool) or not isinstance(self.min_members, int) or self.min_members < 1:
            raise SpecError(f"ensemble {self.name}: min_members must be a whole number >= 1, got {self.min_members!r}")
        self._validate_window()

    @property
    def windowed(self) -> bool:
        """Whether its members or weights read the models' scores over a window (built when scored)."""
        return self.members != "all" or self.weighting == "inverse_variance"

    def _validate_window(self) -> None:
        def whole(value, least: int) -> bool:
            return not isinstance(value, bool) and isinstance(value, int) and value >= least

        if self.members not in ENSEMBLE_MEMBERS:
            raise SpecError(f"ensemble {self.name}: members must be one of {list(ENSEMBLE_MEMBERS)}, got {self.members!r}")
        if self.metric not in ENSEMBLE_WINDOW_METRICS:
            raise SpecError(f"ensemble {self.name}: metric must be one of {list(ENSEMBLE_WINDOW_METRICS)}, "
                            f"got {self.metric!r}")
        if (self.members == "top_n") != (self.top_n is not None):
            raise SpecError(f"ensemble {self.name}: top_n is declared with members='top_n' and only then "
                            f"(members={self.members!r}, top_n={self.top_n!r})")
        if self.top_n is not None and not whole(self.top_n, 1):
            raise SpecError(f"ensemble {self.name}: top_n must be a whole number >= 1, got {self.top_n!r}")
        if (self.members == "min_metric") != (self.min_metric is not None):
            raise SpecError(f"ensemble {self.name}: min_metric is declared with members='min_metric' and only then "
                            f"(members={self.members!r}, min_metric={self.min_metric!r})")
        if self.min_metric is not None and (isinstance(self.min_metric, bool) or not isinstance(self.min_metric, (int, float))
                                            or not math.isfinite(self.min_metric)):
            raise SpecError(f"ensemble {self.name}: min_metric must be a finite number, got {self.min_metric!r}")
        if self.windowed != (self.window_seconds is not None):
            raise SpecError(f"ensemble {self.name}: window_seconds is declared with members 'top_n' or 'min_metric' "
                            f"or weighting 'inverse_variance', and only then (window_seconds={self.window_seconds!r})")
        if self.window_seconds is not None and not whole(self.window_seconds, 1):
            raise SpecError(f"ensemble {self.name}: window_seconds must be a whole number of seconds >= 1, "
                            f"got {self.window_seconds!r}")
        least = 2 if self.weighting == "inverse_variance" else 1
        if not whole(self.min_history_cycles, least):
            raise SpecError(f"ensemble {self.name}: min_history_cycles must be a whole number >= {least}"
                            f"{' (a variance needs two scores)' if least == 2 else ''}, got {self.min_history_cycles!r}")


@declaration
class MetricsPolicy(Declared):
    """Which metrics of the registry (crunch_assets/metrics.py) the rollups compute per model, scope
    and hour, and how a model's output and a cycle's truth read as numbers for the metrics that
    need them (IC, hit rate, correlations, ...):

    - names: metric names from METRIC_NAMES;
    - signal: import path `module:attr(scope, output) -> float | None` (e.g. p_up - 0.5);
    - outcome: import path `module:attr(scope, ground_truth) -> float | None` (the realised value).
    """

    names: tuple[str, ...] = ()
    signal: str | None = None
    outcome: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.names, list):
            object.__setattr__(self, "names", tuple(self.names))

    @property
    def enabled(self) -> bool:
        return bool(self.names)

    def validate(self) -> None:
        if isinstance(self.names, str) or not isinstance(self.names, tuple):
            raise SpecError(f"metrics: names must be a tuple of metric names, got {self.names!r}")
        unknown = [n for n in self.names if n not in METRIC_NAMES]
        if unknown:
            raise SpecError(f"metrics: unknown metric(s) {unknown}; the registry has {', '.join(METRIC_NAMES)}")
        if len(set(self.names)) != len(self.names):
            raise SpecError(f"metrics: a metric is listed twice: {self.names!r}")
        for slot in ("signal", "outcome"):
            value = getattr(self, slot)
            if value is not None and (not isinstance(value, str) or ":" not in value):
                raise SpecError(f"metrics: {slot} must be an import path 'package.module:attribute', got {value!r}")
        needs_signal = [n for n in self.names if n in SIGNAL_METRICS]
        if needs_signal and self.signal is None:
            raise SpecError(f"metrics: {', '.join(needs_signal)} read each output as a number: declare "
                            "signal='package.module:attribute'")
        needs_outcome = [n for n in self.names if n in ("ic", "ic_sharpe", "hit_rate", "mean_return", "sortino_ratio",
                                                        "fnc")]
        if needs_outcome and self.outcome is None:
            raise SpecError(f"metrics: {', '.join(needs_outcome)} compare the signal with the realised value: declare "
                            "outcome='package.module:attribute'")


@declaration
class PayoutPolicy(Declared):
    """Who among the eligible models is paid (see docs/rewards.md, "Who is paid"). Every model is
    scored, ranked and shown; an unpaid one gets 0 with its reason, and its share goes to the paid
    models by the emission's own rule.

    - pay_best_model_per_participant (default True, as CrunchDAO pays): only a participant's best
      eligible model is paid;
    - max_models_per_participant (default None: no limit): only a participant's first N models
      (by registration, then id) can be paid; the others are scored and shown, never paid;
    - benchmark_models: house models, by id: scored, ranked and shown, never paid;
    - benchmark_cutoff (default False): True pays no model whose score is not strictly better than
      the best benchmark model's score in the period;
    - ties (default "share"): models with exactly equal scores share the rewards of the ranks they
      hold equally, so a name never decides money; "by_model_id" breaks the tie by model id.
    """

    pay_best_model_per_participant: Bool = True
    max_models_per_participant: Int | None = None
    benchmark_models: tuple[str, ...] = ()
    benchmark_cutoff: Bool = False
    ties: str = "share"

    def validate(self) -> None:
        if not isinstance(self.pay_best_model_per_participant, bool):
            raise SpecError("payout: pay_best_model_per_participant must be True or False, "
                            f"got {self.pay_best_model_per_participant!r}")
        limit = self.max_models_per_participant
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise SpecError(f"payout: max_models_per_participant must be a whole number >= 1 or None, got {limit!r}")
        if isinstance(self.benchmark_models, str) or not all(isinstance(m, str) and m for m in self.benchmark_models):
            raise SpecError(f"payout: benchmark_models must be a tuple of model ids, got {self.benchmark_models!r}")
        if len(set(self.benchmark_models)) != len(self.benchmark_models):
            raise SpecError(f"payout: benchmark_models lists a model twice: {self.benchmark_models!r}")
        if not isinstance(self.benchmark_cutoff, bool):
            raise SpecError(f"payout: benchmark_cutoff must be True or False, got {self.benchmark_cutoff!r}")
        if self.benchmark_cutoff and not self.benchmark_models:
            raise SpecError("payout: benchmark_cutoff needs at least one model in benchmark_models")
        if self.ties not in TIE_RULES:
            raise SpecError(f"payout: ties must be one of {', '.join(TIE_RULES)}, got {self.ties!r}")


@declaration
class GatePolicy(Declared):
    """Limits the emission safety gate checks before a checkpoint can be SUBMITTED (besides its
    fixed checks, among them: no paid model without a scored answer).

    - min_eligible_participants (default 3): no payout below this many participants with an
      eligible model (benchmark, excluded and ineligible models do not count);
    - max_participant_share_pct (default 50.0): no participant paid more than this percentage of
      the pool (the reference's tiers give rank 1 at most 50 % from three paid participants up);
    - dispute_window_seconds (default 0): a checkpoint cannot be SUBMITTED until this long after it
      was built (or last rebuilt with other numbers); an open dispute blocks it until resolved.
    """

    min_eligible_participants: Int = 3
    max_participant_share_pct: Float = 50.0
    # After a checkpoint is built (or rebuilt with other numbers), it cannot be SUBMITTED for this
    # long: the time participants and the operator have to dispute it (0: today's behaviour).
    dispute_window_seconds: Int = 0

    def validate(self) -> None:
        window = self.dispute_window_seconds
        if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= 90 * DAY_SECONDS:
            raise SpecError(f"gate: dispute_window_seconds must be a whole number of seconds in [0, {90 * DAY_SECONDS}] "
                            f"(90 days), got {window!r}")
        n = self.min_eligible_participants
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpecError(f"gate: min_eligible_participants must be a whole number >= 1, got {n!r}")
        pct = self.max_participant_share_pct
        if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not (0.0 < pct <= 100.0):
            raise SpecError(f"gate: max_participant_share_pct must be in (0, 100], got {pct!r}")


# The callable slots a declared rules change may replace: the ones that act on one cycle (what a
# model is sent, what a valid answer is, the truth and the score). The model base class (the
# session's interface) and the emission builder (a period's split) are not per-cycle rules.
CHANGEABLE_SLOTS = (
    "input_builder", "call_builder", "output_validator", "ground_truth_resolver", "scoring_function",
    "cross_sectional", "input_schema", "output_schema", "score_schema",
)
# Slots that may be removed by a change (None): the optional ones.
REMOVABLE_SLOTS = ("cross_sectional", "input_schema", "output_schema", "score_schema")


def _slots_as_pairs(value: Any) -> Any:
    """A change's slots given as a mapping (slot -> import path) are kept as sorted pairs."""
    return tuple(sorted(value.items())) if isinstance(value, dict) else value


@declaration
class RulesChange(Declared):
    """A declared change of a competition's per-cycle rules, in force from `effective_from` (a cycle
    time, aware UTC): every cycle at or after it is run and scored under the changed rules, every
    cycle before it under the rules before, live and in any replay (crunch_assets/fingerprint.py).

    - slots: callable slot -> import path (`module:attr`; None removes an optional slot), among
      CHANGEABLE_SLOTS; only for CallableRules;
    - failure_policy, max_price_staleness_seconds, void_after_seconds: the per-cycle spec fields it
      changes (None: unchanged);
    - note: what changed and why, in words (shown with the rules).

    Keep the rules before the change importable (e.g. `score_v1` beside `score_v2`): a checkpoint
    whose cycles were scored under them is checked against their fingerprint.
    """

    effective_from: datetime
    slots: Annotated[tuple[tuple[str, str | None], ...], BeforeValidator(_slots_as_pairs)] = ()
    failure_policy: FailurePolicy | None = None
    max_price_staleness_seconds: Int | None = None
    void_after_seconds: Int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.slots, dict):
            object.__setattr__(self, "slots", tuple(sorted(self.slots.items())))
        elif isinstance(self.slots, list):
            object.__setattr__(self, "slots", tuple(tuple(pair) for pair in self.slots))

    @property
    def slot_paths(self) -> dict[str, str | None]:
        return dict(self.slots)

    @property
    def spec_changes(self) -> dict:
        """The spec fields this change sets (the ones it leaves unchanged are None)."""
        return {name: getattr(self, name) for name in ("failure_policy", "max_price_staleness_seconds",
                                                       "void_after_seconds") if getattr(self, name) is not None}

    def validate(self) -> None:
        at = self.effective_from
        if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() != timedelta(0):
            raise SpecError(f"rules_changes: effective_from must be an aware UTC datetime, got {at!r}")
        if not isinstance(self.slots, tuple) or not all(isinstance(p, tuple) and len(p) == 2 for p in self.slots):
            raise SpecError(f"rules_changes: slots must map a slot name to an import path, got {self.slots!r}")
        names = [name for name, _ in self.slots]
        if len(set(names)) != len(names):
            raise SpecError(f"rules_changes: a slot is named twice in {names}")
        for name, path in self.slots:
            if name not in CHANGEABLE_SLOTS:
                raise SpecError(f"rules_changes: slot {name!r} cannot change at a cycle; changeable slots: "
                                f"{', '.join(CHANGEABLE_SLOTS)}")
            if path is None and name not in REMOVABLE_SLOTS:
                raise SpecError(f"rules_changes: slot {name!r} cannot be removed (None); give an import path")
            if path is not None and (not isinstance(path, str) or ":" not in path):
                raise SpecError(f"rules_changes: slot {name!r} needs an import path 'package.module:attribute', "
                                f"got {path!r}")
        if self.failure_policy is not None:
            if not isinstance(self.failure_policy, FailurePolicy):
                raise SpecError("rules_changes: failure_policy must be a FailurePolicy")
            self.failure_policy.validate()
        for name in ("max_price_staleness_seconds", "void_after_seconds"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise SpecError(f"rules_changes: {name} must be a whole number of seconds > 0, got {value!r}")
        if not isinstance(self.note, str) or len(self.note) > 1000:
            raise SpecError("rules_changes: note must be text of at most 1,000 characters")
        if not self.slots and not self.spec_changes:
            raise SpecError(f"rules_changes: the change at {at.isoformat()} changes nothing")


@declaration
class CompetitionSpec(Declared):
    slug: str
    start: datetime  # first partition; timezone-aware UTC, on an hour boundary
    scopes: tuple[Scope, ...]
    failure_policy: FailurePolicy
    # Subjects the inputs may read besides the scopes' own (cross-asset inputs).
    extra_subjects: tuple[str, ...] = ()
    checkpoint_interval_seconds: Int = WEEK_SECONDS  # any whole number of hours
    leaderboard_windows: tuple[LeaderboardWindow, ...] = DEFAULT_WINDOWS
    ranking_key: str = "score_recent"
    ranking_descending: Bool = True  # True: higher scores are better
    # What the checkpoint ranks by: "period" (the period's mean under the eligibility policy, the
    # default) or the name of a leaderboard window (its value as of the period's end).
    checkpoint_ranking: str = "period"
    eligibility: Eligibility = field(default_factory=Eligibility)
    emission: EmissionPolicy = field(default_factory=EmissionPolicy)
    copy_detection: CopyDetection = field(default_factory=CopyDetection)
    # What a model sees before predicting: records observed in the last history_seconds.
    history_seconds: Int = HOUR_SECONDS
    # Ground truth needs a price observed at most this long before the instant it prices; it must
    # be shorter than every horizon, or the entry price could stand in for the resolved one.
    max_price_staleness_seconds: Int = 30
    # Extra wait after a prediction resolves before it is scored (late feed rows).
    settle_delay_seconds: Int = 0
    # Fault policy: after this many FAILED cycles in a row a model is not called for the cool-down
    # (0 disables quarantine).
    quarantine_after_failures: Int = 5
    quarantine_cooldown_seconds: Int = 600
    # A cycle whose ground truth is still missing this long after it resolved is VOIDED: neither
    # scored nor penalised. Decided by the stored feed (it has moved past that time without the
    # price), or, live, by the clock.
    void_after_seconds: Int = 3600
    # How long a live tick waits for the feed before the cycle waits for the next tick.
    live_feed_wait_seconds: Float = 10.0
    # Feed rows older than this (by market time) are deleted once archived to Parquet.
    feed_retention_days: Int = 90
    # Live feed polling between cycles (keeps ground truth fresh when cycles are sparse).
    feed_poll_interval_seconds: Int = 30
    # Live catch-up bound: missed cycles older than this are not run live (backfill them).
    max_catchup_seconds: Int = 15 * 60
    # The cycle sensor launches an hour's live run at least this long before the hour (by its last
    # tick before it), so its process has booted and its models started by then; the run waits for each cycle's due time before it reads anything (cutoff = T).
    cycle_lead_seconds: Int = 30
    # The live run does each cycle at its due time; the sensors only keep it going and cover the rest.
    # Each sensor tick costs CPU in the code server and the daemon and a ~1 KB row in Dagster's storage.
    cycle_sensor_interval_seconds: Int = 30
    # The catch-up sensors cover what no live run does (a pause, a backfill's hours, a new model),
    # so they tick every 5 minutes.
    settlement_sensor_interval_seconds: Int = 300
    # A model that appears in the runner is registered within this (and predicts from its next cycle).
    registry_sensor_interval_seconds: Int = 300
    # How often the lag checks are judged (a changed verdict is recorded at once).
    lag_sensor_interval_seconds: Int = 300
    # How often the rollup sensor looks for new scores or voids outside the live run's rollups.
    rollup_sensor_interval_seconds: Int = 300
    # How often the checkpoint sensor looks for a closed, settled, rolled-up period.
    checkpoint_sensor_interval_seconds: Int = 300
    # How often the run failure sensor looks for failed runs (a tick costs CPU and a stored row).
    run_failure_sensor_interval_seconds: Int = 120
    # Keys of a stored model input the report API may show participants (none by default).
    public_input_keys: tuple[str, ...] = ()
    description: str = ""
    # Who among the eligible models is paid: participants, benchmark models, ties.
    payout: PayoutPolicy = field(default_factory=PayoutPolicy)
    # The emission safety gate's declared limits (field size, concentration, dispute window).
    gate: GatePolicy = field(default_factory=GatePolicy)
    # Virtual models built every cycle from the cycle's outputs (crunch_assets/ensembles.py).
    ensembles: tuple[Ensemble, ...] = ()
    # The metrics the rollups compute per model, scope and hour (crunch_assets/metrics.py).
    metrics: MetricsPolicy = field(default_factory=MetricsPolicy)
    # Declared changes of the per-cycle rules, each in force from its cycle (oldest first): every
    # cycle is scored under the rules in force at its time (crunch_assets/fingerprint.py).
    rules_changes: tuple[RulesChange, ...] = ()
    # What a score is, for people (the page says it with its direction), e.g. "CRPS of the
    # predicted return density, in basis points". Empty: the page says "score".
    score_name: str = ""

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if not SLUG_PATTERN.match(self.slug):
            raise SpecError(f"slug {self.slug!r} must match {SLUG_PATTERN.pattern} (it prefixes asset keys)")
        if self.start.tzinfo is None or self.start.utcoffset() != timedelta(0):
            raise SpecError(f"start must be timezone-aware UTC, got {self.start!r}")
        if self.start != self.start.replace(minute=0, second=0, microsecond=0):
            raise SpecError(f"start must be on an hour boundary, got {self.start.isoformat()}")
        if not self.scopes:
            raise SpecError("scopes: a competition needs at least one prediction scope")
        keys = [scope.key for scope in self.scopes]
        if len(set(keys)) != len(keys):
            raise SpecError(f"scopes: duplicate scope keys {keys}")
        for scope in self.scopes:
            if not scope.subject:
                raise SpecError("scopes: every scope needs a subject")
            if not 1 <= scope.prediction_interval_seconds <= WEEK_SECONDS:
                raise SpecError(f"scope {scope.key}: prediction_interval_seconds must be in [1, {WEEK_SECONDS}]")
            if not 0 < scope.resolve_horizon_seconds <= MAX_HORIZON_SECONDS:
                raise SpecError(f"scope {scope.key}: resolve_horizon_seconds must be in (0, {MAX_HORIZON_SECONDS}] (7 days)")
            if scope.step_seconds is not None and scope.step_seconds <= 0:
                raise SpecError(f"scope {scope.key}: step_seconds must be > 0")
            if not (math.isfinite(scope.weight) and scope.weight > 0):
                raise SpecError(f"scope {scope.key}: weight must be a positive number, got {scope.weight}")
            if self.max_price_staleness_seconds >= scope.resolve_horizon_seconds:
                raise SpecError(
                    f"max_price_staleness_seconds ({self.max_price_staleness_seconds}) must be smaller than scope "
                    f"{scope.key}'s horizon ({scope.resolve_horizon_seconds} s): otherwise a missing resolution "
                    "price could be read from an observation before the cycle"
                )
        if self.max_price_staleness_seconds <= 0:
            raise SpecError("max_price_staleness_seconds must be > 0")
        if self.checkpoint_interval_seconds <= 0 or self.checkpoint_interval_seconds % HOUR_SECONDS:
            raise SpecError(
                f"checkpoint_interval_seconds must be a positive whole number of hours, got {self.checkpoint_interval_seconds}"
            )
        window_names = [window.name for window in self.leaderboard_windows]
        if not window_names or len(set(window_names)) != len(window_names):
            raise SpecError(f"leaderboard_windows: need unique names, got {window_names}")
        for window in self.leaderboard_windows:
            if window.seconds <= 0 or window.seconds % HOUR_SECONDS:
                raise SpecError(f"leaderboard window {window.name}: seconds must be a positive whole number of hours")
        if self.ranking_key not in window_names:
            raise SpecError(f"ranking_key {self.ranking_key!r} is not a leaderboard window; windows: {window_names}")
        if self.checkpoint_ranking != "period" and self.checkpoint_ranking not in window_names:
            raise SpecError(
                f"checkpoint_ranking {self.checkpoint_ranking!r} must be 'period' or a leaderboard window: {window_names}"
            )
        if not isinstance(self.failure_policy, FailurePolicy):
            raise SpecError("failure_policy must be a FailurePolicy (FailurePolicy.constant(v) or .relative(p))")
        self.failure_policy.validate()
        for name, kind in (("eligibility", Eligibility), ("emission", EmissionPolicy), ("payout", PayoutPolicy),
                           ("gate", GatePolicy)):
            if not isinstance(getattr(self, name), kind):
                raise SpecError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        self.eligibility.validate()
        self.emission.validate()
        self.payout.validate()
        self.gate.validate()
        self._validate_contribution()
        if not isinstance(self.copy_detection, CopyDetection):
            raise SpecError("copy_detection must be a CopyDetection (CopyDetection.pay_first(...), .flag(...) or .off())")
        self.copy_detection.validate()
        if isinstance(self.rules_changes, list):
            object.__setattr__(self, "rules_changes", tuple(self.rules_changes))
        if not isinstance(self.rules_changes, tuple) or not all(isinstance(c, RulesChange) for c in self.rules_changes):
            raise SpecError("rules_changes must be a tuple of RulesChange(effective_from=..., ...)")
        for change in self.rules_changes:
            change.validate()
        times = [c.effective_from for c in self.rules_changes]
        if any(b <= a for a, b in zip(times, times[1:])):
            raise SpecError("rules_changes must be in order of effective_from, each at a different time: "
                            f"{[t.isoformat() for t in times]}")
        for name in ("history_seconds", "void_after_seconds", "feed_retention_days", "feed_poll_interval_seconds",
                     "max_catchup_seconds", "cycle_sensor_interval_seconds", "settlement_sensor_interval_seconds",
                     "registry_sensor_interval_seconds", "lag_sensor_interval_seconds",
                     "rollup_sensor_interval_seconds", "checkpoint_sensor_interval_seconds",
                     "run_failure_sensor_interval_seconds"):
            if getattr(self, name) <= 0:
                raise SpecError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("settle_delay_seconds", "quarantine_after_failures", "quarantine_cooldown_seconds", "cycle_lead_seconds"):
            if getattr(self, name) < 0:
                raise SpecError(f"{name} must be >= 0, got {getattr(self, name)}")

    def _validate_contribution(self) -> None:
        """Ensembles, metrics and the contribution emission, and how they depend on each other."""
        if isinstance(self.ensembles, list):
            object.__setattr__(self, "ensembles", tuple(self.ensembles))
        if not isinstance(self.ensembles, tuple) or not all(isinstance(e, Ensemble) for e in self.ensembles):
            raise SpecError("ensembles must be a tuple of Ensemble(...)")
        for ensemble in self.ensembles:
            ensemble.validate()
        names = [e.name for e in self.ensembles]
        if len(set(names)) != len(names):
            raise SpecError(f"ensembles: a name is declared twice: {names}")
        if not isinstance(self.metrics, MetricsPolicy):
            raise SpecError(f"metrics must be a MetricsPolicy, got {type(self.metrics).__name__}")
        self.metrics.validate()
        needs_ensemble = [n for n in self.metrics.names if n in ("contribution", "ensemble_correlation")]
        if needs_ensemble and not self.ensembles:
            raise SpecError(f"metrics: {', '.join(needs_ensemble)} measure(s) a model against an ensemble: declare "
                            "one in ensembles")
        if self.emission.kind == "contribution":
            if not self.ensembles:
                raise SpecError("emission: the contribution strategy needs an ensemble: declare one in ensembles")
            if self.emission.ensemble is not None and self.emission.ensemble not in names:
                raise SpecError(f"emission: ensemble {self.emission.ensemble!r} is not declared; ensembles: {names}")
            missing = [n for n in ("contribution", "model_correlation") if n not in self.metrics.names]
            if missing:
                raise SpecError(f"emission: the contribution strategy pays on {' and '.join(missing)}: add "
                                f"{'them' if len(missing) > 1 else 'it'} to metrics.names")

    @classmethod
    def model_json_schema(cls) -> dict:
        """The JSON schema of a spec (published as docs/competition-spec.schema.json; `doctor`
        validates spec files against it). Types and field names only: the checks between fields
        (a horizon longer than the staleness bound, ...) are the model's own."""
        return TypeAdapter(cls).json_schema()

    @classmethod
    def model_validate(cls, data: Any) -> "CompetitionSpec":
        """A spec from plain data (a spec file's JSON object: datetimes as ISO-8601 text, tuples as
        lists). Raises SpecError whose `problems` lists every problem, each naming its field."""
        try:
            return TypeAdapter(cls).validate_python(data)
        except ValidationError as error:
            problems = validation_problems(cls, error)
            refused = SpecError("; ".join(problems))
            refused.problems = problems
            raise refused from None

    @property
    def contribution_ensemble(self) -> Ensemble | None:
        """The ensemble contribution is measured against: the emission's, else the first declared."""
        wanted = self.emission.ensemble if self.emission.kind == "contribution" else None
        return next((e for e in self.ensembles if e.name == wanted), self.ensembles[0] if self.ensembles else None)

    @property
    def subjects(self) -> list[str]:
        return sorted({scope.subject for scope in self.scopes} | set(self.extra_subjects))

    @property
    def max_horizon_seconds(self) -> int:
        return max(scope.resolve_horizon_seconds for scope in self.scopes)

    @property
    def min_interval_seconds(self) -> int:
        return min(scope.prediction_interval_seconds for scope in self.scopes)

    @property
    def higher_is_better(self) -> bool:
        return self.ranking_descending

    def scope(self, key: str) -> Scope | None:
        return next((scope for scope in self.scopes if scope.key == key), None)

    @property
    def cycles_per_hour(self) -> float:
        """Cycles an hour over every scope: one prediction per model each."""
        return sum(3600 / scope.prediction_interval_seconds for scope in self.scopes)

    def cycle_times(self, start: datetime, end: datetime) -> list[tuple[datetime, Scope]]:
        """Every (cycle time, scope) with start <= cycle time < end, in time order. Cycle times are
        multiples of the interval since the epoch, so live and backfill agree on them."""
        cycles: list[tuple[datetime, Scope]] = []
        for scope in self.scopes:
            step = scope.prediction_interval_seconds
            first = math.ceil(start.timestamp() / step) * step
            for seconds in range(first, math.ceil(end.timestamp()), step):
                cycles.append((datetime.fromtimestamp(seconds, tz=timezone.utc), scope))
        cycles.sort(key=lambda item: (item[0], item[1].key))
        return cycles


@dataclass(frozen=True)
class CadenceProblem:
    """A scope whose cycle instants (or resolution instants) can fall further from the feed's
    newest observation than the staleness bound allows: those cycles can never be resolved."""

    scope: Scope
    observation_interval_seconds: int
    staleness_seconds: int
    oldest_entry_seconds: int  # the oldest the newest observation can be at a cycle instant
    oldest_resolution_seconds: int  # ... at a resolution instant (cycle + horizon)
    unresolvable_cycles: int  # of every `pattern_cycles` cycles in a row
    pattern_cycles: int
    kind: str = "candle"

    @property
    def oldest_seconds(self) -> int:
        return max(self.oldest_entry_seconds, self.oldest_resolution_seconds)

    def fixes(self) -> list[str]:
        """Each change that alone makes every cycle resolvable (empty when none of these does)."""
        scope, interval, step = self.scope, self.observation_interval_seconds, self.scope.prediction_interval_seconds
        found = []
        valid_intervals = [
            candidate for candidate in range(step + 1, step + interval + 1)
            if oldest_observation_seconds(candidate, interval, scope.resolve_horizon_seconds) <= self.staleness_seconds
        ]
        if valid_intervals:
            found.append(f"prediction_interval_seconds {valid_intervals[0]}")
        finer = math.gcd(step, interval, scope.resolve_horizon_seconds)
        if finer < interval:
            if self.kind == "tick":
                found.append(f"a tick feed with a tick every {finer} s")
            else:
                unit = "candles" if self.kind == "candle" else f"{self.kind} records"
                found.append(f"{finer} s {unit} (FEED_DEFAULTS, or feed.granularity_seconds in a spec file)")
        if self.oldest_seconds < scope.resolve_horizon_seconds:
            found.append(f"max_price_staleness_seconds {self.oldest_seconds} (it must stay below the "
                         f"{scope.resolve_horizon_seconds} s horizon)")
        return found

    def describe(self) -> str:
        scope = self.scope
        unit = "ticks" if self.kind == "tick" else ("candles" if self.kind == "candle" else f"{self.kind} records")
        share = ("no cycle can ever be resolved: every one" if self.unresolvable_cycles == self.pattern_cycles
                 else f"{self.unresolvable_cycles} cycle(s) in {self.pattern_cycles} can never be resolved and")
        resolution = f"its resolution instant (cycle + {scope.resolve_horizon_seconds} s)"
        entry_late = self.oldest_entry_seconds > self.staleness_seconds
        resolution_late = self.oldest_resolution_seconds > self.staleness_seconds
        if entry_late and resolution_late and self.oldest_entry_seconds == self.oldest_resolution_seconds:
            where = f"{self.oldest_entry_seconds} s old at a cycle instant and at {resolution}"
        else:
            where = " and ".join(
                ([f"{self.oldest_entry_seconds} s old at a cycle instant"] if entry_late else [])
                + ([f"{self.oldest_resolution_seconds} s old at {resolution}"] if resolution_late else [])
            )
        return (
            f"scope {scope.key}: a cycle every {scope.prediction_interval_seconds} s on {self.observation_interval_seconds} s "
            f"{unit} finds the newest observation up to {where}, over max_price_staleness_seconds "
            f"({self.staleness_seconds} s): {share} would be voided after void_after_seconds"
        )

    def message(self) -> str:
        fixes = self.fixes()
        return self.describe() + (f"; use one of: {'; '.join(fixes)}" if fixes else "")


def oldest_observation_seconds(step_seconds: int, observation_interval_seconds: int, offset_seconds: int = 0) -> int:
    """How old the newest observation can be at an instant n * step + offset (any whole n), when
    observations fall on every multiple of observation_interval_seconds since the epoch (a
    candle's close, a feed's tick): the instants visit every residue modulo the interval that is
    congruent to the offset modulo gcd(step, interval), the largest being interval - gcd + that."""
    common = math.gcd(step_seconds, observation_interval_seconds)
    return observation_interval_seconds - common + offset_seconds % common


def cadence_problems(spec: CompetitionSpec, kind: str, observation_interval_seconds: int | None) -> list[CadenceProblem]:
    """The scopes of `spec` with cycles that can never be resolved on a feed observing every
    observation_interval_seconds (a candle's bar length, a tick feed's declared interval; None
    or 0: unknown, nothing to check). Cycle instants are multiples of the interval since the
    epoch (CompetitionSpec.cycle_times), as are the observations of the engine's feeds."""
    if not observation_interval_seconds or observation_interval_seconds <= 0:
        return []
    interval = int(observation_interval_seconds)
    staleness = spec.max_price_staleness_seconds
    problems = []
    for scope in spec.scopes:
        step, horizon = scope.prediction_interval_seconds, scope.resolve_horizon_seconds
        entry = oldest_observation_seconds(step, interval)
        resolution = oldest_observation_seconds(step, interval, horizon)
        if entry <= staleness and resolution <= staleness:
            continue
        pattern = interval // math.gcd(step, interval)  # cycle instants repeat modulo the interval this often
        unresolvable = sum(
            1 for n in range(pattern)
            if (n * step) % interval > staleness or (n * step + horizon) % interval > staleness
        )
        problems.append(CadenceProblem(scope, interval, staleness, entry, resolution, unresolvable, pattern, kind))
    return problems


def check_feed_cadence(spec: CompetitionSpec, kind: str, observation_interval_seconds: int | None) -> None:
    """Refuse a spec whose cycles cannot all be resolved on this feed (see cadence_problems)."""
    problems = cadence_problems(spec, kind, observation_interval_seconds)
    if problems:
        raise SpecError("; ".join(problem.message() for problem in problems))


SCHEMA_DOCUMENT = "docs/competition-spec.schema.json"


def schema_text() -> str:
    """The published JSON schema of CompetitionSpec, as docs/competition-spec.schema.json holds it
    (tests/test_spec_schema.py checks the file equals it; regenerate with
    `.venv/bin/python -m crunch_assets.spec`)."""
    return json.dumps(CompetitionSpec.model_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    from pathlib import Path

    Path(__file__).resolve().parents[1].joinpath(SCHEMA_DOCUMENT).write_text(schema_text())

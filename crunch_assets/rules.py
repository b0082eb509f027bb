"""The plug-in contract: what a competition supplies to the engine, as Dagster resources.

`CompetitionRules` is the interface. `CallableRules` implements it from `module:attr` import paths
(the reference's env-configured callables), checked when the code location loads: a missing or
mistyped callable, one without the parameters the engine passes, or one that requires a parameter
the engine does not pass, fails the load with a message naming the slot and the path.

Typed shapes are optional: a competition that names pydantic models for its model input, model
output and score result gets each validated at the boundary, with the model's own error message.

Ground truth usually comes from stored feed records through the `ground_truth_resolver` slot. A
competition whose truth comes from elsewhere supplies a `GroundTruthResource` instead.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from abc import abstractmethod
from datetime import datetime
from typing import Any, Callable

import dagster as dg
import pydantic

from crunch_assets.records import RecordsView
from crunch_assets.spec import Scope
from crunch_assets.strict import refuse_unknown_fields
from resources.model_runners.base import MethodCall, ModelInterface


class WiringError(ValueError):
    """A competition's plug-in wiring is wrong; the message names the slot and the callable."""


# Fields the rules once had, and where that configuration lives now: a leftover is refused with the way.
MOVED_RULES_FIELDS = {
    "failure_score": "a FAILED or ABSENT prediction's score is the spec's failure_policy "
                     "(FailurePolicy.constant(v) or FailurePolicy.relative(p))",
    "failure_value": "a FAILED or ABSENT prediction's score is the spec's failure_policy "
                     "(FailurePolicy.constant(v) or FailurePolicy.relative(p))",
}


def _refuse_unknown_fields(resource: dg.ConfigurableResource, data: dict) -> None:
    """A rules or ground-truth resource given a keyword that is none of its fields (a typo such
    as `emision_builder=`, a leftover such as `failure_score=`) fails the load: pydantic would
    drop it silently and the engine would run on the default (e.g. the spec's tiered emission
    instead of the competition's builder)."""
    refuse_unknown_fields(type(resource).__name__, data, type(resource).model_fields, WiringError, MOVED_RULES_FIELDS)


class TruthUnavailable(Exception):
    """Raised by a ground-truth source that knows the truth of a cycle will never come (the cycle
    is voided with this reason)."""


class TruthMissing(Exception):
    """Raised by a ground-truth resolver, instead of returning None, to name what is missing (e.g.
    "no BTC price for the entry at ..."). The cycle waits, as for None; once the stored feed (or,
    live, the clock) proves the data will not come, it is voided with this as its reason."""


class CompetitionRules(dg.ConfigurableResource):
    """Competition logic plugged into the engine."""

    def __init__(self, **data: Any):
        _refuse_unknown_fields(self, data)
        super().__init__(**data)

    @abstractmethod
    def model_interface(self) -> ModelInterface: ...

    @abstractmethod
    def build_inference_input(self, scope: Scope, cycle_at: datetime, records: RecordsView) -> Any:
        """The model input of one cycle, from records observed at or before cycle_at."""

    @abstractmethod
    def build_model_calls(self, scope: Scope, inference_input: Any) -> list[MethodCall]:
        """The calls made on each model in one cycle (e.g. feed_update then predict)."""

    @abstractmethod
    def validate_output(self, scope: Scope, output: Any) -> Any:
        """The normalised output; raise ValueError with the reason when it is unusable."""

    @abstractmethod
    def resolve_ground_truth(
        self, scope: Scope, cycle_at: datetime, resolvable_at: datetime, records: RecordsView, max_staleness_seconds: float
    ) -> Any | None:
        """What really happened, from stored records; None (or raise TruthMissing naming what) while
        the data to know it is missing."""

    @abstractmethod
    def score_prediction(self, scope: Scope, output: Any, ground_truth: Any) -> dict:
        """{"value": float | None, "success": bool, "failed_reason": str | None, ...more fields}."""

    def summarize_scores(self, results: list[dict]) -> dict:
        return mean_numeric_fields(results)

    def scoring_callable(self) -> Callable[[Scope, Any, Any], dict]:
        """score_prediction as a plain function, resolved once for a batch of scores."""
        return self.score_prediction

    @property
    def adjusts_cycles(self) -> bool:
        """Whether adjust_cycle does anything (the cross-sectional step is declared)."""
        return type(self).adjust_cycle is not CompetitionRules.adjust_cycle

    def adjust_cycle(self, scope: Scope, cycle_at: datetime, results: dict[str, dict]) -> dict[str, dict]:
        """The optional cross-sectional step: all successful results of one cycle in, adjusted
        results out (e.g. scores relative to the field). Default: unchanged."""
        return results

    def build_emission(self, entries: list) -> list[int] | None:
        """A custom emission over the ranked, eligible entries; None: the spec's emission policy."""
        return None

    def input_model(self) -> type[pydantic.BaseModel] | None:
        return None

    def output_model(self) -> type[pydantic.BaseModel] | None:
        return None

    def score_model(self) -> type[pydantic.BaseModel] | None:
        return None


def mean_numeric_fields(results: list[dict]) -> dict:
    """Mean of each numeric (not boolean) finite field over the results that succeeded."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for result in results:
        if not result.get("success", True):
            continue
        for name, value in result.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
    return {name: sums[name] / counts[name] for name in sorted(sums)}


# slot -> the parameters the engine passes (by name)
CALLABLE_SLOTS: dict[str, tuple[str, ...]] = {
    "input_builder": ("scope", "cycle_at", "records"),
    "call_builder": ("scope", "inference_input"),
    "output_validator": ("scope", "output"),
    "ground_truth_resolver": ("scope", "cycle_at", "resolvable_at", "records", "max_staleness_seconds"),
    "scoring_function": ("scope", "output", "ground_truth"),
    "snapshot_aggregator": ("results",),
    "cross_sectional": ("scope", "cycle_at", "results"),
    "emission_builder": ("entries",),
}
OPTIONAL_SLOTS = ("snapshot_aggregator", "cross_sectional", "emission_builder")
SCHEMA_SLOTS = ("input_schema", "output_schema", "score_schema")


def import_object(slot: str, path: str) -> Any:
    module_name, separator, attribute = path.partition(":")
    if not separator or not module_name or not attribute:
        raise WiringError(f"{slot}: {path!r} is not an import path of the form 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import failure is a wiring error, named
        raise WiringError(f"{slot}: cannot import module {module_name!r} for {path!r}: {error}") from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise WiringError(f"{slot}: module {module_name!r} has no attribute {attribute!r} ({path!r})")
        target = getattr(target, part)
    return target


@functools.lru_cache(maxsize=256)  # resolved once per process, also on the per-prediction path
def resolve_callable(slot: str, path: str, passed_parameters: tuple[str, ...]) -> Callable:
    target = import_object(slot, path)
    if not callable(target):
        raise WiringError(f"{slot}: {path!r} is not callable")
    parameters = inspect.signature(target).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    missing = [name for name in passed_parameters if name not in parameters]
    if missing and not accepts_any:
        raise WiringError(f"{slot}: {path!r} must accept parameters {list(passed_parameters)}; missing {missing}")
    extra = [
        name for name, p in parameters.items()
        if name not in passed_parameters and p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if extra:
        raise WiringError(
            f"{slot}: {path!r} requires parameter(s) {extra} that the engine does not pass "
            f"(it passes {list(passed_parameters)}); give them defaults or remove them"
        )
    return target


@functools.lru_cache(maxsize=64)
def resolve_schema(slot: str, path: str) -> type[pydantic.BaseModel]:
    target = import_object(slot, path)
    if not (isinstance(target, type) and issubclass(target, pydantic.BaseModel)):
        raise WiringError(f"{slot}: {path!r} must be a pydantic BaseModel class")
    return target


class CallableRules(CompetitionRules):
    """Rules wired from import paths (`package.module:function`)."""

    model_base_class: str
    input_builder: str
    call_builder: str
    output_validator: str
    ground_truth_resolver: str
    scoring_function: str
    snapshot_aggregator: str = "crunch_assets.rules:mean_numeric_fields"
    cross_sectional: str | None = None
    emission_builder: str | None = None
    input_schema: str | None = None
    output_schema: str | None = None
    score_schema: str | None = None

    def check_wiring(self) -> None:
        """Resolve every slot now, so a bad path fails the code location's load."""
        for slot, parameters in CALLABLE_SLOTS.items():
            path = getattr(self, slot)
            if path is None and slot in OPTIONAL_SLOTS:
                continue
            resolve_callable(slot, path, parameters)
        for slot in SCHEMA_SLOTS:
            if getattr(self, slot) is not None:
                resolve_schema(slot, getattr(self, slot))
        base = import_object("model_base_class", self.model_base_class)
        if not isinstance(base, type):
            raise WiringError(f"model_base_class: {self.model_base_class!r} is not a class")

    def _call(self, slot: str, **kwargs: Any) -> Any:
        return resolve_callable(slot, getattr(self, slot), CALLABLE_SLOTS[slot])(**kwargs)

    def model_interface(self) -> ModelInterface:
        return ModelInterface(base_class=self.model_base_class)

    def build_inference_input(self, scope, cycle_at, records):
        return self._call("input_builder", scope=scope, cycle_at=cycle_at, records=records)

    def build_model_calls(self, scope, inference_input):
        return self._call("call_builder", scope=scope, inference_input=inference_input)

    def validate_output(self, scope, output):
        return self._call("output_validator", scope=scope, output=output)

    def resolve_ground_truth(self, scope, cycle_at, resolvable_at, records, max_staleness_seconds):
        return self._call(
            "ground_truth_resolver", scope=scope, cycle_at=cycle_at, resolvable_at=resolvable_at, records=records,
            max_staleness_seconds=max_staleness_seconds,
        )

    def score_prediction(self, scope, output, ground_truth):
        return self._call("scoring_function", scope=scope, output=output, ground_truth=ground_truth)

    def scoring_callable(self):
        function = resolve_callable("scoring_function", self.scoring_function, CALLABLE_SLOTS["scoring_function"])
        return lambda scope, output, ground_truth: function(scope=scope, output=output, ground_truth=ground_truth)

    @property
    def adjusts_cycles(self) -> bool:
        return self.cross_sectional is not None

    def summarize_scores(self, results):
        return self._call("snapshot_aggregator", results=results)

    def adjust_cycle(self, scope, cycle_at, results):
        if self.cross_sectional is None:
            return results
        return self._call("cross_sectional", scope=scope, cycle_at=cycle_at, results=results)

    def build_emission(self, entries):
        if self.emission_builder is None:
            return None
        return self._call("emission_builder", entries=entries)

    def input_model(self):
        return resolve_schema("input_schema", self.input_schema) if self.input_schema else None

    def output_model(self):
        return resolve_schema("output_schema", self.output_schema) if self.output_schema else None

    def score_model(self):
        return resolve_schema("score_schema", self.score_schema) if self.score_schema else None


def validation_message(error: pydantic.ValidationError) -> str:
    """A short, readable summary of a pydantic error: 'field: problem; ...'."""
    parts = []
    for item in error.errors()[:5]:
        location = ".".join(str(part) for part in item.get("loc", ())) or "(root)"
        parts.append(f"{location}: {item.get('msg')}")
    return "; ".join(parts)


class GroundTruthResource(dg.ConfigurableResource):
    """Where what really happened comes from.

    `resolve` returns the truth of a cycle, None while it is not known yet, or raises
    TruthUnavailable when it never will be known (the cycle is voided). `reads_feed` says whether
    the engine must wait for the stored feed to cover a cycle's resolution before asking.
    """

    def __init__(self, **data: Any):
        _refuse_unknown_fields(self, data)
        super().__init__(**data)

    @property
    def reads_feed(self) -> bool:
        return True

    @abstractmethod
    def resolve(
        self, rules: CompetitionRules, scope: Scope, cycle_at: datetime, resolvable_at: datetime,
        records: RecordsView, max_staleness_seconds: float,
    ) -> Any | None: ...


class FeedGroundTruth(GroundTruthResource):
    """The default: the competition's ground_truth_resolver over the stored feed records."""

    def resolve(self, rules, scope, cycle_at, resolvable_at, records, max_staleness_seconds):
        return rules.resolve_ground_truth(scope, cycle_at, resolvable_at, records, max_staleness_seconds)

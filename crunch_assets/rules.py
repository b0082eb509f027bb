"""The plug-in contract: what a competition supplies to the engine, as a Dagster resource.

`CompetitionRules` is the interface. `CallableRules` implements it from `module:attr` import paths
(the reference's env-configured callables), checked when the code location loads: a missing or
mistyped callable, or one without the parameters the engine passes, fails with a message naming
the slot and the path.
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

from crunch_assets.prices import PriceSeries
from crunch_assets.spec import Scope
from resources.feeds.base import Candle
from resources.model_runners.base import MethodCall, ModelInterface


class WiringError(ValueError):
    """A competition's plug-in wiring is wrong; the message names the slot and the callable."""


class CompetitionRules(dg.ConfigurableResource):
    """Competition logic plugged into the engine."""

    # The score value recorded for a FAILED or ABSENT prediction, and for an output the scoring
    # function rejects: it counts against the model in every mean (a model that times out in bad
    # cycles must not gain from it). Usually the worst possible score.
    failure_score: float

    @abstractmethod
    def model_interface(self) -> ModelInterface: ...

    @abstractmethod
    def build_inference_input(self, scope: Scope, cycle_at: datetime, candles: list[Candle]) -> dict:
        """The model input of one cycle, from candles that closed at or before cycle_at."""

    @abstractmethod
    def build_model_calls(self, scope: Scope, inference_input: dict) -> list[MethodCall]:
        """The calls made on each model in one cycle (e.g. feed_update then predict)."""

    @abstractmethod
    def validate_output(self, scope: Scope, output: Any) -> dict:
        """The normalised output; raise ValueError with the reason when it is unusable."""

    @abstractmethod
    def resolve_ground_truth(
        self, scope: Scope, cycle_at: datetime, resolvable_at: datetime, prices: PriceSeries, max_staleness_seconds: float
    ) -> dict | None:
        """What really happened, from stored prices; None while the data to know it is missing."""

    @abstractmethod
    def score_prediction(self, scope: Scope, output: dict, ground_truth: dict) -> dict:
        """{"value": float | None, "success": bool, "failed_reason": str | None, ...more fields}."""

    @abstractmethod
    def build_emission(self, ranked_model_ids: list[str]) -> list[int]:
        """frac64 rewards (1,000,000,000 = 100 %) in ranking order; they sum to exactly 1e9."""

    def summarize_scores(self, results: list[dict]) -> dict:
        return mean_numeric_fields(results)


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
    "input_builder": ("scope", "cycle_at", "candles"),
    "call_builder": ("scope", "inference_input"),
    "output_validator": ("scope", "output"),
    "ground_truth_resolver": ("scope", "cycle_at", "resolvable_at", "prices", "max_staleness_seconds"),
    "scoring_function": ("scope", "output", "ground_truth"),
    "emission_builder": ("ranked_model_ids",),
    "snapshot_aggregator": ("results",),
}


@functools.lru_cache(maxsize=256)  # resolved once per process, also on the per-prediction path
def resolve_callable(slot: str, path: str, required_parameters: tuple[str, ...]) -> Callable:
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
    if not callable(target):
        raise WiringError(f"{slot}: {path!r} is not callable")
    parameters = inspect.signature(target).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    missing = [name for name in required_parameters if name not in parameters]
    if missing and not accepts_any:
        raise WiringError(
            f"{slot}: {path!r} must accept parameters {list(required_parameters)}; missing {missing}"
        )
    return target


class CallableRules(CompetitionRules):
    """Rules wired from import paths (`package.module:function`)."""

    model_base_class: str
    input_builder: str
    call_builder: str
    output_validator: str
    ground_truth_resolver: str
    scoring_function: str
    emission_builder: str
    snapshot_aggregator: str = "crunch_assets.rules:mean_numeric_fields"

    def check_wiring(self) -> None:
        """Resolve every slot now, so a bad path fails the code location's load."""
        for slot, parameters in CALLABLE_SLOTS.items():
            resolve_callable(slot, getattr(self, slot), parameters)
        resolve_callable("model_base_class", self.model_base_class, ())

    def _call(self, slot: str, **kwargs: Any) -> Any:
        return resolve_callable(slot, getattr(self, slot), CALLABLE_SLOTS[slot])(**kwargs)

    def model_interface(self) -> ModelInterface:
        return ModelInterface(base_class=self.model_base_class)

    def build_inference_input(self, scope, cycle_at, candles):
        return self._call("input_builder", scope=scope, cycle_at=cycle_at, candles=candles)

    def build_model_calls(self, scope, inference_input):
        return self._call("call_builder", scope=scope, inference_input=inference_input)

    def validate_output(self, scope, output):
        return self._call("output_validator", scope=scope, output=output)

    def resolve_ground_truth(self, scope, cycle_at, resolvable_at, prices, max_staleness_seconds):
        return self._call(
            "ground_truth_resolver",
            scope=scope,
            cycle_at=cycle_at,
            resolvable_at=resolvable_at,
            prices=prices,
            max_staleness_seconds=max_staleness_seconds,
        )

    def score_prediction(self, scope, output, ground_truth):
        return self._call("scoring_function", scope=scope, output=output, ground_truth=ground_truth)

    def build_emission(self, ranked_model_ids):
        return self._call("emission_builder", ranked_model_ids=ranked_model_ids)

    def summarize_scores(self, results):
        return self._call("snapshot_aggregator", results=results)

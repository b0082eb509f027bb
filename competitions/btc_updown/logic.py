"""BTC up/down: the reference starter competition's rules as pure functions.

Models say how likely the price is to be higher one horizon from now: {"p_up": p} or a density
of the return (a normal, or a mixture of normals). Scored with the Brier skill 1 - (p_up - y)^2.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from crunch_assets.records import RecordsView
from crunch_assets.rules import TruthMissing
from crunch_assets.spec import Scope
from resources.model_runners.base import MethodCall

MAX_MIXTURE_COMPONENTS = 64


def build_inference_input(scope: Scope, cycle_at: datetime, records: RecordsView) -> dict:
    """The feed_update payload: the subject's candles closed in the lookback, oldest first."""
    return {
        "symbol": scope.subject,
        "asof_ts": int(cycle_at.timestamp()),
        "candles_1m": [
            {
                "ts": int(c.ts_event.timestamp()),
                "open": c.open,
                "high": c.high,
                "low": c.low,
                "close": c.close,
                "volume": c.volume,
            }
            for c in records.candles(scope.subject)
        ],
    }


def build_model_calls(scope: Scope, inference_input: dict) -> list[MethodCall]:
    return [
        MethodCall("feed_update", (inference_input,)),
        MethodCall("predict", (scope.subject, scope.resolve_horizon_seconds, scope.effective_step_seconds)),
    ]


def _finite_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def density_p_up(density: Any) -> float:
    """P(return > 0) of a density: a builtin normal, or a weight-normalised mixture of densities."""
    if not isinstance(density, dict):
        raise ValueError(f"a density must be an object, got {type(density).__name__}")
    kind = density.get("type")
    if kind == "builtin":
        if density.get("name") != "norm":
            raise ValueError(f"unsupported builtin density {density.get('name')!r} (only 'norm')")
        params = density.get("params")
        if not isinstance(params, dict):
            raise ValueError("a normal density needs params {loc, scale}")
        loc = _finite_number(params.get("loc"), "params.loc")
        scale = _finite_number(params.get("scale"), "params.scale")
        if scale <= 0:
            return 1.0 if loc > 0 else 0.0 if loc < 0 else 0.5
        return normal_cdf(loc / scale)
    if kind == "mixture":
        components = density.get("components")
        if not isinstance(components, list) or not components:
            raise ValueError("a mixture needs a non-empty list of components")
        if len(components) > MAX_MIXTURE_COMPONENTS:
            raise ValueError(f"a mixture has at most {MAX_MIXTURE_COMPONENTS} components")
        total_weight = 0.0
        weighted = 0.0
        for component in components:
            if not isinstance(component, dict):
                raise ValueError("mixture components must be objects {density, weight}")
            weight = _finite_number(component.get("weight", 1.0), "component weight")
            if weight < 0:
                raise ValueError("mixture weights must be >= 0")
            weighted += weight * density_p_up(component.get("density"))
            total_weight += weight
        if total_weight <= 0:
            raise ValueError("mixture weights sum to 0")
        return weighted / total_weight
    raise ValueError(f"unknown density type {kind!r} (expected 'builtin' or 'mixture')")


def validate_output(scope: Scope, output: Any) -> dict:
    """{"p_up": p} with p in [0, 1], or a density; normalised to {"p_up": ..., "form": ...}."""
    if not isinstance(output, dict):
        raise ValueError(f"output must be an object, got {type(output).__name__}")
    if "p_up" in output:
        p_up = _finite_number(output["p_up"], "p_up")
        if not 0.0 <= p_up <= 1.0:
            raise ValueError(f"p_up must be in [0, 1], got {p_up}")
        return {"p_up": p_up, "form": "p_up"}
    if output.get("type") in ("builtin", "mixture"):
        return {"p_up": density_p_up(output), "form": "density", "density": output}
    raise ValueError("output must contain p_up or be a density ({'type': 'builtin'|'mixture', ...})")


def resolve_ground_truth(
    scope: Scope, cycle_at: datetime, resolvable_at: datetime, records: RecordsView, max_staleness_seconds: float
) -> dict:
    """Entry = the last stored price at or before the cycle; resolved = the last at or before
    resolvable_at and strictly after the entry observation, each at most max_staleness_seconds
    old. Otherwise the truth is missing (TruthMissing names the entry or the resolution price):
    never a live, made-up or borrowed price."""
    prices = records.prices(scope.subject).entry_and_resolution(scope.subject, cycle_at, resolvable_at,
                                                                 max_staleness_seconds)
    if prices.missing:
        raise TruthMissing(prices.missing)
    entry, resolved = prices.entry, prices.resolved
    return {
        "entry_price": entry.price,
        "entry_observed_at": entry.observed_at.isoformat(),
        "resolved_price": resolved.price,
        "resolved_observed_at": resolved.observed_at.isoformat(),
        "y_up": resolved.price > entry.price,
        "return": (resolved.price - entry.price) / entry.price,
    }


def brier_skill(scope: Scope, output: dict, ground_truth: dict) -> dict:
    """1 - (p_up - y)^2, y = 1 if the price went up: higher is better, 0.75 for a coin flip."""
    p_up = output.get("p_up") if isinstance(output, dict) else None
    if isinstance(p_up, bool) or not isinstance(p_up, (int, float)) or not math.isfinite(p_up):
        return {"value": None, "success": False, "failed_reason": "output has no numeric p_up"}
    y = 1.0 if ground_truth["y_up"] else 0.0
    return {"value": 1.0 - (p_up - y) ** 2, "success": True, "failed_reason": None, "p_up": p_up, "y_up": y}


def position_return(scope: Scope, output: dict, ground_truth: dict) -> dict:
    """Alternative scoring: position = 2 p_up - 1, value = position x return."""
    p_up = output.get("p_up") if isinstance(output, dict) else None
    if isinstance(p_up, bool) or not isinstance(p_up, (int, float)) or not math.isfinite(p_up):
        return {"value": None, "success": False, "failed_reason": "output has no numeric p_up"}
    position = 2.0 * p_up - 1.0
    return {"value": position * ground_truth["return"], "success": True, "failed_reason": None, "position": position}



# --- the ensemble and the metrics (crunch_assets/ensembles.py, metrics.py) ------------------------

def average_probabilities(scope: Scope, outputs: list[dict], weights: list[float]) -> dict:
    """The ensemble's output: the members' weighted mean probability, fsum(w p) / fsum(w)."""
    total = math.fsum(weights)
    return {"p_up": math.fsum(w * o["p_up"] for w, o in zip(weights, outputs)) / total, "form": "p_up"}


def leave_one_out_brier(scope: Scope, outputs: list[dict], weights: list[float], ground_truth: dict) -> list[float | None]:
    """The Brier skill of average_probabilities without each member, O(1) a member: the others'
    sums are the exact sums minus the member's term, so each equals the ensemble rebuilt from the
    others bit for bit."""
    from crunch_assets.metrics import exact_sum_without_each

    weight_sums = exact_sum_without_each(weights)
    sums = exact_sum_without_each([w * o["p_up"] for w, o in zip(weights, outputs)])
    return [brier_skill(scope, {"p_up": s / total}, ground_truth)["value"] if total > 0 else None
            for s, total in zip(sums, weight_sums)]


def signal(scope: Scope, output: dict) -> float | None:
    """How far the forecast leans up (> 0) or down (< 0)."""
    p_up = output.get("p_up") if isinstance(output, dict) else None
    return None if isinstance(p_up, bool) or not isinstance(p_up, (int, float)) else float(p_up) - 0.5


def realised_return(scope: Scope, ground_truth: dict) -> float | None:
    return ground_truth.get("return") if isinstance(ground_truth, dict) else None

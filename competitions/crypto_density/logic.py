"""crypto_density: density forecasts of BTC, ETH and SOL returns, scored by CRPS.

Every 5 minutes a model forecasts each subject's return over the next 5 minutes, and every 15
minutes over the next 2 hours, as a normal or a mixture of normals (in basis points). The score is
the continuous ranked probability score of the realised return (lower is better), in closed form:
for a normal N(m, s) and outcome y, s * (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)) with
z = (y - m) / s; for a mixture, E|X - y| - E|X - X'| / 2 with the closed form of E|N(m, s)|.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from crunch_assets.records import RecordsView
from crunch_assets.rules import TruthMissing
from crunch_assets.spec import Scope
from resources.model_runners.base import MethodCall

MAX_COMPONENTS = 16
BASIS_POINTS = 10_000.0
SQRT_PI = math.sqrt(math.pi)


def build_inference_input(scope: Scope, cycle_at: datetime, records: RecordsView) -> dict:
    """Every subject's 5-minute candles closed in the lookback (a cross-asset input)."""
    return {
        "asof_ts": int(cycle_at.timestamp()),
        "candles_5m": {
            subject: [
                {"ts": int(c.ts_event.timestamp()), "open": c.open, "high": c.high, "low": c.low, "close": c.close,
                 "volume": c.volume}
                for c in records.candles(subject)
            ]
            for subject in records.subjects
        },
    }


def build_model_calls(scope: Scope, inference_input: dict) -> list[MethodCall]:
    return [
        MethodCall("feed_update", (inference_input,)),
        MethodCall("predict", (scope.subject, scope.resolve_horizon_seconds, scope.effective_step_seconds)),
    ]


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _normal(density: Any, where: str) -> tuple[float, float]:
    if not isinstance(density, dict) or density.get("type") != "builtin" or density.get("name") != "norm":
        raise ValueError(f"{where} must be {{'type': 'builtin', 'name': 'norm', 'params': {{'loc', 'scale'}}}}")
    params = density.get("params")
    if not isinstance(params, dict):
        raise ValueError(f"{where} needs params {{loc, scale}}")
    loc, scale = _number(params.get("loc"), f"{where}.params.loc"), _number(params.get("scale"), f"{where}.params.scale")
    if scale <= 0:
        raise ValueError(f"{where}.params.scale must be > 0, got {scale}")
    return loc, scale


def validate_output(scope: Scope, output: Any) -> dict:
    """A normal or a mixture of normals, normalised to {"components": [[weight, loc, scale], ...]}
    with weights summing to 1."""
    if not isinstance(output, dict):
        raise ValueError(f"output must be an object, got {type(output).__name__}")
    if output.get("type") == "builtin":
        loc, scale = _normal(output, "output")
        return {"components": [[1.0, loc, scale]]}
    if output.get("type") == "mixture":
        components = output.get("components")
        if not isinstance(components, list) or not components:
            raise ValueError("a mixture needs a non-empty list of components")
        if len(components) > MAX_COMPONENTS:
            raise ValueError(f"a mixture has at most {MAX_COMPONENTS} components, got {len(components)}")
        parsed = []
        for i, component in enumerate(components):
            if not isinstance(component, dict):
                raise ValueError("mixture components must be objects {density, weight}")
            weight = _number(component.get("weight", 1.0), f"components[{i}].weight")
            if weight < 0:
                raise ValueError(f"components[{i}].weight must be >= 0")
            parsed.append([weight, *_normal(component.get("density"), f"components[{i}].density")])
        total = math.fsum(w for w, _, _ in parsed)
        if total <= 0:
            raise ValueError("mixture weights sum to 0")
        return {"components": [[w / total, m, s] for w, m, s in parsed]}
    raise ValueError("output must be a normal {'type': 'builtin', 'name': 'norm', ...} or {'type': 'mixture', ...}")


def resolve_ground_truth(
    scope: Scope, cycle_at: datetime, resolvable_at: datetime, records: RecordsView, max_staleness_seconds: float
) -> dict:
    """The realised return in basis points between the last stored close at or before the cycle and
    the last at or before resolvable_at (strictly after the entry); while either is missing,
    TruthMissing names which."""
    prices = records.prices(scope.subject).entry_and_resolution(scope.subject, cycle_at, resolvable_at,
                                                                 max_staleness_seconds)
    if prices.missing:
        raise TruthMissing(prices.missing)
    entry, resolved = prices.entry, prices.resolved
    return {
        "entry_price": entry.price,
        "resolved_price": resolved.price,
        "return_bps": BASIS_POINTS * (resolved.price - entry.price) / entry.price,
    }


def _phi(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _Phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _abs_mean(mean: float, sd: float) -> float:
    """E|X| for X ~ N(mean, sd)."""
    return 2 * sd * _phi(mean / sd) + mean * (2 * _Phi(mean / sd) - 1)


def crps(components: list[list[float]], outcome: float) -> float:
    """CRPS of a mixture of normals [(weight, loc, scale), ...] for `outcome` (closed form)."""
    if len(components) == 1:
        _, loc, scale = components[0]
        z = (outcome - loc) / scale
        return scale * (z * (2 * _Phi(z) - 1) + 2 * _phi(z) - 1 / SQRT_PI)
    spread_to_outcome = math.fsum(w * _abs_mean(outcome - m, s) for w, m, s in components)
    spread_within = math.fsum(
        wi * wj * _abs_mean(mi - mj, math.hypot(si, sj)) for wi, mi, si in components for wj, mj, sj in components
    )
    return spread_to_outcome - 0.5 * spread_within


def crps_score(scope: Scope, output: dict, ground_truth: dict) -> dict:
    components = output.get("components") if isinstance(output, dict) else None
    if not components:
        return {"value": None, "success": False, "failed_reason": "output has no density components"}
    value = crps(components, ground_truth["return_bps"])
    return {"value": value, "success": True, "failed_reason": None, "outcome_bps": ground_truth["return_bps"],
            "mean_bps": math.fsum(w * m for w, m, _ in components)}


# --- the ensemble and the metrics (crunch_assets/ensembles.py, metrics.py) ------------------------

def mix_densities(scope: Scope, outputs: list[dict], weights: list[float]) -> dict:
    """The ensemble's output: the mixture of the members' densities, member i's components weighted
    by w_i / fsum(w) (a mixture is not re-validated: it may hold more than MAX_COMPONENTS)."""
    total = math.fsum(weights)
    return {"components": [[w / total * c, m, s] for w, o in zip(weights, outputs) for c, m, s in o["components"]]}


def leave_one_out_crps(scope: Scope, outputs: list[dict], weights: list[float], ground_truth: dict) -> list[float | None]:
    """The CRPS of mix_densities without each member, from the pairwise terms computed once:
    CRPS = sum_j w_j a_j - 1/2 sum_jl w_j w_l b_jl with a_j = E|X_j - y| and b_jl = E|X_j - X_l|;
    without member k (components K, weight share omega_k) the sums lose K's rows and columns and
    the weights are divided by 1 - omega_k. O(components^2) for all members together (numpy),
    against O(members x components^2) rebuilding each."""
    import numpy as np

    if len(outputs) < 2:
        return [None] * len(outputs)
    total = math.fsum(weights)
    owner, w, loc, scale = [], [], [], []
    for k, (weight, output) in enumerate(zip(weights, outputs)):
        for c, m, sd in output["components"]:
            owner.append(k)
            w.append(weight / total * c)
            loc.append(m)
            scale.append(sd)
    owner, w, loc, scale = np.array(owner), np.array(w), np.array(loc), np.array(scale)
    y = ground_truth["return_bps"]
    a = _abs_means(y - loc, scale)
    b = _abs_means(loc[:, None] - loc[None, :], np.hypot(scale[:, None], scale[None, :]))
    bw = b @ w
    members = len(outputs)
    omega = np.bincount(owner, weights=w, minlength=members)
    a_k = np.bincount(owner, weights=w * a, minlength=members)
    r_k = np.bincount(owner, weights=w * bw, minlength=members)
    whole_a, whole_b = float(w @ a), float(w @ bw)
    result: list[float | None] = []
    for k in range(members):
        rest = 1.0 - omega[k]
        if rest <= 1e-15:
            result.append(None)
            continue
        own = owner == k
        q_k = float(w[own] @ b[np.ix_(own, own)] @ w[own])
        value = (whole_a - a_k[k]) / rest - 0.5 * (whole_b - 2 * r_k[k] + q_k) / rest ** 2
        result.append(float(value))
    return result


def _abs_means(mean, sd):
    """E|X| for X ~ N(mean, sd), elementwise (as _abs_mean)."""
    import numpy as np

    z = mean / sd
    phi = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf, otypes=[float])(z / math.sqrt(2.0)))
    return 2 * sd * phi + mean * (2 * cdf - 1)


def signal(scope: Scope, output: dict) -> float | None:
    """The forecast's mean return in basis points."""
    components = output.get("components") if isinstance(output, dict) else None
    if not components:
        return None
    return math.fsum(w * m for w, m, _ in components)


def realised_return(scope: Scope, ground_truth: dict) -> float | None:
    return ground_truth.get("return_bps") if isinstance(ground_truth, dict) else None

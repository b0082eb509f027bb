"""Ensembles: virtual models built every cycle from that cycle's stored outputs.

An ensemble declared in the spec (`spec.Ensemble`) is one more prediction of every cycle, model id
`__ensemble_<name>__` (ids starting with "__" are refused to every real model: resources/model_ids.py).
Its members are the cycle's models that answered (made status PENDING, the output as the
competition's validator stored it), in model-id order; their weights come from the declared
weighting, their outputs combine by the declared combine. It is built in the same step, from the
same rows, and written in the same transaction as the cycle's predictions (predictions.run_cycles),
so it needs no waiting of its own: a cycle is stored whole, with every member's output, or not at
all, and a stored cycle is never run again. Live, backfill and any replay order store the same
ensemble output, because it is a function of that cycle's outputs only.

It is resolved and scored like a model (scores.settle), but never changes a real model's score:
it is left out of the cycle's relative failure value and of the cross-sectional step
(`real_model_ids`). It is ranked and shown, marked, never paid (checkpoints.unpaid_reasons), never
taken for a copy nor makes a member one (copies: virtual outputs are not read), and its output is
an output: under the embargo until its cycle resolves (resources/store/reports.py).

The prediction's `meta` records the members and weights it was built from, which is what
contribution (crunch_assets/contribution.py) rebuilds the ensemble without each member from.

**Windowed ensembles** (members "top_n" / "min_metric", weighting "inverse_variance") read the
models' scores over a window, so they are not built with the cycle's predictions (those scores may
not exist yet: a replay can run the hours in any order) but when the cycle is scored
(scores.settle), from data fixed before the cycle: the window of a cycle at t is the same scope's
cycles in [max(t - window_seconds, spec.start), t) that resolve by t (resolvable_at <= t). The
cycle is scored only once every one of those cycles is stored and settled (RESOLVED or VOIDED);
until then it waits, counted `waiting_for_ensemble_window` and logged, and is never scored with a
partial window. The statistics are over the real models' stored score values in the window
(penalised ones included: a failure scores the failure value); a model with fewer than
min_history_cycles of them is not a member. Members are the models that answered the cycle and pass
the filter; top_n ranks by the metric (best first by the spec's direction), ties by model id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping, Sequence

import orjson

from crunch_assets.rules import WiringError, resolve_callable
from crunch_assets.spec import CompetitionSpec, Ensemble, Scope
from resources.model_ids import is_virtual_model_id
from resources.store.rows import PredictionRow
from resources.store.lifecycles import PredictionStatus

# slot -> the parameters the engine passes (by name), as rules.CALLABLE_SLOTS
ENSEMBLE_SLOTS: dict[str, tuple[str, ...]] = {
    "combine": ("scope", "outputs", "weights"),
    "weighting": ("scope", "model_ids", "outputs"),
    "leave_one_out": ("scope", "outputs", "weights", "ground_truth"),
}
BUILTIN = {"combine": "mean", "weighting": "equal"}
BUILTIN_WEIGHTINGS = ("equal", "inverse_variance")
# inverse_variance: a member whose scores did not vary over the window weighs as this variance
VARIANCE_FLOOR = 1e-12
META_KEY = "ensemble"


def is_ensemble(model_id: str) -> bool:
    return is_virtual_model_id(model_id)


def ensemble_ids(spec: CompetitionSpec) -> list[str]:
    return [e.model_id for e in spec.ensembles]


def real_model_ids(model_ids: Sequence[str]) -> list[str]:
    return [m for m in model_ids if not is_virtual_model_id(m)]


def slot_callable(ensemble: Ensemble, slot: str) -> Callable | None:
    """The declared callable of an ensemble's slot (None: the builtin, or no fast path)."""
    path = getattr(ensemble, slot)
    if path is None or path == BUILTIN.get(slot) or (slot == "weighting" and path in BUILTIN_WEIGHTINGS):
        return None
    try:
        return resolve_callable(f"ensemble {ensemble.name}: {slot}", path, ENSEMBLE_SLOTS[slot])
    except WiringError:
        raise
    except Exception as error:  # any failure to resolve is the declaration's
        raise WiringError(f"ensemble {ensemble.name}: {slot}: {path!r}: {error}") from error


def check_declarations(spec: CompetitionSpec) -> None:
    """Resolve every declared callable now, so that a bad path fails the code location's load with
    the ensemble, the slot and the path named (never a default in its place)."""
    for ensemble in spec.ensembles:
        for slot in ENSEMBLE_SLOTS:
            slot_callable(ensemble, slot)
    from crunch_assets import metrics

    metrics.check_declarations(spec)


def mean_fields(outputs: Sequence[Any]) -> list[str]:
    """The numeric (not boolean), finite top-level fields every output has, sorted."""
    common: set[str] | None = None
    for output in outputs:
        if not isinstance(output, dict):
            return []
        numeric = {k for k, v in output.items()
                   if not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)}
        common = numeric if common is None else common & numeric
    return sorted(common or ())


def weighted_mean(outputs: Sequence[dict], weights: Sequence[float]) -> dict:
    """The builtin combine "mean": each common numeric field as fsum(w x) / fsum(w) (fsum is
    exactly rounded, so the member order never changes a bit)."""
    total = math.fsum(weights)
    if not total > 0:
        raise ValueError("the weights sum to 0")
    return {f: math.fsum(w * float(o[f]) for w, o in zip(weights, outputs)) / total for f in mean_fields(outputs)}


@dataclass(frozen=True)
class WindowStats:
    """A model's stored score values over an ensemble's window."""

    count: int
    mean_score: float
    variance: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "WindowStats":
        n = len(values)
        mean = math.fsum(values) / n
        return cls(n, mean, math.fsum((v - mean) ** 2 for v in values) / n)


def window_start(spec: CompetitionSpec, ensemble: Ensemble, cycle_at: datetime) -> datetime:
    return max(cycle_at - timedelta(seconds=ensemble.window_seconds), spec.start)


def window_cycles_due(spec: CompetitionSpec, ensemble: Ensemble, scope: Scope, cycle_at: datetime) -> list[datetime]:
    """The cycle times of the scope whose scores make the window of the cycle at `cycle_at`."""
    horizon = timedelta(seconds=scope.resolve_horizon_seconds)
    return [at for at, s in spec.cycle_times(window_start(spec, ensemble, cycle_at), cycle_at)
            if s.key == scope.key and at + horizon <= cycle_at]


def select_members(ensemble: Ensemble, answered: Sequence[str], stats: Mapping[str, WindowStats],
                   higher_is_better: bool) -> list[str]:
    """The answering models the ensemble's filter keeps, in model-id order."""
    known = sorted(m for m in answered if m in stats and stats[m].count >= ensemble.min_history_cycles)
    if ensemble.members == "all":
        return known
    value = {m: getattr(stats[m], ensemble.metric) for m in known}
    if ensemble.members == "min_metric":
        return [m for m in known if (value[m] >= ensemble.min_metric if higher_is_better else value[m] <= ensemble.min_metric)]
    if ensemble.members == "top_n":
        best = sorted(known, key=lambda m: (-value[m] if higher_is_better else value[m], m))
        return sorted(best[:ensemble.top_n])
    raise WiringError(f"ensemble {ensemble.name}: unknown members {ensemble.members!r}")


def member_weights(ensemble: Ensemble, scope: Scope, model_ids: list[str], outputs: list[Any],
                   stats: Mapping[str, WindowStats] | None = None) -> list[float]:
    if ensemble.weighting == "inverse_variance":
        return [1.0 / max(stats[m].variance, VARIANCE_FLOOR) for m in model_ids]
    function = slot_callable(ensemble, "weighting")
    if function is None:
        return [1.0] * len(model_ids)
    weights = list(function(scope=scope, model_ids=list(model_ids), outputs=list(outputs)))
    if len(weights) != len(model_ids):
        raise ValueError(f"the weighting returned {len(weights)} weights for {len(model_ids)} members")
    checked = []
    for model_id, w in zip(model_ids, weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"the weighting gave {model_id} {w!r}: weights must be finite numbers >= 0")
        checked.append(float(w))
    if not math.fsum(checked) > 0:
        raise ValueError("the weighting gave every member 0")
    return checked


def combine(ensemble: Ensemble, scope: Scope, outputs: list[Any], weights: list[float]) -> Any:
    function = slot_callable(ensemble, "combine")
    if function is None:
        return weighted_mean(outputs, weights)
    return function(scope=scope, outputs=list(outputs), weights=list(weights))


def build(ensemble: Ensemble, scope: Scope, members: Sequence[tuple[str, Any]],
          stats: Mapping[str, WindowStats] | None = None, higher_is_better: bool = True) -> PredictionRow:
    """The ensemble's prediction of one cycle from its members' stored outputs ((model_id, output),
    any order): PENDING with the combined output; ABSENT when fewer than min_members answered;
    FAILED with the reason when the weighting or the combine raised or gave something that is not
    a JSON object of finite numbers."""
    ordered = sorted(members, key=lambda item: item[0])
    if ensemble.windowed:
        if stats is None:
            raise WiringError(f"ensemble {ensemble.name} reads a window of scores: it is built when its cycle is scored")
        kept = set(select_members(ensemble, [m for m, _ in ordered], stats, higher_is_better))
        ordered = [(m, o) for m, o in ordered if m in kept]
    model_ids = [m for m, _ in ordered]
    outputs = [o for _, o in ordered]
    meta = {META_KEY: ensemble.name, "members": model_ids}
    if ensemble.windowed:
        meta["window"] = {m: [stats[m].count, stats[m].mean_score, stats[m].variance] for m in model_ids}
    if len(ordered) < ensemble.min_members:
        what = "answered and passed the filter" if ensemble.windowed else "answered"
        return PredictionRow(ensemble.model_id, PredictionStatus.ABSENT,
                             f"{len(ordered)} member(s) {what}, fewer than the ensemble's {ensemble.min_members}",
                             meta=meta)
    try:
        weights = member_weights(ensemble, scope, model_ids, outputs, stats)
        meta["weights"] = weights
        output = combine(ensemble, scope, outputs, weights)
        _check_output(output)
    except Exception as error:  # the declared callables' failure is this cycle's ensemble's, never the cycle's
        return PredictionRow(ensemble.model_id, PredictionStatus.FAILED, f"ensemble error: {type(error).__name__}: {error}"[:1000],
                             meta=meta)
    return PredictionRow(ensemble.model_id, PredictionStatus.PENDING, None, None, output, meta)


def _check_output(output: Any) -> None:
    if not isinstance(output, dict) or not output:
        raise ValueError(f"the combined output must be a non-empty object, got {type(output).__name__}")
    orjson.dumps(output)  # JSON-serialisable
    _finite(output)


def _finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"the combined output holds {value!r}")
    if isinstance(value, dict):
        for item in value.values():
            _finite(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _finite(item)


def cycle_rows(spec: CompetitionSpec, scope: Scope, rows: Sequence[PredictionRow]) -> list[PredictionRow]:
    """Every declared ensemble's prediction of a cycle that reads no window, from the cycle's rows
    as they are stored: the hook of predictions.run_cycles. Windowed ones: `windowed_rows`."""
    members = answered_outputs((r.model_id, r.status, r.inference_output) for r in rows)
    return [build(ensemble, scope, members) for ensemble in spec.ensembles if not ensemble.windowed]


def answered_outputs(rows: Iterable[tuple[str, str, Any]]) -> list[tuple[str, Any]]:
    return [(model_id, output) for model_id, status, output in rows
            if status == PredictionStatus.PENDING and output is not None and not is_virtual_model_id(model_id)]


def window_stats(scores_by_cycle: Mapping[datetime, Iterable[tuple[str, float]]],
                 cycles: Iterable[datetime]) -> dict[str, WindowStats]:
    """model_id -> its statistics over its score values (model_id, value) in `cycles` (the
    window's RESOLVED cycles); virtual models are left out. Values are taken in cycle order and
    summed with fsum (exact), so the order they were stored or read in never changes a bit."""
    values: dict[str, list[float]] = {}
    for cycle_at in sorted(set(cycles)):
        for model_id, value in scores_by_cycle.get(cycle_at, ()):
            if not is_virtual_model_id(model_id):
                values.setdefault(model_id, []).append(float(value))
    return {m: WindowStats.of(v) for m, v in sorted(values.items())}

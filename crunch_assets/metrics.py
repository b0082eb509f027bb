"""The metrics registry: named functions over a model's scored cycles and, for field metrics, the
other models' outputs of the same cycles, computed incrementally in the rollups.

A competition declares which it computes (`spec.metrics.names`) and how an output and a truth read
as numbers (`signal(scope, output)`, `outcome(scope, ground_truth)`). Per model, scope and hour the
rollup stores each metric's *sufficient statistics* (sums, counts, an hourly rank correlation, a
drawdown summary) in the hour's snapshot (`meta["metrics"]`): computed once when the hour changes,
from that hour's stored outputs, truths and scores only. A window's value combines its hours'
statistics (`window_metrics`), so no metric ever reads all history: the cost of a window is its
hours, and the cost of a rollup is the hours that changed.

| metric | per hour | over a window |
|---|---|---|
| ic | Spearman rank correlation of signal and outcome over the hour's cycles (>= 3 pairs) | the mean of the hourly ICs |
| ic_sharpe | (the hourly ICs) | their mean / population standard deviation (>= 2 hours) |
| hit_rate | cycles where signal and outcome have the same sign, of those where neither is 0 | hits / counted |
| mean_return | sign(signal) x outcome, summed | its mean |
| sortino_ratio | the same, with the sum of squares of the negative ones | mean / sqrt(mean square of the negative ones) |
| turnover | sum of abs(signal change) between consecutive answers, first and last | the mean change, hours joined end to end |
| model_correlation | Pearson sums of (signal, the mean signal of the other models of the cycle) | their Pearson correlation |
| ensemble_correlation | Pearson sums of (signal, the ensemble's signal) | their Pearson correlation |
| fnc | Spearman correlation of (signal - the cycle's mean signal) and outcome | the mean of the hourly values |
| max_drawdown | a drawdown summary of the cumulative oriented score minus the cycle's field mean | the largest fall, hours joined in time order (<= 0) |
| contribution | sum over the cycles of (ensemble score - score of the ensemble without the model), oriented | the sum / the counted cycles of the window |

Every sum is exactly rounded (math.fsum, or exact integer arithmetic), so a replay in any order
stores the same bits, and a window's value is the same whichever order its hours are read in.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Sequence

from crunch_assets.rules import resolve_callable
from crunch_assets.spec import CompetitionSpec, Scope
from resources.model_ids import is_virtual_model_id
from resources.store.lifecycles import PredictionStatus

META_KEY = "metrics"
MIN_RANK_PAIRS = 3
SLOTS = {"signal": ("scope", "output"), "outcome": ("scope", "ground_truth")}


# --- pure functions ------------------------------------------------------------------------------

def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span (as scipy.stats.rankdata)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation (None with fewer than 2 pairs or a constant side)."""
    n = len(x)
    if n != len(y) or n < 2:
        return None
    return correlation_from_sums(moments(x, y))


def spearman(x: Sequence[float], y: Sequence[float], min_pairs: int = MIN_RANK_PAIRS) -> float | None:
    """Spearman rank correlation: Pearson of the average ranks (None below min_pairs or constant)."""
    if len(x) != len(y) or len(x) < min_pairs:
        return None
    return pearson(average_ranks(x), average_ranks(y))


def moments(x: Sequence[float], y: Sequence[float]) -> list[float]:
    """[n, mean x, mean y, sum of squared deviations of x, of y, sum of co-deviations]: centred, so
    that a correlation of values far from 0 keeps its precision."""
    n = len(x)
    if n == 0:
        return [0.0] * 6
    # a constant side is exactly constant (its mean the value itself, no spread): rounding must never
    # give a constant answer a correlation, and so a diversity
    flat_x, flat_y = min(x) == max(x), min(y) == max(y)
    mx = float(x[0]) if flat_x else math.fsum(x) / n
    my = float(y[0]) if flat_y else math.fsum(y) / n
    dx, dy = [a - mx for a in x], [b - my for b in y]
    sxx = 0.0 if flat_x else math.fsum(a * a for a in dx)
    syy = 0.0 if flat_y else math.fsum(b * b for b in dy)
    sxy = 0.0 if flat_x or flat_y else math.fsum(a * b for a, b in zip(dx, dy))
    return [float(n), mx, my, sxx, syy, sxy]


def add_moments(parts: Iterable[Sequence[float]]) -> list[float]:
    """The moments of consecutive pieces joined (Chan et al.'s pairwise update), in the order given:
    a window joins its hours in time order, so the result does not depend on how they were read."""
    total = [0.0] * 6
    for part in parts:
        n_a, n_b = total[0], part[0]
        if n_b == 0:
            continue
        if n_a == 0:
            total = list(part)
            continue
        n = n_a + n_b
        dx, dy = part[1] - total[1], part[2] - total[2]
        total = [n, total[1] + dx * n_b / n, total[2] + dy * n_b / n,
                 total[3] + part[3] + dx * dx * n_a * n_b / n, total[4] + part[4] + dy * dy * n_a * n_b / n,
                 total[5] + part[5] + dx * dy * n_a * n_b / n]
    return total


def correlation_from_sums(m: Sequence[float]) -> float | None:
    """Pearson correlation from moments (None with fewer than 2 pairs or a constant side)."""
    n, _, _, sxx, syy, sxy = m
    if n < 2 or sxx <= 0 or syy <= 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def drawdown_summary(values: Sequence[float]) -> list[float]:
    """[total, highest prefix sum, lowest prefix sum, largest fall] of a series (prefixes include
    the empty one, 0): enough to join summaries of consecutive pieces in order."""
    total, peak, low, fall = 0.0, 0.0, 0.0, 0.0
    exact = 0
    for value in values:
        exact += _fixed(value)
        total = exact / _ONE  # each prefix sum exactly rounded
        peak, low = max(peak, total), min(low, total)
        fall = max(fall, peak - total)
    return [total, peak, low, fall]


def join_drawdowns(first: Sequence[float], second: Sequence[float]) -> list[float]:
    """The summary of `first` then `second`."""
    t1, p1, l1, f1 = first
    t2, p2, l2, f2 = second
    return [t1 + t2, max(p1, t1 + p2), min(l1, t1 + l2), max(f1, f2, p1 - (t1 + l2))]


def hit_counts(signals: Sequence[float], outcomes: Sequence[float]) -> list[int]:
    """[hits, counted]: cycles where both are non-zero, and those where their signs agree."""
    counted = [(s, o) for s, o in zip(signals, outcomes) if s != 0 and o != 0]
    return [sum(1 for s, o in counted if (s > 0) == (o > 0)), len(counted)]


def signed_returns(signals: Sequence[float], outcomes: Sequence[float]) -> list[float]:
    return [math.copysign(1.0, s) * o for s, o in zip(signals, outcomes) if s != 0]


def exact_sum_without_each(values: Sequence[float]) -> list[float]:
    """The exactly rounded sum of all values but each one, in O(n) (the sum is kept as an exact
    integer multiple of 2**-1074, the smallest float step): equal, bit for bit, to math.fsum of
    the others."""
    fixed = [_fixed(v) for v in values]
    total = sum(fixed)
    return [(total - f) / _ONE for f in fixed]


_ONE = 1 << 1074


def _fixed(value: float) -> int:
    numerator, denominator = float(value).as_integer_ratio()
    return numerator * (_ONE // denominator)


# --- per hour ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoredAnswer:
    """One prediction of a resolved cycle, as stored, with its score."""

    status: str
    output: Any
    meta: dict
    value: float | None
    success: bool | None


@dataclass(frozen=True)
class ResolvedCycle:
    scope_key: str
    cycle_at: datetime
    truth: Any
    failure_value: float | None
    answers: dict[str, StoredAnswer]  # model_id -> its prediction


@dataclass(frozen=True)
class Readers:
    """The competition's callables the metrics use, resolved once."""

    signal: Callable[[Scope, Any], float | None] | None
    outcome: Callable[[Scope, Any], float | None] | None
    score: Callable[[Scope, Any, Any], float | None]


def check_declarations(spec: CompetitionSpec) -> None:
    for slot in SLOTS:
        path = getattr(spec.metrics, slot)
        if path is not None:
            resolve_callable(f"metrics: {slot}", path, SLOTS[slot])


def readers(spec: CompetitionSpec, rules) -> Readers:
    def wrap(slot: str):
        path = getattr(spec.metrics, slot)
        if path is None:
            return None
        function = resolve_callable(f"metrics: {slot}", path, SLOTS[slot])
        names = SLOTS[slot]
        return lambda scope, value: _number(function(**{names[0]: scope, names[1]: value}))

    scoring = rules.scoring_callable()

    def score(scope: Scope, output: Any, truth: Any) -> float | None:
        try:
            result = scoring(scope, output, truth)
        except Exception:  # an output the scoring cannot score has no score: counted at the failure value
            return None
        value = result.get("value") if isinstance(result, dict) else None
        return float(value) if result.get("success") and _number(value) is not None else None

    return Readers(wrap("signal"), wrap("outcome"), score)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def enabled(spec: CompetitionSpec) -> bool:
    return spec.metrics.enabled


def hour_statistics(spec: CompetitionSpec, scope: Scope, cycles: Sequence[ResolvedCycle],
                    read: Readers) -> dict[str, dict]:
    """model_id -> the statistics of its declared metrics over one scope-hour's resolved cycles."""
    from crunch_assets import contribution  # its leave-one-out needs the ensembles' declarations

    names = set(spec.metrics.names)
    orient = 1.0 if spec.higher_is_better else -1.0
    want_signal = bool(names & {"ic", "ic_sharpe", "hit_rate", "mean_return", "sortino_ratio", "turnover", "fnc",
                                "model_correlation", "ensemble_correlation"})
    want_outcome = bool(names & {"ic", "ic_sharpe", "hit_rate", "mean_return", "sortino_ratio", "fnc"})
    ensembles = {e.model_id: e for e in spec.ensembles}
    pairs: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for cycle in sorted(cycles, key=lambda c: c.cycle_at):
        answers = cycle.answers
        outcome = read.outcome(scope, cycle.truth) if want_outcome and read.outcome else None
        signals: dict[str, float] = {}
        if want_signal and read.signal is not None:
            for model_id in sorted(answers):
                answer = answers[model_id]
                if answer.status == PredictionStatus.PENDING and answer.output is not None:
                    try:
                        value = read.signal(scope, answer.output)
                    except Exception:  # an output the signal cannot read is no signal
                        value = None
                    if value is not None:
                        signals[model_id] = value
        real = [m for m in signals if not is_virtual_model_id(m)]
        if signals:
            others = exact_sum_without_each([signals[m] for m in real]) if len(real) >= 2 else []
            field_all = sum(_fixed(signals[m]) for m in real) / (len(real) * _ONE) if real else None
            loo_field = {m: others[i] / (len(real) - 1) for i, m in enumerate(real)} if others else {}
            for model_id, x in signals.items():
                acc = pairs[model_id]
                acc["turn"].append((cycle.cycle_at.timestamp(), x))
                if outcome is not None:
                    acc["xy"].append((x, outcome))
                    if field_all is not None:
                        acc["fnc"].append((x - field_all, outcome))
                field = loo_field.get(model_id) if not is_virtual_model_id(model_id) else field_all
                if field is not None and (len(real) >= 2 or is_virtual_model_id(model_id)):
                    acc["cf"].append((x, field))
                for ensemble_id in ensembles:
                    if ensemble_id in signals:
                        acc["ce:" + ensembles[ensemble_id].name].append((x, signals[ensemble_id]))
        if "max_drawdown" in names:
            scored = {m: a.value for m, a in answers.items() if a.value is not None}
            field_scores = [v for m, v in scored.items() if not is_virtual_model_id(m)]
            if field_scores:
                mean = math.fsum(field_scores) / len(field_scores)
                for model_id, value in scored.items():
                    pairs[model_id]["dd"].append(orient * (value - mean))
        if "contribution" in names:
            for ensemble in ensembles.values():
                for model_id, value in contribution.cycle_contributions(ensemble, scope, cycle, read, orient).items():
                    pairs[model_id]["c:" + ensemble.name].append(value)
    return {model_id: _statistics(names, acc) for model_id, acc in pairs.items()}


def _statistics(names: set[str], acc: Mapping[str, list]) -> dict:
    stats: dict[str, Any] = {}
    xy = acc.get("xy", [])
    if names & {"ic", "ic_sharpe"} and xy:
        stats["ic"] = [spearman([x for x, _ in xy], [y for _, y in xy]), len(xy)]
    if "fnc" in names and acc.get("fnc"):
        residual = acc["fnc"]
        stats["fnc"] = [spearman([x for x, _ in residual], [y for _, y in residual]), len(residual)]
    if "hit_rate" in names and xy:
        stats["hit"] = hit_counts([x for x, _ in xy], [y for _, y in xy])
    if names & {"mean_return", "sortino_ratio"} and xy:
        returns = signed_returns([x for x, _ in xy], [y for _, y in xy])
        negative = [r for r in returns if r < 0]
        stats["ret"] = [len(returns), math.fsum(returns), len(negative), math.fsum(r * r for r in negative)]
    if "turnover" in names and acc.get("turn"):
        series = acc["turn"]
        steps = [abs(b - a) for (_, a), (_, b) in zip(series, series[1:])]
        stats["turn"] = [series[0][0], series[0][1], series[-1][0], series[-1][1], math.fsum(steps), len(steps)]
    if "model_correlation" in names and acc.get("cf"):
        stats["cf"] = moments([x for x, _ in acc["cf"]], [f for _, f in acc["cf"]])
    if "ensemble_correlation" in names:
        for key, values in acc.items():
            if key.startswith("ce:"):
                stats[key] = moments([x for x, _ in values], [e for _, e in values])
    if "max_drawdown" in names and acc.get("dd"):
        stats["dd"] = drawdown_summary(acc["dd"])
    if "contribution" in names:
        for key, values in acc.items():
            if key.startswith("c:"):
                stats[key] = [math.fsum(values), len(values)]
    return stats


# --- over a window -------------------------------------------------------------------------------

@dataclass(frozen=True)
class HourRow:
    """What a window reads of one model's scope-hour: its statistics."""

    model_id: str
    scope_key: str
    period_start: datetime
    stats: dict


def scope_value(spec: CompetitionSpec, scope: Scope | None, name: str, hours: Sequence[HourRow],
                counted_cycles: int, ensemble: str | None = None) -> float | None:
    """One metric of one model and scope over a window, from its hours (any order)."""
    ordered = sorted(hours, key=lambda h: h.period_start)
    ensemble = ensemble or (spec.contribution_ensemble.name if spec.contribution_ensemble else None)
    if name in ("ic", "ic_sharpe", "fnc"):
        key = "fnc" if name == "fnc" else "ic"
        values = [h.stats[key][0] for h in ordered if key in h.stats and h.stats[key][0] is not None]
        if not values:
            return None
        mean = math.fsum(values) / len(values)
        if name != "ic_sharpe":
            return mean
        if len(values) < 2:
            return None
        spread = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
        return mean / spread if spread > 0 else None
    if name == "hit_rate":
        hits = sum(h.stats["hit"][0] for h in ordered if "hit" in h.stats)
        counted = sum(h.stats["hit"][1] for h in ordered if "hit" in h.stats)
        return hits / counted if counted else None
    if name in ("mean_return", "sortino_ratio"):
        parts = [h.stats["ret"] for h in ordered if "ret" in h.stats]
        n = sum(p[0] for p in parts)
        if not n:
            return None
        mean = math.fsum(p[1] for p in parts) / n
        if name == "mean_return":
            return mean
        down_n = sum(p[2] for p in parts)
        if not down_n:
            return None
        downside = math.sqrt(math.fsum(p[3] for p in parts) / down_n)
        return mean / downside if downside > 0 else None
    if name == "turnover":
        parts = [h.stats["turn"] for h in ordered if "turn" in h.stats]
        if not parts:
            return None
        interval = scope.prediction_interval_seconds if scope is not None else None
        steps = [p[4] for p in parts]
        count = sum(p[5] for p in parts)
        for before, after in zip(parts, parts[1:]):
            if interval is not None and after[0] - before[2] == interval:  # consecutive cycles across the hour
                steps.append(abs(after[1] - before[3]))
                count += 1
        return math.fsum(steps) / count if count else None
    if name == "model_correlation":
        return correlation_from_sums(add_moments(h.stats["cf"] for h in ordered if "cf" in h.stats))
    if name == "ensemble_correlation":
        key = f"ce:{ensemble}"
        return correlation_from_sums(add_moments(h.stats[key] for h in ordered if key in h.stats))
    if name == "max_drawdown":
        parts = [h.stats["dd"] for h in ordered if "dd" in h.stats]
        if not parts:
            return None
        joined = parts[0]
        for part in parts[1:]:
            joined = join_drawdowns(joined, part)
        return -joined[3]
    if name == "contribution":  # none for a model that never was a member (and for the ensemble itself)
        key = f"c:{ensemble}"
        sums = [h.stats[key][0] for h in ordered if key in h.stats]
        return math.fsum(sums) / counted_cycles if sums and counted_cycles else None
    raise ValueError(f"unknown metric {name!r}")


def window_metrics(spec: CompetitionSpec, hours: Iterable[HourRow], counted_cycles: Mapping[str, int],
                   names: Sequence[str] | None = None) -> dict[str, dict]:
    """model_id -> {metric: combined value, "scopes": {scope_key: {metric: value}}} over the given
    hours: per scope from its hours, combined as the standings are (the scope weights, over the
    scopes where the metric has a value). `counted_cycles`: per scope, the window's counted cycles."""
    names = list(names or spec.metrics.names)
    weights = {s.key: s.weight for s in spec.scopes}
    by_model: dict[str, dict[str, list[HourRow]]] = defaultdict(lambda: defaultdict(list))
    for row in hours:
        if row.stats:
            by_model[row.model_id][row.scope_key].append(row)
    result = {}
    for model_id, by_scope in sorted(by_model.items()):
        scopes = {key: {name: scope_value(spec, spec.scope(key), name, rows, counted_cycles.get(key, 0))
                        for name in names} for key, rows in sorted(by_scope.items())}
        combined = {}
        for name in names:
            weighted = [(weights.get(key, 1.0), values[name]) for key, values in scopes.items()
                        if values[name] is not None]
            total = math.fsum(w for w, _ in weighted)
            combined[name] = math.fsum(w * v for w, v in weighted) / total if weighted and total > 0 else None
        result[model_id] = {**combined, "scopes": scopes}
    return result


def hour_rows(snapshots: Iterable, start: datetime, end: datetime) -> list[HourRow]:
    """The statistics stored in the hourly snapshots of [start, end)."""
    return [HourRow(s.model_id, s.scope_key, s.period_start, (s.meta or {}).get(META_KEY) or {})
            for s in snapshots if start <= s.period_start and s.period_end <= end and (s.meta or {}).get(META_KEY)]


def counted_cycles(rollups: Iterable, start: datetime, end: datetime) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for row in rollups:
        if start <= row.period_start and row.period_end <= end:
            counts[row.scope_key] += row.cycle_count
    return dict(counts)


# --- the rollups' hook ---------------------------------------------------------------------------

def resolved_cycles(rows: Iterable) -> list[ResolvedCycle]:
    """The store's ResolvedAnswerRows (in cycle order) as cycles."""
    cycles: dict[tuple[str, datetime], ResolvedCycle] = {}
    for row in rows:
        key = (row.scope_key, row.cycle_at)
        cycle = cycles.get(key)
        if cycle is None:
            cycle = cycles[key] = ResolvedCycle(row.scope_key, row.cycle_at, row.actuals, row.failure_value, {})
        cycle.answers[row.model_id] = StoredAnswer(row.status, row.inference_output, row.meta or {}, row.value,
                                                   row.success)
    return list(cycles.values())


def hourly_statistics(spec: CompetitionSpec, rules, store, hours: Iterable[tuple[str, datetime]]
                      ) -> dict[tuple[str, str, datetime], dict]:
    """(model_id, scope_key, hour) -> the statistics of the declared metrics over that scope-hour,
    computed from the store's resolved cycles of those hours only."""
    hours = list(hours)
    if not hours or not enabled(spec):
        return {}
    read = readers(spec, rules)
    by_hour: dict[tuple[str, datetime], list[ResolvedCycle]] = defaultdict(list)
    for cycle in resolved_cycles(store.resolved_answers(hours)):
        by_hour[(cycle.scope_key, cycle.cycle_at.replace(minute=0, second=0, microsecond=0))].append(cycle)
    result = {}
    for (scope_key, hour), cycles in by_hour.items():
        scope = spec.scope(scope_key)
        if scope is None:  # a scope no longer declared: no metrics
            continue
        for model_id, stats in hour_statistics(spec, scope, cycles, read).items():
            if stats:
                result[(model_id, scope_key, hour)] = stats
    return result


def with_statistics(snapshots: Sequence, statistics: Mapping[tuple[str, str, datetime], dict]) -> list:
    """The snapshots, each with its hour's statistics in meta["metrics"] ({} when there is nothing
    to measure: a snapshot without the key was rolled up before the metrics were declared)."""
    from dataclasses import replace

    result = []
    for snapshot in snapshots:
        stats = statistics.get((snapshot.model_id, snapshot.scope_key, snapshot.period_start))
        meta = {k: v for k, v in (snapshot.meta or {}).items() if k != META_KEY}
        meta[META_KEY] = stats or {}  # {}: computed, nothing to measure (an hour without it was never computed)
        result.append(replace(snapshot, meta=meta))
    return result

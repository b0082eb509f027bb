"""Windowed ensembles (members top_n / min_metric, weighting inverse_variance): the pure parts.

The rules under test (crunch_assets/ensembles.py): the window of a cycle at t is the scope's cycles in
[max(t - window_seconds, spec.start), t) that resolve by t; a model's statistics are over its stored
score values there; a model with fewer than min_history_cycles of them is not a member; top_n ties
go to the smaller model id; a declaration that is unknown or incomplete is refused by name. The
end-to-end half (live == backfill, a reverse replay stores the same bits, a partial window waits):
tests/test_ensemble_windows_end_to_end.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from crunch_assets import ensembles
from crunch_assets.ensembles import VARIANCE_FLOOR, WindowStats
from crunch_assets.spec import Ensemble, Scope, SpecError

T = datetime(2025, 1, 7, 3, tzinfo=timezone.utc)
SCOPE = Scope(subject="BTC", resolve_horizon_seconds=60, prediction_interval_seconds=60)


def _spec(**changes):
    from competitions.btc_updown.definitions import SPEC

    return replace(SPEC, start=T - timedelta(hours=1), **changes)


@pytest.mark.parametrize("declaration, named", [
    (dict(members="best_n"), "members must be one of"),
    (dict(weighting="inverse_varience"), "weighting must be"),
    (dict(members="top_n", window_seconds=600), "top_n is declared with members='top_n'"),
    (dict(members="top_n", top_n=0, window_seconds=600), "top_n must be a whole number >= 1"),
    (dict(members="top_n", top_n=True, window_seconds=600), "top_n: Input should be a valid integer"),
    (dict(top_n=2), "top_n is declared with members='top_n'"),
    (dict(members="min_metric", window_seconds=600), "min_metric is declared with members='min_metric'"),
    (dict(members="min_metric", min_metric=float("nan"), window_seconds=600), "min_metric must be a finite number"),
    (dict(members="top_n", top_n=2), "window_seconds is declared"),
    (dict(window_seconds=600), "window_seconds is declared"),
    (dict(members="top_n", top_n=2, window_seconds=0), "window_seconds must be a whole number"),
    (dict(members="top_n", top_n=2, window_seconds=60.5), "window_seconds: Input should be a valid integer"),
    (dict(members="top_n", top_n=2, window_seconds=600, metric="sharpe"), "metric must be one of"),
    (dict(weighting="inverse_variance", window_seconds=600), "min_history_cycles must be a whole number >= 2"),
    (dict(members="top_n", top_n=2, window_seconds=600, min_history_cycles=0), "min_history_cycles must be"),
])
def test_a_bad_window_declaration_is_refused_by_name(declaration, named):
    with pytest.raises(SpecError, match=named) as refused:
        _spec(ensembles=(Ensemble("top", **declaration),))
    # a value of the wrong type is refused by the schema before the ensemble has a name: the field names it
    assert "ensemble top" in str(refused.value) or "Input should be" in named


def test_an_unknown_field_is_refused_by_name():
    with pytest.raises(SpecError, match="top_k"):
        Ensemble("top", members="top_n", top_k=2, window_seconds=600)


def test_a_windowed_ensemble_is_not_built_with_the_predictions():
    from resources.store.rows import PredictionRow

    spec = _spec(ensembles=(Ensemble("all"), Ensemble("top", members="top_n", top_n=1, window_seconds=600)))
    rows = [PredictionRow("a", "PENDING", None, None, {"p_up": 0.6}, {}), PredictionRow("b", "PENDING", None, None, {"p_up": 0.4}, {})]
    built = ensembles.cycle_rows(spec, SCOPE, rows)
    assert [r.model_id for r in built] == ["__ensemble_all__"]
    with pytest.raises(Exception, match="built when its cycle is scored"):
        ensembles.build(spec.ensembles[1], SCOPE, [("a", {"p_up": 0.6})])


def test_the_window_is_the_cycles_resolved_by_the_cycle_and_not_before_the_start():
    spec = _spec()
    ensemble = Ensemble("top", members="top_n", top_n=1, window_seconds=300)
    due = ensembles.window_cycles_due(spec, ensemble, SCOPE, T)
    # 02:55 .. 02:59 (the 02:59 cycle resolves at 03:00, by the cycle's start), never 03:00 itself
    assert due == [T - timedelta(minutes=k) for k in (5, 4, 3, 2, 1)]
    longer = Ensemble("top", members="top_n", top_n=1, window_seconds=86_400)
    assert ensembles.window_cycles_due(spec, longer, SCOPE, T)[0] == spec.start  # nothing before the competition
    two_minutes = Scope(subject="BTC", resolve_horizon_seconds=120, prediction_interval_seconds=60)
    assert ensembles.window_cycles_due(_spec(scopes=(two_minutes,)), ensemble, two_minutes, T)[-1] == T - timedelta(minutes=2)


def test_window_stats_are_exact_and_leave_virtual_models_and_other_cycles_out():
    at = [T - timedelta(minutes=k) for k in (3, 2, 1)]
    by_cycle = {at[2]: [("a", 0.3)], at[0]: [("__ensemble_x__", 9.0), ("b", 1.0), ("a", 0.1)],
                at[1]: [("a", 0.2), ("c", 0.5)], T - timedelta(minutes=10): [("b", -5.0)]}
    stats = ensembles.window_stats(by_cycle, [at[2], at[0]])
    assert set(stats) == {"a", "b"}
    assert stats["a"] == WindowStats(2, (0.1 + 0.3) / 2, ((0.1 - 0.2) ** 2 + (0.3 - 0.2) ** 2) / 2)
    assert stats["b"] == WindowStats(1, 1.0, 0.0)
    # the order cycles and rows are read in never changes a bit
    shuffled = {k: list(reversed(v)) for k, v in reversed(list(by_cycle.items()))}
    assert ensembles.window_stats(shuffled, [at[0], at[2]]) == stats


def _stats(**means):
    return {m: WindowStats(5, v, 0.01) for m, v in means.items()}


def test_top_n_ranks_by_the_metric_and_breaks_ties_by_model_id():
    top2 = Ensemble("top", members="top_n", top_n=2, window_seconds=600)
    stats = _stats(a=0.5, b=0.9, c=0.9, d=0.9)
    assert ensembles.select_members(top2, ["d", "c", "b", "a"], stats, higher_is_better=True) == ["b", "c"]
    assert ensembles.select_members(top2, ["d", "c", "b", "a"], stats, higher_is_better=False) == ["a", "b"]
    # only those that answered the cycle; the best of them
    assert ensembles.select_members(top2, ["a", "d"], stats, higher_is_better=True) == ["a", "d"]


def test_min_metric_keeps_those_that_pass_by_the_spec_direction():
    gate = Ensemble("good", members="min_metric", min_metric=0.5, window_seconds=600)
    stats = _stats(a=0.5, b=0.49, c=0.7)
    assert ensembles.select_members(gate, ["a", "b", "c"], stats, higher_is_better=True) == ["a", "c"]
    assert ensembles.select_members(gate, ["a", "b", "c"], stats, higher_is_better=False) == ["a", "b"]


def test_a_model_without_enough_history_is_not_a_member():
    top = Ensemble("top", members="top_n", top_n=3, window_seconds=600, min_history_cycles=3)
    stats = {"old": WindowStats(3, 0.1, 0.0), "young": WindowStats(2, 0.9, 0.0)}
    assert ensembles.select_members(top, ["new", "old", "young"], stats, higher_is_better=True) == ["old"]
    row = ensembles.build(top, SCOPE, [("new", {"p_up": 0.9}), ("young", {"p_up": 0.8})], stats)
    assert row.status == "ABSENT" and "0 member(s) answered and passed the filter" in row.status_reason
    assert row.meta["members"] == []


def test_inverse_variance_weights_and_the_meta_that_explains_them():
    ensemble = Ensemble("iv", weighting="inverse_variance", window_seconds=600, min_history_cycles=2)
    stats = {"a": WindowStats(4, 0.5, 0.04), "b": WindowStats(4, 0.5, 0.01), "c": WindowStats(4, 0.7, 0.0)}
    row = ensembles.build(ensemble, SCOPE, [("c", {"p_up": 0.2}), ("b", {"p_up": 0.6}), ("a", {"p_up": 0.8})], stats)
    assert row.status == "PENDING"
    assert row.meta["members"] == ["a", "b", "c"]
    assert row.meta["weights"] == [1 / 0.04, 1 / 0.01, 1 / VARIANCE_FLOOR]
    weights = row.meta["weights"]
    import math

    expected = math.fsum(w * p for w, p in zip(weights, (0.8, 0.6, 0.2))) / math.fsum(weights)
    assert row.inference_output == {"p_up": expected}
    assert row.meta["window"] == {"a": [4, 0.5, 0.04], "b": [4, 0.5, 0.01], "c": [4, 0.7, 0.0]}


def test_the_window_declaration_is_in_the_cycles_rules_fingerprint():
    """top_n, the window and the weighting decide the ensemble's output and score: the cycle's rules."""
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.fingerprint import build_book

    top = Ensemble("top", members="top_n", top_n=2, window_seconds=600)
    digests = {build_book(_spec(ensembles=(e,)), RULES).current.cycle_digest
               for e in (top, replace(top, top_n=3), replace(top, window_seconds=1200),
                         replace(top, weighting="inverse_variance", min_history_cycles=2))}
    assert len(digests) == 4

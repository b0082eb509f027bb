"""The metrics registry's pure functions against hand-computed values and scipy / numpy, the
leave-one-out fast paths against rebuilding the ensemble without each member, and a window's value
from hourly statistics against the same metric over the whole window at once."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from crunch_assets import contribution, metrics
from crunch_assets.spec import Ensemble, Scope

SCOPE = Scope("BTC", 60, 60)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def test_average_ranks_share_ties_as_scipy():
    values = [3.0, 1.0, 3.0, 2.0, 3.0]
    assert metrics.average_ranks(values) == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert metrics.average_ranks(values) == list(scipy.stats.rankdata(values))


def test_spearman_by_hand_and_against_scipy():
    # ranks x = 1 2 3 4, y = 2 1 4 3: d^2 = 1 + 1 + 1 + 1 = 4, rho = 1 - 6 * 4 / (4 * 15) = 0.6
    assert metrics.spearman([0.1, 0.2, 0.3, 0.4], [5.0, 1.0, 9.0, 7.0]) == pytest.approx(0.6, abs=1e-15)
    rng = random.Random(7)
    for n in (3, 5, 60, 200):
        x = [rng.gauss(0, 1) for _ in range(n)]
        y = [a * 0.3 + rng.gauss(0, 1) for a in x]
        y[0] = y[1]  # a tie
        assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert metrics.spearman([1.0, 2.0], [1.0, 2.0]) is None  # fewer than 3 pairs
    assert metrics.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # a constant side


@given(st.lists(st.tuples(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6)), min_size=2, max_size=60),
       st.floats(-1e4, 1e4))
@settings(max_examples=200, deadline=None)
def test_pearson_from_moments_is_numpy_corrcoef(pairs, offset):
    x, y = [a / 1000 + offset for a, _ in pairs], [b / 1000 for _, b in pairs]
    value = metrics.pearson(x, y)
    if len(set(x)) == 1 or len(set(y)) == 1:
        assert value is None
        return
    assert value == pytest.approx(float(np.corrcoef(x, y)[0, 1]), abs=1e-6)


def test_correlation_joins_hours_exactly():
    rng = random.Random(3)
    x = [rng.uniform(-1, 1) for _ in range(120)]
    y = [a + rng.gauss(0, 0.5) for a in x]
    whole = metrics.correlation_from_sums(metrics.moments(x, y))
    joined = metrics.correlation_from_sums(metrics.add_moments([metrics.moments(x[:37], y[:37]),
                                                                metrics.moments(x[37:], y[37:])]))
    assert whole == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
    assert joined == pytest.approx(whole, abs=1e-14)


def test_drawdown_by_hand():
    # cumulative 1, 3, 0, -1, 2, 1: peak 3, trough -1 after it: a fall of 4
    assert metrics.drawdown_summary([1, 2, -3, -1, 3, -1]) == [1.0, 3.0, -1.0, 4.0]
    assert metrics.drawdown_summary([]) == [0.0, 0.0, 0.0, 0.0]
    assert metrics.drawdown_summary([1.0, 1.0]) == [2.0, 2.0, 0.0, 0.0]  # never falls


@given(st.lists(st.floats(min_value=-100, max_value=100, allow_nan=False), max_size=40), st.integers(0, 40))
@settings(max_examples=300, deadline=None)
def test_drawdown_pieces_join_to_the_whole(values, cut):
    cut = min(cut, len(values))
    whole = metrics.drawdown_summary(values)
    joined = metrics.join_drawdowns(metrics.drawdown_summary(values[:cut]), metrics.drawdown_summary(values[cut:]))
    for a, b in zip(whole, joined):
        assert a == pytest.approx(b, abs=1e-9)


def test_hit_rate_mean_return_and_sortino_by_hand():
    signals = [0.2, -0.1, 0.0, 0.3, -0.4]
    outcomes = [0.01, 0.02, 0.05, -0.03, -0.01]
    assert metrics.hit_counts(signals, outcomes) == [2, 4]  # 0.0 signal not counted; hits: 1st, 5th
    assert metrics.signed_returns(signals, outcomes) == [0.01, -0.02, -0.03, 0.01]


@given(st.lists(finite, min_size=1, max_size=50))
@settings(max_examples=300, deadline=None)
def test_sum_without_each_is_fsum_of_the_others(values):
    for k, value in enumerate(metrics.exact_sum_without_each(values)):
        assert value == math.fsum(values[:k] + values[k + 1:])


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0.01, 5)), min_size=2, max_size=30))
@settings(max_examples=200, deadline=None)
def test_the_mean_without_each_member_is_the_mean_rebuilt_from_the_others(members):
    from crunch_assets.ensembles import weighted_mean

    outputs = [{"p_up": p, "form": "p_up"} for p, _ in members]
    weights = [w for _, w in members]
    fast = contribution.mean_without_each(outputs, weights)
    for k in range(len(outputs)):
        rebuilt = weighted_mean(outputs[:k] + outputs[k + 1:], weights[:k] + weights[k + 1:])
        assert fast[k] == rebuilt  # bit for bit


def test_btc_updown_leave_one_out_is_the_rebuilt_ensemble_scored():
    from competitions.btc_updown import logic

    rng = random.Random(11)
    outputs = [{"p_up": rng.random(), "form": "p_up"} for _ in range(9)]
    weights = [rng.uniform(0.5, 2) for _ in outputs]
    for truth in ({"y_up": True}, {"y_up": False}):
        fast = logic.leave_one_out_brier(SCOPE, outputs, weights, truth)
        for k in range(len(outputs)):
            rebuilt = logic.average_probabilities(SCOPE, outputs[:k] + outputs[k + 1:], weights[:k] + weights[k + 1:])
            assert fast[k] == logic.brier_skill(SCOPE, rebuilt, truth)["value"]


def test_crypto_density_leave_one_out_is_the_crps_of_the_mixture_without_each_member():
    from competitions.crypto_density import logic

    rng = random.Random(5)
    outputs = [logic.validate_output(SCOPE, {"type": "mixture", "components": [
        {"density": {"type": "builtin", "name": "norm", "params": {"loc": rng.gauss(0, 4), "scale": rng.uniform(0.5, 6)}},
         "weight": rng.uniform(0.1, 1)} for _ in range(rng.randint(1, 4))]}) for _ in range(7)]
    weights = [1.0] * len(outputs)
    for outcome in (-12.0, 0.3, 7.5):
        fast = logic.leave_one_out_crps(SCOPE, outputs, weights, {"return_bps": outcome})
        for k in range(len(outputs)):
            mixture = logic.mix_densities(SCOPE, outputs[:k] + outputs[k + 1:], weights[:k] + weights[k + 1:])
            assert fast[k] == pytest.approx(logic.crps(mixture["components"], outcome), rel=1e-12, abs=1e-12)
    assert logic.leave_one_out_crps(SCOPE, outputs[:1], [1.0], {"return_bps": 1.0}) == [None]


def _cycle(at, truth, answers, failure=0.0):
    return metrics.ResolvedCycle(SCOPE.key, at, truth, failure, {
        m: metrics.StoredAnswer("PENDING", o, meta, v, True) for m, (o, meta, v) in answers.items()})


def test_hour_statistics_and_windows_by_hand():
    """Two models and an equal-weight ensemble over three cycles, every statistic by hand."""
    from dataclasses import replace

    from competitions.btc_updown import logic
    from competitions.btc_updown.definitions import ENSEMBLES, METRICS, RULES, SPEC

    spec = replace(SPEC, ensembles=ENSEMBLES, metrics=METRICS)
    read = metrics.readers(spec, RULES)
    start = datetime(2025, 1, 7, 3, tzinfo=timezone.utc)
    rows = [  # (a's p_up, b's p_up, went up, return)
        (0.9, 0.6, True, 0.002), (0.2, 0.7, False, -0.001), (0.8, 0.3, True, 0.003)]
    cycles = []
    for i, (pa, pb, up, r) in enumerate(rows):
        truth = {"y_up": up, "return": r}
        ens = logic.average_probabilities(SCOPE, [{"p_up": pa}, {"p_up": pb}], [1.0, 1.0])
        answers = {
            "a": ({"p_up": pa, "form": "p_up"}, {}, logic.brier_skill(SCOPE, {"p_up": pa}, truth)["value"]),
            "b": ({"p_up": pb, "form": "p_up"}, {}, logic.brier_skill(SCOPE, {"p_up": pb}, truth)["value"]),
            "__ensemble_main__": (ens, {"ensemble": "main", "members": ["a", "b"], "weights": [1.0, 1.0]},
                                  logic.brier_skill(SCOPE, ens, truth)["value"]),
        }
        cycles.append(_cycle(start + timedelta(minutes=i), truth, answers))
    stats = metrics.hour_statistics(spec, SCOPE, cycles, read)
    a = stats["a"]
    # a's signals 0.4, -0.3, 0.3 against returns 0.002, -0.001, 0.003: ranks (3,1,2) and (2,1,3): rho 0.5
    assert a["ic"] == [pytest.approx(0.5), 3]
    assert a["hit"] == [3, 3]
    # contribution of a: Brier(ensemble) - Brier(b alone), per cycle
    expected = [(1 - (0.75 - 1) ** 2) - (1 - (0.6 - 1) ** 2), (1 - (0.45 - 0) ** 2) - (1 - (0.7 - 0) ** 2),
                (1 - (0.55 - 1) ** 2) - (1 - (0.3 - 1) ** 2)]
    assert a["c:main"] == [pytest.approx(math.fsum(expected), abs=1e-15), 3]
    # correlation with the field: with two models, the other one's signal
    assert metrics.correlation_from_sums(a["cf"]) == pytest.approx(scipy.stats.pearsonr([0.4, -0.3, 0.3],
                                                                                        [0.1, 0.2, -0.2]).statistic)
    hours = [metrics.HourRow(m, SCOPE.key, start, s) for m, s in stats.items()]
    window = metrics.window_metrics(spec, hours, {SCOPE.key: 3})
    assert window["a"]["contribution"] == pytest.approx(math.fsum(expected) / 3)
    assert window["a"]["hit_rate"] == 1.0 and window["b"]["hit_rate"] == pytest.approx(1 / 3)
    # the ensemble's own metrics are measured too (its correlation with the field's mean)
    assert window["__ensemble_main__"]["ic"] is not None
    # b's turnover: |(-0.2) - 0.2| + |0.2 - (-0.2)| over 2 steps... b's signals 0.1, 0.2, -0.2
    assert window["b"]["turnover"] == pytest.approx((0.1 + 0.4) / 2)


def test_the_lone_member_is_compared_with_the_failure_value():
    from dataclasses import replace

    from competitions.btc_updown.definitions import ENSEMBLES, METRICS, RULES, SPEC

    spec = replace(SPEC, ensembles=ENSEMBLES, metrics=METRICS)
    read = metrics.readers(spec, RULES)
    at = datetime(2025, 1, 7, 3, tzinfo=timezone.utc)
    truth = {"y_up": True, "return": 0.001}
    cycle = _cycle(at, truth, {"a": ({"p_up": 0.8}, {}, 0.96),
                               "__ensemble_main__": ({"p_up": 0.8, "form": "p_up"},
                                                     {"ensemble": "main", "members": ["a"], "weights": [1.0]}, 0.96)})
    assert contribution.cycle_contributions(Ensemble("main"), SCOPE, cycle, read, 1.0) == {"a": pytest.approx(0.96)}


def test_a_window_reads_its_hours_in_any_order():
    rng = random.Random(2)
    start = datetime(2025, 1, 7, tzinfo=timezone.utc)
    from competitions.btc_updown.definitions import ENSEMBLES, METRICS, SPEC
    from dataclasses import replace

    spec = replace(SPEC, ensembles=ENSEMBLES, metrics=METRICS)
    hours = []
    for h in range(24):
        values = [rng.gauss(0, 1) for _ in range(60)]
        hours.append(metrics.HourRow("m", SCOPE.key, start + timedelta(hours=h), {
            "ic": [rng.uniform(-1, 1), 60], "dd": metrics.drawdown_summary(values),
            "c:main": [math.fsum(values) / 100, 60]}))
    forward = metrics.window_metrics(spec, hours, {SCOPE.key: 1440}, ["ic", "ic_sharpe", "max_drawdown", "contribution"])
    shuffled = hours[:]
    rng.shuffle(shuffled)
    assert metrics.window_metrics(spec, shuffled, {SCOPE.key: 1440},
                                  ["ic", "ic_sharpe", "max_drawdown", "contribution"]) == forward


def _toy_cycle(with_ensemble: bool):
    from resources.store.rows import CycleToSettle, StoredPrediction

    outputs = {"a": {"probabilities": {"rain": 0.7, "dry": 0.3}}, "b": {"probabilities": {"rain": 0.4, "dry": 0.6}},
               "c": {"probabilities": {"rain": 0.2, "dry": 0.8}}}
    predictions = [StoredPrediction(i, m, "PENDING", None, o) for i, (m, o) in enumerate(sorted(outputs.items()))]
    predictions.append(StoredPrediction(9, "d", "FAILED", "error: boom", None))
    if with_ensemble:
        predictions.append(StoredPrediction(10, "__ensemble_main__", "PENDING", None,
                                            {"probabilities": {"rain": 1.3 / 3, "dry": 1.7 / 3}}))
    at = datetime(2026, 11, 16, 1, tzinfo=timezone.utc)
    return CycleToSettle(1, "station_a-1800-600", at, at + timedelta(minutes=30), "RECEIVED", {}, predictions)


@pytest.mark.parametrize("policy", ["constant", "relative"])
def test_an_ensemble_never_moves_a_real_models_score_nor_the_failure_value(policy):
    """The toy competition scores each model as the share of the field it beats (a cross-sectional
    step), and a relative failure value: the ensemble is scored as one more model of the field,
    and every real model's value and the failure value are those of the cycle without it."""
    from crunch_assets.defs.scores.assets import Scorer, score_cycle
    from crunch_assets.spec import FailurePolicy
    from tests.toy_competition.definitions import RULES, SPEC

    spec = replace(SPEC, failure_policy=FailurePolicy.relative(50) if policy == "relative" else SPEC.failure_policy)
    scope = spec.scopes[0]
    truth = {"category": "rain"}
    without, failure, void = score_cycle(spec, Scorer.of(RULES), scope, _toy_cycle(False), truth)
    alongside, failure_with, void_with = score_cycle(spec, Scorer.of(RULES), scope, _toy_cycle(True), truth)
    assert void is None and void_with is None and failure_with == failure
    mine = {r.model_id: (r.value, r.success) for r in alongside}
    assert {r.model_id: (r.value, r.success) for r in without} == {m: v for m, v in mine.items() if m != "__ensemble_main__"}
    # the ensemble (rain 0.433) beats b (0.4) and c (0.2), not a (0.7): 2 of 3
    assert mine["__ensemble_main__"] == (pytest.approx(2 / 3), True)


def test_a_cross_sectional_step_that_fails_on_the_ensemble_fails_the_ensemble_only(monkeypatch):
    from crunch_assets.defs.scores.assets import Scorer, score_cycle
    from tests.toy_competition import logic
    from tests.toy_competition.definitions import RULES, SPEC

    real = logic.relative_to_field

    def refuses_ensembles(scope, cycle_at, results):
        if any(m.startswith("__") for m in results):
            raise RuntimeError("who is this?")
        return real(scope, cycle_at, results)

    monkeypatch.setattr(logic, "relative_to_field", refuses_ensembles)
    from crunch_assets.rules import resolve_callable

    resolve_callable.cache_clear()
    try:
        rows, _, void = score_cycle(SPEC, Scorer.of(RULES), SPEC.scopes[0], _toy_cycle(True), {"category": "rain"})
    finally:
        resolve_callable.cache_clear()
    assert void is None
    by_model = {r.model_id: r for r in rows}
    assert not by_model["__ensemble_main__"].success and "who is this?" in by_model["__ensemble_main__"].failed_reason
    assert [by_model[m].success for m in "abc"] == [True, True, True]


def test_a_constant_answer_has_no_correlation_whatever_the_rounding():
    """0.1 three times: fsum / 3 is not 0.1 in floats; the spread must still be exactly 0, or a
    constant answer would get a correlation near 0 and the most diversity."""
    assert metrics.pearson([0.1, 0.1, 0.1], [1.0, 2.0, 4.0]) is None
    joined = metrics.add_moments([metrics.moments([0.1] * 3, [1.0, 2.0, 4.0]), metrics.moments([0.1] * 5, [3.0] * 5)])
    assert joined[3] == 0.0 and metrics.correlation_from_sums(joined) is None


def test_the_rules_fingerprint_covers_the_ensembles_and_metrics_only_when_declared():
    """An ensemble's combine decides its output and score (the cycle's rules); the metrics' signal
    decides what the contribution emission pays on (the period's). A competition declaring neither
    keeps the document it had before they existed, so its stored cycles stay explained."""
    from dataclasses import replace

    from competitions.btc_updown.definitions import ENSEMBLES, METRICS, RULES, SPEC
    from crunch_assets.fingerprint import build_book, rules_document
    from crunch_assets.spec import MetricsPolicy

    plain = rules_document(SPEC, RULES, None)
    assert "ensembles" not in plain["cycle"]["spec"] and "metrics" not in plain["period"]["spec"]
    assert "ensembles" not in plain["cycle"]["callables"] and "metrics" not in plain["period"]["callables"]
    declared = replace(SPEC, ensembles=ENSEMBLES, metrics=METRICS)
    document = rules_document(declared, RULES, None)
    combine = document["cycle"]["callables"]["ensembles"]["main"]["combine"]
    assert combine["path"].endswith(":average_probabilities") and "def average_probabilities" in combine["source"]
    assert "def signal" in document["period"]["callables"]["metrics"]["signal"]["source"]
    before = build_book(declared, RULES).current
    # another combine: another cycle digest (the ensemble's outputs and scores change)
    other = replace(declared, ensembles=(replace(ENSEMBLES[0], combine="competitions.crypto_density.logic:mix_densities"),))
    assert build_book(other, RULES).current.cycle_digest != before.cycle_digest
    # another signal: the same cycles, another period rule
    resignal = replace(declared, metrics=replace(METRICS, signal="competitions.crypto_density.logic:signal"))
    after = build_book(resignal, RULES).current
    assert after.cycle_digest == before.cycle_digest and after.fingerprint != before.fingerprint
    assert build_book(replace(declared, metrics=MetricsPolicy(names=("contribution",))), RULES).current.fingerprint \
        != before.fingerprint

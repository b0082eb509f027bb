"""The contribution-weighted emission as a pure function: exact to 1,000,000,000, non-negative, every
paid model at least its floor, a larger composite never paid less, names never decide money; a
hand-computed example; and the declaration refused by name when it is wrong."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crunch_assets.contribution import contribution_weighted
from crunch_assets.emission import FRAC64_ONE, RankedEntry
from crunch_assets.spec import EmissionPolicy, Ensemble, MetricsPolicy, SpecError

PRESET = EmissionPolicy.contribution()  # the reference's 0.5 / 0.3 / 0.2, 1 % floor


def entries_of(values: list[float]) -> list[RankedEntry]:
    return [RankedEntry(f"m{i:04d}", i + 1, v, 100, 100, 1.0) for i, v in enumerate(values)]


field = st.integers(1, 300).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n).map(lambda v: sorted(v, reverse=True)),
    st.lists(st.one_of(st.none(), st.floats(-0.05, 0.05, allow_nan=False)), min_size=n, max_size=n),
    st.lists(st.floats(0, 2, allow_nan=False), min_size=n, max_size=n)))
policies = st.sampled_from([PRESET, EmissionPolicy.contribution(0.2, 0.5, 0.3, floor_pct=0.0),
                            EmissionPolicy.contribution(1.0, 0.0, 0.0, floor_pct=5.0),
                            EmissionPolicy.contribution(0.0, 0.0, 1.0, floor_pct=100.0)])


@given(field, policies, st.booleans())
@settings(max_examples=300, deadline=None)
def test_exact_non_negative_floored_and_ordered_by_composite(data, policy, share_ties):
    values, contributions, diversities = data
    n = len(values)
    rewards, components = contribution_weighted(entries_of(values), contributions, diversities, policy, share_ties)
    assert sum(rewards) == FRAC64_ONE and min(rewards) >= 0 and len(rewards) == n
    floor = Fraction(repr(policy.floor_pct)) / 100
    least = math.floor(min(floor, Fraction(1, n)) * FRAC64_ONE)
    assert min(rewards) >= least
    by_composite = sorted(zip((c["composite"] for c in components), rewards), reverse=True)
    for (ca, ra), (cb, rb) in zip(by_composite, by_composite[1:]):
        if ca > cb:
            assert ra >= rb
        else:
            assert abs(ra - rb) <= 1


@given(field)
@settings(max_examples=100, deadline=None)
def test_names_never_decide_money(data):
    values, contributions, diversities = data
    renamed = [RankedEntry(f"z{len(values) - i:04d}", e.rank, e.value, 1, 1, 1.0) for i, e in enumerate(entries_of(values))]
    assert contribution_weighted(entries_of(values), contributions, diversities, PRESET)[0] == \
        contribution_weighted(renamed, contributions, diversities, PRESET)[0]


def test_twins_share_exactly_and_a_model_adding_more_earns_more():
    # a, b tied at the top with the same contribution and diversity: the same composite, one unit apart at most
    rewards, components = contribution_weighted(entries_of([0.8, 0.8, 0.7]), [0.01, 0.01, 0.01], [0.2, 0.2, 0.2], PRESET)
    assert abs(rewards[0] - rewards[1]) <= 1 and components[0]["composite"] == components[1]["composite"]
    # rank 3 with a larger contribution and diversity than rank 2 is paid more than rank 2
    rewards, _ = contribution_weighted(entries_of([0.9, 0.8, 0.7]), [0.001, 0.0, 0.02], [0.1, 0.05, 0.9], PRESET)
    assert rewards[2] > rewards[1]


def test_a_worked_example_by_hand():
    """Three paid models: ranks 1..3, contributions 0.02 / -0.01 / 0.01, diversities 0.1 / 0.2 / 0.8.
    rank: 1/r = 1, 1/2, 1/3 -> normalised 1, 1/4, 0; contribution -> 1, 0, 2/3; diversity -> 0, 1/7, 1.
    composite = 0.5 r + 0.3 c + 0.2 d: 0.8, 0.125 + 0.2/7, 0.2 + 0.2 = 0.4.
    shares = 1 % + 97 % x composite / sum: 58.33 %, 12.01 %, 29.66 %."""
    rewards, components = contribution_weighted(entries_of([0.9, 0.8, 0.7]), [0.02, -0.01, 0.01], [0.1, 0.2, 0.8],
                                                PRESET)
    # each normalised component rounded to 12 decimals: 1/7 -> 0.142857142857, 2/3 -> 0.666666666667
    seventh, two_thirds = Fraction(142857142857, 10**12), Fraction(666666666667, 10**12)
    composite = [Fraction(5, 10) + Fraction(3, 10), Fraction(1, 8) + Fraction(2, 10) * seventh,
                 Fraction(3, 10) * two_thirds + Fraction(2, 10)]
    total = sum(composite)
    exact = [(Fraction(1, 100) + Fraction(97, 100) * c / total) * FRAC64_ONE for c in composite]
    assert [c["composite"] for c in components] == [float(c) for c in composite]
    assert sum(rewards) == FRAC64_ONE
    assert rewards == [math.floor(q) + (1 if i in _leftover(exact) else 0) for i, q in enumerate(exact)]
    assert rewards == [583_298_153, 120_052_770, 296_649_077]  # rank 3 adds more than rank 2: paid more


def _leftover(quotas):
    units = FRAC64_ONE - sum(math.floor(q) for q in quotas)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - math.floor(quotas[i])), i))
    return set(order[:units])


def test_the_declaration_is_refused_by_name():
    from competitions.btc_updown.definitions import ENSEMBLES, METRICS, SPEC

    with pytest.raises(SpecError, match="sum to exactly 1"):
        EmissionPolicy.contribution(0.5, 0.3, 0.3).validate()
    with pytest.raises(SpecError, match="needs an ensemble"):
        replace(SPEC, emission=PRESET)
    with pytest.raises(SpecError, match="add it to metrics.names"):
        replace(SPEC, emission=PRESET, ensembles=ENSEMBLES, metrics=replace(METRICS, names=("contribution",)))
    with pytest.raises(SpecError, match="ensemble 'other' is not declared"):
        replace(SPEC, emission=EmissionPolicy.contribution(ensemble="other"), ensembles=ENSEMBLES, metrics=METRICS)
    with pytest.raises(SpecError, match="did you mean 'combine'"):
        Ensemble("main", combne="mean")
    with pytest.raises(SpecError, match="declare signal="):
        MetricsPolicy(names=("ic",)).validate()
    with pytest.raises(SpecError, match="unknown metric"):
        MetricsPolicy(names=("sharpe",)).validate()
    with pytest.raises(SpecError, match="a name is declared twice"):
        replace(SPEC, ensembles=ENSEMBLES + ENSEMBLES)


def test_a_misspelt_callable_fails_the_load():
    from competitions.btc_updown.definitions import METRICS, SPEC, build_definitions
    from crunch_assets.rules import WiringError

    spec = replace(SPEC, ensembles=(Ensemble("main", combine="competitions.btc_updown.logic:average_probabilitys"),),
                   metrics=METRICS)
    with pytest.raises(WiringError, match="ensemble main: combine.*average_probabilitys"):
        build_definitions(spec=spec, automation_running=False)

"""Emission strategies as pure functions: the reference splits, and properties over any scores and
any field of 1 to 1,000 models: exact sum, non-negative, order-preserving."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crunch_assets import emission
from crunch_assets.emission import FRAC64_ONE, RankedEntry
from crunch_assets.spec import EmissionPolicy

POLICIES = [
    EmissionPolicy.tiered(),
    EmissionPolicy.tiered(((1, 50.0), (3, 10.0))),
    EmissionPolicy.softmax(0.05),
    EmissionPolicy.softmax(10.0),
    EmissionPolicy.proportional(0.0),
    EmissionPolicy.proportional(20.0),
]


@pytest.mark.parametrize(
    "models, expected",
    [
        (1, [1_000_000_000]),
        (2, [625_000_000, 375_000_000]),
        (3, [500_000_000, 250_000_000, 250_000_000]),
        (10, [350_000_000] + [100_000_000] * 4 + [50_000_000] * 5),
        (12, [350_000_000] + [100_000_000] * 4 + [50_000_000] * 5 + [0, 0]),
    ],
)
def test_tiered_gives_the_reference_splits(models, expected):
    assert emission.tiered(models) == expected


def _entries(values, higher_is_better=True):
    ordered = sorted(values, reverse=higher_is_better)
    return [RankedEntry(f"m{i:04d}", i + 1, v, 100, 100, 1.0) for i, v in enumerate(ordered)]


scores = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(values=st.lists(scores, min_size=1, max_size=1000), policy=st.sampled_from(POLICIES), higher=st.booleans())
def test_every_strategy_is_exact_non_negative_and_order_preserving(values, policy, higher):
    entries = _entries(values, higher)
    rewards = emission.build(policy, entries, higher_is_better=higher)
    assert len(rewards) == len(entries)
    assert sum(rewards) == FRAC64_ONE
    assert all(isinstance(r, int) and r >= 0 for r in rewards)
    assert all(a >= b for a, b in zip(rewards, rewards[1:]))  # a better rank never gets less
    emission.check_rewards(rewards, len(entries))  # the engine's own guard agrees


@settings(max_examples=100, deadline=None)
@given(values=st.lists(scores, min_size=2, max_size=50))
def test_equal_scores_share_equally_up_to_one_unit(values):
    tied = [values[0]] * len(values)
    for policy in (EmissionPolicy.softmax(1.0), EmissionPolicy.proportional(10.0)):
        rewards = emission.build(policy, _entries(tied), higher_is_better=True)
        assert max(rewards) - min(rewards) <= 1


def test_softmax_follows_the_scores():
    rewards = emission.build(EmissionPolicy.softmax(1.0), _entries([2.0, 1.0, 0.0]), True)
    weights = [math.exp(v) for v in (2.0, 1.0, 0.0)]
    assert rewards == pytest.approx([w / sum(weights) * FRAC64_ONE for w in weights], abs=1)
    # lower is better (CRPS): the smallest score is paid most
    low = emission.build(EmissionPolicy.softmax(1.0), _entries([0.0, 1.0, 2.0], higher_is_better=False), False)
    assert low == rewards


def test_proportional_pays_the_floor_equally_and_the_rest_by_distance_above_the_worst():
    rewards = emission.build(EmissionPolicy.proportional(30.0), _entries([0.9, 0.7, 0.5]), True)
    floor = 0.3 / 3
    expected = [floor + 0.7 * d / 0.6 for d in (0.4, 0.2, 0.0)]
    assert rewards == pytest.approx([e * FRAC64_ONE for e in expected], abs=1)
    assert rewards[-1] == pytest.approx(floor * FRAC64_ONE, abs=1)  # the worst keeps only the floor


def test_largest_remainder_breaks_ties_toward_the_better_rank():
    assert emission.largest_remainder([1.0, 1.0, 1.0], total=10) == [4, 3, 3]
    assert emission.largest_remainder([0.0, 0.0], total=3) == [2, 1]  # all zero: equal


def test_the_guard_rejects_a_split_that_pays_a_worse_rank_more():
    with pytest.raises(ValueError, match="worse rank"):
        emission.check_rewards([400_000_000, 600_000_000], 2)
    with pytest.raises(ValueError, match="summing to"):
        emission.check_rewards([400_000_000, 500_000_000], 2)

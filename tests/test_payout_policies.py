"""Who is paid, as pure functions over hourly rollups: earned eligibility, per-scope coverage,
participants, benchmark models, exclusions (the copy detector's contract), shared ties, the
unclaimed rule, the gate's new checks; and properties over any field (hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crunch_assets import emission, payouts
from crunch_assets.defs.checkpoints.assets import payout_entries
from crunch_assets.emission import FRAC64_ONE
from crunch_assets.spec import (
    CompetitionSpec,
    Eligibility,
    EmissionPolicy,
    FailurePolicy,
    GatePolicy,
    PayoutPolicy,
    Scope,
    SpecError,
)
from resources.store.rows import CycleRollupRow, ModelRow, SnapshotRow

T0 = datetime(2025, 1, 8, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
BTC, ETH = Scope("BTC", 60, 60), Scope("ETH", 60, 60)
SPEC = CompetitionSpec(slug="demo", start=T0 - timedelta(days=1), scopes=(BTC,), failure_policy=FailurePolicy.constant(0.0),
                       checkpoint_interval_seconds=3600)


class NoBuilder:
    """The rules' emission slot when the competition declares no builder of its own."""

    def build_emission(self, entries):
        return None


RULES = NoBuilder()


def snapshot(model, scope=BTC, rows=60, scored=None, value=0.5, failure=0.0):
    """One hour of `model` in `scope`: `rows` rows, `scored` of them answered (default: all), the
    answered ones at `value`, the others at the failure value."""
    scored = rows if scored is None else scored
    counts = {"scored": scored, "failed": rows - scored, "absent": 0, "rejected": 0}
    return SnapshotRow(model, scope.key, T0, T0 + HOUR, rows, scored * value + (rows - scored) * failure,
                       rows * failure, status_counts=counts)


def cycles(scope=BTC, count=60, failure=0.0):
    return CycleRollupRow(scope.key, T0, T0 + HOUR, count, 0, count * failure)


def pay(spec, snapshots, rollups=None, **kwargs):
    rollups = rollups if rollups is not None else [cycles(scope) for scope in spec.scopes]
    return payout_entries(spec, RULES, None, snapshots, rollups, T0, T0 + HOUR, **kwargs)


def registered(model_id, player=None, minutes=0):
    return ModelRow(model_id, model_id, player, None, None, "RUNNING", None, T0 + timedelta(minutes=minutes), None, {})


def rewards(paid):
    return {m: p["reward_pct"] for m, p in paid.items()}


# --- earned eligibility ----------------------------------------------------------------------------

def test_a_model_without_a_scored_answer_is_ranked_shown_and_paid_nothing():
    """Issue: three real models and one raising on every call (60 FAILED rows) were paid 43.75 %
    / 18.75 % x 3: the dead one took a share of the unclaimed tiers."""
    field = [snapshot("a", value=0.9), snapshot("b", value=0.8), snapshot("c", value=0.7), snapshot("dead", scored=0)]
    paid = pay(SPEC, field)
    assert rewards(paid) == {"a": 500_000_000, "b": 250_000_000, "c": 250_000_000, "dead": 0}
    dead = paid["dead"]
    assert dead["rank"] == 4 and dead["score"] == 0.0 and not dead["eligible"]
    assert dead["coverage"] == 0.0 and dead["prediction_count"] == 60 and dead["breakdown"]["failed"] == 60
    assert dead["breakdown"]["unpaid_reason"] == "no scored answer in the period"
    assert dead["breakdown"]["rule"] == "not eligible: no reward"


def test_failed_rows_are_not_coverage():
    field = [snapshot("a", value=0.9), snapshot("b", value=0.8), snapshot("dead", scored=0)]
    paid = pay(replace(SPEC, eligibility=Eligibility.minimum_coverage(0.9)), field)
    assert rewards(paid) == {"a": 625_000_000, "b": 375_000_000, "dead": 0}
    half = pay(replace(SPEC, eligibility=Eligibility.minimum_coverage(0.9)), [snapshot("a"), snapshot("half", scored=30)])
    assert half["half"]["coverage"] == 0.5 and half["half"]["reward_pct"] == 0
    assert half["half"]["breakdown"]["unpaid_reason"] == \
        "scored answers cover 50.00% of the counted cycles, less than the policy's 90%"


def test_min_scored_answers_is_declared():
    field = [snapshot("a", value=0.9), snapshot("few", scored=3, value=1.0)]
    paid = pay(replace(SPEC, eligibility=Eligibility.every_cycle(min_scored_answers=5)), field)
    assert paid["few"]["reward_pct"] == 0
    assert paid["few"]["breakdown"]["unpaid_reason"] == "3 scored answer(s) in the period, fewer than the policy's 5"


def test_skipping_a_scope_no_longer_pays():
    """Issue: under minimum_coverage(0.5) with two equal scopes, a model that answered only BTC at
    0.75 outranked one that answered both (0.80 / 0.50), 625,000,000 against 375,000,000: a scope
    with no rows dropped out of its combined mean."""
    spec = replace(SPEC, scopes=(BTC, ETH), eligibility=Eligibility.minimum_coverage(0.5))
    field = [snapshot("one", BTC, value=0.75), snapshot("both", BTC, value=0.80), snapshot("both", ETH, value=0.50)]
    paid = pay(spec, field)
    one, both = paid["one"], paid["both"]
    assert both["score"] == pytest.approx(0.65) and both["reward_pct"] == FRAC64_ONE
    # the scope it never answered counts at the failure value: (0.75 + 0.0) / 2
    assert one["score"] == pytest.approx(0.375) and one["breakdown"]["scopes"][ETH.key]["value"] == 0.0
    assert one["coverage"] == 0.5  # enough combined; not in ETH
    assert one["reward_pct"] == 0 and one["breakdown"]["unpaid_reason"] == \
        f"scored answers cover 0.00% of scope {ETH.key}, less than the policy's 50% in every scope"


def test_every_scope_can_be_required():
    spec = replace(SPEC, scopes=(BTC, ETH), eligibility=Eligibility.every_cycle(require_every_scope=True))
    paid = pay(spec, [snapshot("one", BTC, value=0.9), snapshot("both", BTC), snapshot("both", ETH)])
    assert paid["one"]["breakdown"]["unpaid_reason"] == f"no scored answer in scope {ETH.key} (every scope must be answered)"
    assert rewards(paid) == {"both": FRAC64_ONE, "one": 0}
    # by default the scope just counts at its failure value: (0.9 + 0) / 2 = 0.45 < 0.5
    default = pay(replace(spec, eligibility=Eligibility()), [snapshot("one", BTC, value=0.9), snapshot("both", BTC),
                                                              snapshot("both", ETH)])
    assert default["one"]["score"] == pytest.approx(0.45) and default["one"]["eligible"]


# --- exclusions: the contract with copy detection --------------------------------------------------

def test_an_excluded_model_is_ranked_shown_with_its_reason_and_its_share_redistributed():
    field = [snapshot("orig", value=0.9), snapshot("copy", value=0.9), snapshot("other", value=0.5)]
    reason = "copy of orig (identical on 98 % of cycles)"
    paid = pay(SPEC, field, exclusions={"copy": reason})
    assert rewards(paid) == {"orig": 625_000_000, "other": 375_000_000, "copy": 0}
    assert paid["copy"]["rank"] == 3 and paid["copy"]["score"] == 0.9 and not paid["copy"]["eligible"]
    assert paid["copy"]["breakdown"]["unpaid_reason"] == reason
    assert paid["copy"]["breakdown"]["rule"] == f"not paid: {reason}"
    # the same split as if the copy were not there
    assert rewards(pay(SPEC, [field[0], field[2]])) == {"orig": 625_000_000, "other": 375_000_000}


# --- participants ------------------------------------------------------------------------------------

def test_only_a_participants_best_model_is_paid():
    field = [snapshot("a1", value=0.9), snapshot("a2", value=0.8), snapshot("b", value=0.7)]
    registry = [registered("a1", "alice"), registered("a2", "alice"), registered("b", "bob")]
    paid = pay(SPEC, field, registry=registry)
    assert rewards(paid) == {"a1": 625_000_000, "b": 375_000_000, "a2": 0}
    assert paid["a2"]["breakdown"]["unpaid_reason"] == "participant alice's best model is a1: one paid model per participant"
    assert paid["a2"]["participant"] == "alice" and paid["b"]["participant"] == "bob"
    every = pay(replace(SPEC, payout=PayoutPolicy(pay_best_model_per_participant=False)), field, registry=registry)
    assert rewards(every) == {"a1": 500_000_000, "a2": 250_000_000, "b": 250_000_000}


def test_a_model_without_a_declared_participant_is_its_own():
    paid = pay(SPEC, [snapshot("a1", value=0.9), snapshot("a2", value=0.8)])
    assert (paid["a1"]["participant"], paid["a2"]["participant"]) == ("a1", "a2")
    assert rewards(paid) == {"a1": 625_000_000, "a2": 375_000_000}


def test_extra_models_of_a_participant_are_scored_and_shown_never_paid():
    field = [snapshot("first", value=0.6), snapshot("later", value=0.9), snapshot("b", value=0.7)]
    registry = [registered("later", "alice", minutes=5), registered("first", "alice", minutes=1), registered("b", "bob")]
    spec = replace(SPEC, payout=PayoutPolicy(max_models_per_participant=1, pay_best_model_per_participant=False))
    paid = pay(spec, field, registry=registry)
    assert rewards(paid) == {"b": 625_000_000, "first": 375_000_000, "later": 0}
    assert paid["later"]["score"] == 0.9 and "only its first 1 by registration (first)" in \
        paid["later"]["breakdown"]["unpaid_reason"]


# --- benchmark models --------------------------------------------------------------------------------

def test_a_benchmark_model_is_ranked_and_shown_never_paid():
    field = [snapshot("house", value=0.95), snapshot("a", value=0.9), snapshot("b", value=0.6)]
    paid = pay(replace(SPEC, payout=PayoutPolicy(benchmark_models=("house",))), field)
    assert rewards(paid) == {"a": 625_000_000, "b": 375_000_000, "house": 0}
    house = paid["house"]["breakdown"]
    assert house["benchmark"] and house["rank_by_score"] == 1
    assert house["unpaid_reason"] == "benchmark model: scored and ranked, never paid"


def test_the_benchmark_score_can_be_the_cutoff():
    field = [snapshot("house", value=0.7), snapshot("a", value=0.9), snapshot("b", value=0.7), snapshot("c", value=0.6)]
    spec = replace(SPEC, payout=PayoutPolicy(benchmark_models=("house",), benchmark_cutoff=True))
    paid = pay(spec, field)
    assert rewards(paid) == {"a": FRAC64_ONE, "b": 0, "c": 0, "house": 0}
    assert paid["b"]["breakdown"]["unpaid_reason"] == "score 0.7 is not better than benchmark house's 0.7 (the benchmark cutoff)"
    assert paid["a"]["breakdown"]["benchmark_cutoff"] == {"model_id": "house", "score": 0.7}
    # lower is better: the cutoff turns around
    losses = replace(spec, ranking_descending=False)
    assert rewards(pay(losses, field)) == {"c": FRAC64_ONE, "a": 0, "b": 0, "house": 0}
    # no benchmark in the period: no cutoff, said so
    alone = pay(spec, field[1:])
    assert sum(rewards(alone).values()) == FRAC64_ONE
    assert "no cutoff applied" in alone["a"]["breakdown"]["benchmark_cutoff"]["note"]


# --- ties, the unclaimed rule, exact arithmetic ------------------------------------------------------

def test_equal_scores_share_their_tiers_instead_of_a_name_deciding_35_against_10_percent():
    """Issue: equal scores broke by model id, which decided 35 % against 10 %."""
    field = [snapshot("zed", value=0.9), snapshot("abe", value=0.9)] + [snapshot(f"m{i}", value=0.5 - i / 100) for i in range(9)]
    by_id = pay(replace(SPEC, payout=PayoutPolicy(ties="by_model_id")), field)
    assert (by_id["abe"]["reward_pct"], by_id["zed"]["reward_pct"]) == (350_000_000, 100_000_000)
    shared = pay(SPEC, field)
    assert shared["abe"]["reward_pct"] == shared["zed"]["reward_pct"] == 225_000_000
    assert shared["abe"]["breakdown"]["tied_with"] == ["zed"]
    assert {m: r for m, r in rewards(shared).items() if m.startswith("m")} == \
        {m: r for m, r in rewards(by_id).items() if m.startswith("m")}


def test_share_ties_pools_each_run_of_equal_values():
    assert emission.share_ties([500, 300, 200], [1.0, 1.0, 0.5]) == [400, 400, 200]
    assert emission.share_ties([5, 3, 2], [1.0, 1.0, 1.0]) == [4, 3, 3]  # 10 units over 3: one left, to the first
    assert emission.share_ties([6, 3, 1], [0.9, 0.5, 0.1]) == [6, 3, 1]


def test_unclaimed_tiers_are_shared_by_the_declared_rule():
    assert emission.tiered(3) == [500_000_000, 250_000_000, 250_000_000]  # equal: the reference
    assert emission.tiered(3, unclaimed="pro_rata") == [636_363_636, 181_818_182, 181_818_182]
    assert sum(emission.tiered(7, unclaimed="pro_rata")) == FRAC64_ONE


def test_equal_tiers_never_pay_a_worse_rank_more():
    # 46.67 % twice and 6.67 %: rounding up the equal shares used to take a unit from rank 1 only
    rewards_ = emission.tiered(3, ((2, 40.0),))
    assert sum(rewards_) == FRAC64_ONE and rewards_[0] >= rewards_[1] >= rewards_[2]


def test_the_worked_example_is_exact():
    """docs/rewards.md: 0.75, 80/120 and 0.5. Proportional(20) has two remainders of exactly 2/3;
    float noise gave the unit to the worst rank, the documented rule gives it to the better one."""
    values = [0.75, 80 / 120, 0.5]
    assert emission.proportional(values, 20.0) == [546_666_667, 386_666_667, 66_666_666]
    assert emission.softmax(values, 0.1) == [659_333_469, 286_545_144, 54_121_387]


def test_largest_remainder_is_exact_on_equal_float_weights():
    assert emission.largest_remainder([0.1, 0.1, 0.1], total=10) == [4, 3, 3]
    assert emission.largest_remainder([0.1, 0.2, 0.3], total=FRAC64_ONE) == [166_666_667, 333_333_333, 500_000_000]


# --- the spec refuses what it cannot mean ------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda: {"eligibility": Eligibility.every_cycle(min_scored_answers=0)}, "min_scored_answers"),
    (lambda: {"eligibility": Eligibility(require_every_scope="yes")}, "require_every_scope"),
    (lambda: {"emission": EmissionPolicy.tiered(unclaimed="lottery")}, "unclaimed"),
    (lambda: {"payout": PayoutPolicy(max_models_per_participant=0)}, "max_models_per_participant"),
    (lambda: {"payout": PayoutPolicy(benchmark_models="house")}, "benchmark_models"),
    (lambda: {"payout": PayoutPolicy(benchmark_models=("h", "h"))}, "twice"),
    (lambda: {"payout": PayoutPolicy(benchmark_cutoff=True)}, "benchmark_cutoff needs"),
    (lambda: {"payout": PayoutPolicy(ties="coin_flip")}, "ties"),
    (lambda: {"gate": GatePolicy(min_eligible_participants=0)}, "min_eligible_participants"),
    (lambda: {"gate": GatePolicy(max_participant_share_pct=0)}, "max_participant_share_pct"),
    (lambda: {"gate": GatePolicy(max_participant_share_pct=120)}, "max_participant_share_pct"),
    # a policy may be given as its fields (as a spec file gives it), and is checked the same way
    (lambda: {"payout": {"ties": "coin_flip"}}, "ties must be one of share, by_model_id"),
    (lambda: {"payout": "share"}, "payout: Input should be a dictionary or an instance of PayoutPolicy"),
])
def test_new_policies_are_checked_at_load(change, message):
    """Refused when the policy is built (a bad field of its own) or when the spec is (a check
    between fields), either way a SpecError naming the field."""
    with pytest.raises(SpecError, match=message):
        replace(SPEC, **change())


# --- the gate's new checks -----------------------------------------------------------------------------

def _entries(*rows):
    return {"ranking": [{"model_id": m, "participant": p, "reward_pct": r, "eligible": r > 0, "breakdown": {"scored": s}}
                        for m, p, r, s in rows]}


def test_gate_minimum_field_size():
    three = _entries(("a", "alice", 500_000_000, 5), ("b", "bob", 250_000_000, 5), ("c", "carol", 250_000_000, 5))
    assert payouts.check_field_size(three, GatePolicy()).passed
    two_models_one_participant = _entries(("a", "alice", 625_000_000, 5), ("a2", "alice", 375_000_000, 5))
    refused = payouts.check_field_size(two_models_one_participant, GatePolicy(min_eligible_participants=2))
    assert not refused.passed and "1 eligible participant(s), the policy's minimum is 2" in refused.detail
    # benchmark, excluded and ineligible models are listed with eligible False: they do not count
    listed = {"ranking": three["ranking"] + [{"model_id": "house", "participant": "house", "reward_pct": 0,
                                              "eligible": False}]}
    assert "3 eligible participant(s)" in payouts.check_field_size(listed, GatePolicy()).detail


def test_gate_concentration_cap_per_participant():
    split = _entries(("a", "alice", 400_000_000, 5), ("a2", "alice", 200_000_000, 5), ("b", "bob", 400_000_000, 5))
    refused = payouts.check_concentration(split, GatePolicy())
    assert not refused.passed and "participant alice is paid 60 %, above the cap of 50 %" in refused.detail
    assert payouts.check_concentration(split, GatePolicy(max_participant_share_pct=60)).passed  # exactly 60 %: allowed
    assert payouts.check_concentration(_entries(("a", "a", 500_000_000, 1), ("b", "b", 500_000_000, 1)), GatePolicy()).passed


def test_gate_refuses_a_paid_model_without_a_scored_answer():
    entries = _entries(("a", "a", 600_000_000, 5), ("dead", "dead", 400_000_000, 0))
    refused = payouts.check_paid_models_answered(entries, {"a": 5, "dead": 0})
    assert not refused.passed and "dead is paid with 0 scored answer(s)" in refused.detail
    # the breakdown says it answered, the store's rollups say it did not: refused too
    forged = _entries(("a", "a", 600_000_000, 5), ("dead", "dead", 400_000_000, 9))
    assert not payouts.check_paid_models_answered(forged, {"a": 5, "dead": 0}).passed
    assert payouts.check_paid_models_answered(_entries(("a", "a", FRAC64_ONE, 5), ("d", "d", 0, 0)), {"a": 5}).passed


# --- properties over any field --------------------------------------------------------------------------

PARTICIPANTS = ("p0", "p1", "p2", "p3")


@st.composite
def fields(draw):
    """A field of 1..12 models over two scopes of up to 40 cycles each: some dead, some partial,
    some tied; a participant each; and a random set of declared policies."""
    counted = {BTC.key: draw(st.integers(1, 40)), ETH.key: draw(st.integers(1, 40))}
    n_models = draw(st.integers(1, 12))
    values = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0.0, 1.0, allow_nan=False)
    models = {}
    for i in range(n_models):
        per_scope = {}
        for scope in (BTC, ETH):
            if draw(st.booleans()) or not per_scope:
                rows = draw(st.integers(0, counted[scope.key]))
                scored = draw(st.integers(0, rows))
                if rows:
                    per_scope[scope] = (rows, scored, draw(values))
        models[f"m{i:02d}"] = (draw(st.sampled_from(PARTICIPANTS)), per_scope)
    eligibility = draw(st.sampled_from([Eligibility(), Eligibility.minimum_coverage(0.5),
                                        Eligibility.every_cycle(min_scored_answers=3, require_every_scope=True)]))
    emission_policy = draw(st.sampled_from([EmissionPolicy.tiered(), EmissionPolicy.tiered(unclaimed="pro_rata"),
                                            EmissionPolicy.softmax(0.1), EmissionPolicy.proportional(20.0)]))
    ids = sorted(models)
    benchmarks = tuple(draw(st.lists(st.sampled_from(ids), max_size=2, unique=True)))
    payout = PayoutPolicy(pay_best_model_per_participant=draw(st.booleans()),
                          max_models_per_participant=draw(st.sampled_from([None, 1, 2])),
                          benchmark_models=benchmarks, benchmark_cutoff=bool(benchmarks) and draw(st.booleans()),
                          ties=draw(st.sampled_from(["share", "by_model_id"])))
    spec = replace(SPEC, scopes=(BTC, ETH), eligibility=eligibility, emission=emission_policy, payout=payout,
                   ranking_descending=draw(st.booleans()))
    exclusions = {m: f"copy of {ids[0]}" for m in draw(st.lists(st.sampled_from(ids), max_size=2, unique=True))}
    return spec, counted, models, exclusions


def _rows(models, counted):
    snapshots = [snapshot(m, scope, rows, scored, value) for m, (_, per_scope) in models.items()
                 for scope, (rows, scored, value) in per_scope.items()]
    return snapshots, [cycles(scope, counted[scope.key]) for scope in (BTC, ETH)]


def _pay_field(spec, counted, models, exclusions):
    snapshots, rollups = _rows(models, counted)
    registry = [registered(m, participant, minutes=i) for i, (m, (participant, _)) in enumerate(sorted(models.items()))]
    return payout_entries(spec, RULES, None, snapshots, rollups, T0, T0 + HOUR, exclusions=exclusions, registry=registry)


PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(fields())
def test_no_answer_no_pay_and_the_sum_is_exact(field):
    spec, counted, models, exclusions = field
    paid = _pay_field(spec, counted, models, exclusions)
    total = sum(p["reward_pct"] for p in paid.values())
    assert total == (FRAC64_ONE if any(p["eligible"] for p in paid.values()) else 0)
    for model_id, p in paid.items():
        assert isinstance(p["reward_pct"], int) and p["reward_pct"] >= 0
        answered = sum(scored for _, scored, _ in models[model_id][1].values())
        if answered == 0:
            assert p["reward_pct"] == 0 and not p["eligible"]
        if model_id in spec.payout.benchmark_models or model_id in exclusions:
            assert p["reward_pct"] == 0 and p["breakdown"]["unpaid_reason"]
        assert (p["breakdown"]["unpaid_reason"] is None) == p["eligible"]
    ranking = sorted(paid.values(), key=lambda p: p["rank"])
    emitted = [p["reward_pct"] for p in ranking]
    assert emitted == sorted(emitted, reverse=True)  # paid first, a better rank never gets less


@PROPERTY_SETTINGS
@given(fields())
def test_a_participant_is_paid_what_its_best_model_alone_would_be(field):
    spec, counted, models, exclusions = field
    spec = replace(spec, payout=replace(spec.payout, pay_best_model_per_participant=True, max_models_per_participant=None))
    paid = _pay_field(spec, counted, models, exclusions)
    top = max((p["reward_pct"] for p in paid.values()), default=0)
    for participant in PARTICIPANTS:
        mine = {m: p for m, p in paid.items() if models[m][0] == participant}
        if not mine:
            continue
        assert sum(1 for p in mine.values() if p["reward_pct"]) <= 1  # one paid model per participant
        total = sum(p["reward_pct"] for p in mine.values())
        assert total <= top
        # without its unpaid models (benchmarks aside: they set the cutoff), nothing changes for
        # anyone: they took no rank and no share
        kept = {m: v for m, v in models.items()
                if m not in mine or mine[m]["eligible"] or m in spec.payout.benchmark_models}
        alone = _pay_field(spec, counted, kept, {m: r for m, r in exclusions.items() if m in kept})
        assert {m: p["reward_pct"] for m, p in alone.items()} == {m: paid[m]["reward_pct"] for m in alone}


@PROPERTY_SETTINGS
@given(fields(), st.data())
def test_an_exact_clone_never_raises_the_clusters_total(field, data):
    spec, counted, models, exclusions = field
    original = data.draw(st.sampled_from(sorted(models)))
    same_participant = data.draw(st.booleans())
    owner, per_scope = models[original]
    clone_owner = owner if same_participant else data.draw(st.sampled_from([p for p in PARTICIPANTS if p != owner]))
    cloned = {**models, "zz_clone": (clone_owner, per_scope)}
    # A clone of another participant's model is what copy detection excludes (the contract), and so
    # is a clone of an excluded or benchmark model (same cluster). A participant's clone of its own
    # model needs nothing when only its best model is paid.
    clone_exclusions = dict(exclusions)
    own_clone = same_participant and spec.payout.pay_best_model_per_participant
    if not own_clone or original in exclusions or original in spec.payout.benchmark_models:
        clone_exclusions["zz_clone"] = f"copy of {original}"
    before = _pay_field(spec, counted, models, exclusions)
    after = _pay_field(spec, counted, cloned, clone_exclusions)
    def reward(paid, model_id):  # a model with no row in the period is not in the field: 0
        return paid[model_id]["reward_pct"] if model_id in paid else 0

    assert reward(after, original) + reward(after, "zz_clone") <= reward(before, original)

"""Copy detection as pure functions (crunch_assets/copies.py): what counts as the same output, same
cycle and lagged matches, the exact match fraction, who a cluster pays, the operator's resolution,
the gate's check, determinism in any order, and the property that an exact clone never adds money."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crunch_assets import copies
from crunch_assets.defs.checkpoints.assets import payout_entries
from crunch_assets.payouts import check_copy_clusters
from crunch_assets.spec import CopyDetection, Scope, SpecError
from resources.store.rows import CopyResolutionRow, CycleRollupRow, SnapshotRow

START = datetime(2025, 1, 7, 3, tzinfo=timezone.utc)
SCOPE = Scope("BTC", 60, 60)
T0 = int(START.timestamp())


def _rows(outputs: dict[str, list], scope: Scope = SCOPE) -> list[tuple[int, str, str]]:
    """outputs: model -> one output per cycle (None: no successful output that cycle)."""
    cycles = max(len(v) for v in outputs.values())
    rows = []
    for c in range(cycles):
        for model, values in outputs.items():
            if c < len(values) and values[c] is not None:
                rows.append((T0 + c * scope.prediction_interval_seconds, model, json.dumps(values[c])))
    return rows


def _report(outputs, registered=None, detection=CopyDetection(), resolutions=None, cycles=None):
    n = cycles or max(len(v) for v in outputs.values())
    registered = registered if registered is not None else {m: START for m in outputs}
    return copies.detect(detection, [SCOPE], {SCOPE.key: _rows(outputs)}, START, START + timedelta(minutes=n),
                         registered, resolutions or {})


def _series(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"p_up": rng.random()} for _ in range(n)]


def test_canonical_form_rounds_numbers_and_sorts_keys():
    assert copies.canonical({"b": 1, "a": [0.1234564, -0.0]}, 6) == copies.canonical({"a": [0.123456, 0.0], "b": 1.0}, 6)
    assert copies.canonical({"p_up": 0.1234565001}, 6) != copies.canonical({"p_up": 0.1234555}, 6)
    assert copies.canonical({"a": True}, 6) != copies.canonical({"a": 1}, 6)
    assert copies.canonical({"a": "1"}, 6) != copies.canonical({"a": 1}, 6)
    assert copies.canonical(10**30, 6) == copies.canonical(1e30, 6)
    assert copies.canonical(copies.parse_output('{"a": 123456789012345678901234567890}'), 6) == \
        copies.canonical({"a": 1.2345678901234568e29}, 6)
    assert copies.canonical(10**400, 6) == b'"' + str(10**400).encode() + b'"'  # beyond a float: compared exactly


def test_an_exact_clone_is_paid_nothing_and_the_original_is_named():
    original = _series(1, 60)
    report = _report({"original": original, "clone": [dict(o) for o in original], "other": _series(2, 60)},
                     registered={"original": START, "clone": START + timedelta(hours=1), "other": START})
    [decision] = report.decisions
    assert decision.cluster.members == ("clone", "original") and decision.cluster.original == "original"
    assert decision.paid == ("original",) and decision.resolved_by == "policy"
    assert report.exclusions["clone"].startswith("copy: identical to original on 100 % of 60 cycles")
    [entry] = report.entries()
    assert entry["status"] == "resolved" and entry["paid"] == ["original"]
    roles = {m["model_id"]: (m["role"], m["evidence"]) for m in entry["members"]}
    assert roles["clone"] == ("copy", "identical to original on 100 % of 60 cycles")
    assert roles["original"] == ("original", "identical to clone on 100 % of 60 cycles")
    assert "p_up" not in json.dumps(report.entries())  # never an output


def test_a_lagged_copy_is_the_copier_even_when_registered_first():
    leader = _series(3, 60)
    lagged = [{"p_up": 0.123}] + leader[:-1]  # repeats the leader's forecast of the cycle before
    report = _report({"leader": leader, "follower": lagged},
                     registered={"leader": START + timedelta(days=1), "follower": START})
    [decision] = report.decisions
    assert decision.cluster.lagged_copiers == ("follower",) and decision.paid == ("leader",)
    assert report.exclusions["follower"].startswith("copy: repeats leader's output of 1 cycle(s) earlier on 100 % of 59")
    assert _report({"leader": leader, "follower": lagged}, detection=CopyDetection(lags=())).decisions == []


def test_the_match_fraction_is_compared_exactly():
    base = _series(4, 100)
    other = _series(5, 100)
    ninety = [b if i < 90 else o for i, (b, o) in enumerate(zip(base, other))]
    eighty_nine = [b if i < 89 else o for i, (b, o) in enumerate(zip(base, other))]
    assert len(_report({"a": base, "b": ninety}).decisions) == 1  # 90 of 100: exactly 90 %
    assert _report({"a": base, "b": eighty_nine}).decisions == []
    assert _report({"a": base, "b": ninety}, detection=CopyDetection(match_fraction=0.91)).decisions == []


def test_common_cycles_are_those_both_answered_and_never_match_outputs_do_not_count():
    base = _series(6, 40)
    sparse = [o if i % 4 == 0 else None for i, o in enumerate(base)]  # FAILED / ABSENT 3 cycles in 4
    [decision] = _report({"a": base, "b": sparse}).decisions
    assert [(link.matches, link.common) for link in decision.cluster.links if link.kind == copies.SAME_CYCLE] == [(10, 10)]
    assert _report({"a": base, "b": sparse}, detection=CopyDetection(min_common_cycles=11)).decisions == []
    # two honest models answering the neutral value most of the time are not copies of each other
    neutral = {"p_up": 0.5}
    a = [neutral if i % 10 else o for i, o in enumerate(_series(7, 100))]
    b = [neutral if i % 10 else o for i, o in enumerate(_series(8, 100))]
    assert len(_report({"a": a, "b": b}).decisions) == 1  # 90 % neutral: flagged when nothing is declared
    assert _report({"a": a, "b": b}, detection=CopyDetection(never_match=(neutral,))).decisions == []


def test_registered_together_is_undecided_later_members_are_still_copies():
    base = _series(9, 30)
    outputs = {"a": base, "b": list(base), "late": list(base)}
    registered = {"a": START, "b": START, "late": START + timedelta(hours=2)}
    report = _report(outputs, registered)
    [decision] = report.decisions
    assert decision.cluster.original is None and decision.cluster.first_makers == ("a", "b")
    assert decision.resolved_by is None and decision.paid == ("a", "b")
    assert set(report.exclusions) == {"late"} and "one of a, b" in report.exclusions["late"]
    assert [e["status"] for e in report.entries()] == ["unresolved"]
    # the operator decides: pay b only
    key = decision.cluster.key
    resolution = CopyResolutionRow(7, key, ("a", "b", "late"), "pay_one", "b", "operator", START)
    resolved = _report(outputs, registered, resolutions={key: resolution})
    assert resolved.decisions[0].resolved_by == "operator" and set(resolved.exclusions) == {"a", "late"}
    assert "resolution #7 by operator" in resolved.exclusions["a"]
    pay_all = CopyResolutionRow(8, key, ("a", "b", "late"), "pay_all", None, "operator", START)
    assert _report(outputs, registered, resolutions={key: pay_all}).exclusions == {}
    # a resolution of other members does not apply
    stale = CopyResolutionRow(9, key, ("a", "b"), "pay_one", "b", "operator", START)
    assert _report(outputs, registered, resolutions={key: stale}).decisions[0].resolved_by is None


def test_flag_policy_excludes_nobody_until_resolved():
    base = _series(10, 30)
    report = _report({"a": base, "b": list(base)}, {"a": START, "b": START + timedelta(hours=1)},
                     detection=CopyDetection.flag())
    assert report.exclusions == {} and [d.resolved_by for d in report.decisions] == [None]
    assert report.decisions[0].cluster.original == "a"


def test_near_equality_catches_a_perturbed_copy_that_rounding_misses():
    base = _series(11, 50)
    noisy = [{"p_up": o["p_up"] + (3e-6 if i % 2 else -3e-6)} for i, o in enumerate(base)]
    assert _report({"a": base, "b": noisy}).decisions == []
    near = CopyDetection(distance="max_abs_difference", tolerance=1e-5)
    [decision] = _report({"a": base, "b": noisy}, detection=near).decisions
    assert [(link.kind, link.matches) for link in decision.cluster.links] == [(copies.SAME_CYCLE, 50)]
    # outputs of another structure are never near
    other_shape = [{"p_up": o["p_up"], "note": "x"} for o in base]
    assert _report({"a": base, "b": other_shape}, detection=near).decisions == []


def test_the_same_clusters_in_any_row_order_and_scope_order():
    outputs = {f"m{i}": _series(20 + i % 3, 50) for i in range(7)}  # three groups of identical models
    registered = {m: START + timedelta(minutes=i) for i, m in enumerate(outputs)}
    expected = _report(outputs, registered).entries()
    rows = _rows(outputs)
    rng = random.Random(0)
    by_cycle: dict[int, list] = {}
    for row in rows:
        by_cycle.setdefault(row[0], []).append(row)
    for _ in range(3):
        shuffled = []
        for ts in sorted(by_cycle):
            cycle = list(by_cycle[ts])
            rng.shuffle(cycle)
            shuffled += cycle
        report = copies.detect(CopyDetection(), [SCOPE], {SCOPE.key: shuffled}, START, START + timedelta(minutes=50),
                               registered, {}, model_ids=sorted(outputs, reverse=True))
        assert report.entries() == expected
    assert len(expected) == 3


def test_a_model_copying_one_scope_of_two_is_a_copy_and_the_scope_is_named():
    eth = Scope("ETH", 300, 300)
    end = START + timedelta(hours=1)
    honest = {"a": _series(30, 12), "b": _series(31, 12)}
    copied = {"a": _series(32, 12), "b": _series(32, 12)}  # b copies a on ETH only
    rows = {SCOPE.key: _rows({m: v * 5 for m, v in honest.items()}), eth.key: _rows(copied, eth)}
    report = copies.detect(CopyDetection(), [SCOPE, eth], rows, START, end,
                           {"a": START, "b": START + timedelta(minutes=5)}, {})
    [decision] = report.decisions
    assert [(link.scope_key, link.matches, link.common) for link in decision.cluster.links
            if link.kind == copies.SAME_CYCLE] == [(eth.key, 12, 12)]
    assert report.exclusions["b"].startswith(f"copy: identical to a on 100 % of 12 {eth.key} cycles")


def test_rows_out_of_cycle_order_or_off_the_grid_are_refused():
    rows = _rows({"a": _series(1, 3)})
    with pytest.raises(ValueError, match="cycle order"):
        copies.scan_scope(SCOPE, list(reversed(rows)), START, START + timedelta(minutes=3), CopyDetection())
    with pytest.raises(ValueError, match="not a cycle of the period"):
        copies.scan_scope(SCOPE, [(T0 + 30, "a", "{}")], START, START + timedelta(minutes=3), CopyDetection())


@pytest.mark.parametrize("options, message", [
    ({"policy": "pay_last"}, "policy"), ({"decimals": 16}, "decimals"), ({"tolerance": 0.1}, "tolerance is for"),
    ({"distance": "max_abs_difference", "tolerance": float("nan")}, "tolerance"), ({"match_fraction": 1.5}, "match_fraction"),
    ({"min_common_cycles": 0}, "min_common_cycles"), ({"lags": (1, 1)}, "lags"), ({"lags": 1}, "lags: Input should be a valid tuple"),
    ({"never_match": ({1, 2},)}, "never_match"),
])
def test_a_wrong_copy_policy_is_refused_by_name(options, message):
    with pytest.raises(SpecError, match=message):
        CopyDetection(**options).validate()


# --- the gate's check ----------------------------------------------------------------------------

def _spec(**detection):
    from dataclasses import replace

    from competitions.btc_updown.definitions import SPEC

    return replace(SPEC, start=START, copy_detection=CopyDetection(**detection))


def _entries(report: copies.CopyReport, rewards: dict[str, int]) -> dict:
    return {"copy_clusters": report.entries(),
            "ranking": [{"model_id": m, "reward_pct": r} for m, r in rewards.items()]}


def test_the_gate_refuses_an_unresolved_cluster_a_stale_resolution_and_a_paid_copy():
    base = _series(12, 30)
    outputs = {"a": base, "b": list(base)}
    flagged = _report(outputs, {"a": START, "b": START + timedelta(hours=1)}, detection=CopyDetection.flag())
    key = flagged.decisions[0].cluster.key
    check = check_copy_clusters(_entries(flagged, {"a": 500, "b": 500}), _spec(policy="flag"), {}, 3)
    assert not check.passed and f"cluster {key} (a, b) is unresolved" in check.detail
    assert f"resolve-copy btc_updown 3 {key} --pay MODEL | --pay-all" in check.detail
    resolution = CopyResolutionRow(4, key, ("a", "b"), "pay_one", "a", "operator", START)
    # resolved since the checkpoint was built: it must be rebuilt first
    check = check_copy_clusters(_entries(flagged, {"a": 500, "b": 500}), _spec(policy="flag"), {key: resolution}, 3)
    assert not check.passed and "was resolved (#4) after the checkpoint was built" in check.detail
    rebuilt = _report(outputs, {"a": START, "b": START + timedelta(hours=1)}, detection=CopyDetection.flag(),
                      resolutions={key: resolution})
    assert check_copy_clusters(_entries(rebuilt, {"a": 1000, "b": 0}), _spec(policy="flag"), {key: resolution}, 3).passed
    tampered = check_copy_clusters(_entries(rebuilt, {"a": 600, "b": 400}), _spec(policy="flag"), {key: resolution}, 3)
    assert not tampered.passed and "b is a copy in cluster" in tampered.detail
    assert not check_copy_clusters({"ranking": []}, _spec(), {}, 3).passed  # built without copy detection
    assert check_copy_clusters({"ranking": []}, _spec(policy="off"), {}, 3).passed
    assert check_copy_clusters(_entries(copies.CopyReport(), {"a": 1000}), _spec(), {}, 3).detail == \
        "no copy cluster in the period"


# --- the property: an exact clone never adds money -----------------------------------------------

def _payouts(spec, outputs: dict[str, list], truth: list[float], registered: dict[str, datetime]) -> tuple[dict, list]:
    """Every model scored by Brier skill over one hour (a cycle without a successful output scores
    btc_updown's failure value 0.0), snapshots as the rollups store them, copy detection over the
    outputs, and the checkpoint's payout."""
    from competitions.btc_updown.definitions import RULES

    end = START + timedelta(hours=1)
    snapshots = []
    for model, values in outputs.items():
        scores = [0.0 if v is None else 1.0 - (v["p_up"] - y) ** 2 for v, y in zip(values, truth)]
        answered = sum(v is not None for v in values)
        snapshots.append(SnapshotRow(model, SCOPE.key, START, end, len(scores), sum(scores), 0.0,
                                     status_counts={"scored": answered, "failed": len(values) - answered}))
    rollups = [CycleRollupRow(SCOPE.key, START, end, len(truth), 0, 0.0)]
    report = copies.detect(spec.copy_detection, spec.scopes, {SCOPE.key: _rows(outputs)}, START, end, registered, {})
    return payout_entries(spec, RULES, None, snapshots, rollups, START, end, exclusions=report.exclusions), \
        report.decisions


def _cluster_of(model: str, decisions) -> set[str]:
    return next((set(d.cluster.members) for d in decisions if model in d.cluster.members), {model})


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.data(),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=0, max_value=3),
    st.sampled_from(["tiered", "softmax", "proportional"]),
)
def test_adding_an_exact_clone_never_raises_its_clusters_total(data, bases, clones, emission):
    """Whatever the field (chance matches, copies already in it, ties in registration, failed
    cycles), a clone of any model that answered at least once, registered after the others, leaves
    the total paid to that model's cluster where it was, and is paid nothing."""
    from dataclasses import replace

    from hypothesis import assume

    from crunch_assets.spec import EmissionPolicy

    policies = {"tiered": EmissionPolicy.tiered(), "softmax": EmissionPolicy.softmax(0.05),
                "proportional": EmissionPolicy.proportional(10)}
    spec = replace(_spec(), emission=policies[emission], scopes=(SCOPE,), copy_detection=CopyDetection())
    cycles = data.draw(st.integers(min_value=2, max_value=12))
    value = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])  # coarse outputs: chance matches and clusters happen
    answer = st.one_of(value.map(lambda p: {"p_up": p}), st.none())  # None: FAILED or ABSENT
    truth = data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=cycles, max_size=cycles))
    outputs = {f"m{i}": data.draw(st.lists(answer, min_size=cycles, max_size=cycles)) for i in range(bases)}
    for i in range(clones):  # the field may already hold copies
        outputs[f"c{i}"] = list(outputs[data.draw(st.sampled_from(sorted(outputs)))])
    registered = {m: START + timedelta(minutes=data.draw(st.integers(min_value=0, max_value=3))) for m in outputs}
    target = data.draw(st.sampled_from(sorted(outputs)))
    assume(any(v is not None for v in outputs[target]))

    before, decisions_before = _payouts(spec, outputs, truth, registered)
    after, decisions_after = _payouts(spec, {**outputs, "zz_clone": list(outputs[target])}, truth,
                                      {**registered, "zz_clone": START + timedelta(hours=1)})
    cluster_before = _cluster_of(target, decisions_before)
    cluster_after = _cluster_of(target, decisions_after)
    assert cluster_after == cluster_before | {"zz_clone"}
    total_before = sum(before[m]["reward_pct"] for m in cluster_before)
    total_after = sum(after[m]["reward_pct"] for m in cluster_after)
    assert total_after <= total_before
    assert after["zz_clone"]["reward_pct"] == 0 and "copy: " in after["zz_clone"]["breakdown"]["unpaid_reason"]
    assert sum(p["reward_pct"] for p in after.values()) == 1_000_000_000


@settings(max_examples=200, deadline=None)
@given(st.data(), st.integers(min_value=1, max_value=3), st.booleans())
def test_the_near_equality_sweep_finds_exactly_the_pairs_a_full_comparison_finds(data, dims, same_set):
    import numpy as np

    number = st.sampled_from([0.0, 1e-7, 2e-7, 0.5, 0.5 + 1e-7, 1.0, -3.0]) | st.floats(-2, 2)
    rows = st.lists(st.lists(number, min_size=dims, max_size=dims), min_size=1, max_size=12)
    a = np.array(data.draw(rows), dtype=float)
    b = a if same_set else np.array(data.draw(rows), dtype=float)
    tolerance = data.draw(st.sampled_from([0.0, 1e-7, 1e-3, 0.5]))
    found = set(zip(*(x.tolist() for x in copies._near_pairs(a, b, tolerance, same_set))))
    expected = {(i, j) for i in range(len(a)) for j in range(len(b))
                if (not same_set or i < j) and all(abs(a[i, k] - b[j, k]) <= tolerance for k in range(dims))}
    assert found == expected

"""The rules fingerprint as a pure function (issue 22 section 3): what it covers and what it does not,
declared changes of rules over time, and how a period's stored fingerprints are judged."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import fields, replace
from datetime import datetime, timedelta, timezone

import pytest

from crunch_assets.fingerprint import (
    CYCLE_SPEC_FIELDS,
    OPERATIONAL_SPEC_FIELDS,
    PERIOD_SPEC_FIELDS,
    CycleLabel,
    RulesError,
    build_book,
    canonical_bytes,
    check_period,
    sha256_hex,
)
from crunch_assets.spec import CompetitionSpec, EmissionPolicy, FailurePolicy, RulesChange, SpecError

T = datetime(2025, 1, 7, 4, 30, tzinfo=timezone.utc)
POSITION = "competitions.btc_updown.logic:position_return"


def _btc():
    from competitions.btc_updown.definitions import RULES, SPEC

    return SPEC, RULES


def _with(rules, **slots):
    from crunch_assets.rules import CallableRules

    return CallableRules(**{**{k: getattr(rules, k) for k in CallableRules.model_fields}, **slots})


def test_every_spec_field_is_classified_once():
    names = [f.name for f in fields(CompetitionSpec)]
    classified = [*CYCLE_SPEC_FIELDS, *PERIOD_SPEC_FIELDS, *OPERATIONAL_SPEC_FIELDS]
    assert len(classified) == len(set(classified)), "a field is in two classes"
    assert sorted(classified) == sorted(names), (
        f"unclassified: {sorted(set(names) - set(classified))}; unknown: {sorted(set(classified) - set(names))}")


@pytest.mark.integration  # a second interpreter
def test_the_fingerprint_is_the_sha256_of_the_documents_rfc8785_bytes_and_stable_across_processes():
    spec, rules = _btc()
    version = build_book(spec, rules).current
    assert version.fingerprint == sha256_hex(canonical_bytes(version.document))
    assert version.cycle_digest == sha256_hex(canonical_bytes(version.document["cycle"]))
    assert build_book(spec, rules).current.fingerprint == version.fingerprint
    code = ("from competitions.btc_updown.definitions import SPEC, RULES\n"
            "from crunch_assets.fingerprint import build_book\nprint(build_book(SPEC, RULES).current.fingerprint)")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "CRUNCH_BTC_UPDOWN_START": spec.start.isoformat()}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert other.stdout.strip() == version.fingerprint, other.stderr


def test_what_changes_the_fingerprint_and_what_does_not():
    spec, rules = _btc()
    base = build_book(spec, rules).current
    scored = build_book(spec, _with(rules, scoring_function=POSITION)).current
    assert scored.fingerprint != base.fingerprint and scored.cycle_digest != base.cycle_digest
    failure = build_book(replace(spec, failure_policy=FailurePolicy.constant(-1.0)), rules).current
    assert failure.cycle_digest != base.cycle_digest
    emission = build_book(replace(spec, emission=EmissionPolicy.softmax(0.1)), rules).current
    assert emission.fingerprint != base.fingerprint and emission.cycle_digest == base.cycle_digest  # per period
    builder = build_book(spec, _with(rules, emission_builder="crunch_assets.rules:mean_numeric_fields")).current
    assert builder.fingerprint != base.fingerprint and builder.cycle_digest == base.cycle_digest
    operational = replace(spec, start=spec.start + timedelta(days=3), feed_poll_interval_seconds=7, description="x",
                          settle_delay_seconds=5, cycle_lead_seconds=1, public_input_keys=("symbol",))
    assert build_book(operational, rules).current.fingerprint == base.fingerprint
    # announcing a change for later changes no fingerprint in force before it
    announced = build_book(replace(spec, rules_changes=(RulesChange(T, slots={"scoring_function": POSITION}),)), rules)
    assert announced.at(T - timedelta(microseconds=1)).fingerprint == base.fingerprint
    assert announced.at(T).fingerprint == scored.fingerprint
    assert [v.effective_from for v in announced.versions] == [None, T]
    assert announced.in_period(T - timedelta(hours=1), T + timedelta(hours=1)) == list(announced.versions)
    assert announced.in_period(T, T + timedelta(hours=1)) == [announced.versions[1]]


def test_a_scoring_functions_helpers_are_covered_and_its_neighbours_are_not(tmp_path, monkeypatch):
    package = tmp_path / "fingerprinted_rules"
    package.mkdir()
    (package / "__init__.py").write_text("")
    logic = package / "logic.py"

    def write(helper: str, neighbour: str) -> None:
        logic.write_text(textwrap.dedent(f'''
            from competitions.btc_updown.logic import brier_skill

            SCALE = 2.0


            def helper(value):
                return {helper}


            def neighbour():
                return {neighbour!r}


            def score(scope, output, ground_truth):
                result = brier_skill(scope, output, ground_truth)
                return {{**result, "value": helper(result["value"])}}
        '''))
        stamp = time.time() + len(helper) + len(neighbour)  # a new mtime: the source is read again
        os.utime(logic, (stamp, stamp))

    monkeypatch.syspath_prepend(str(tmp_path))
    spec, rules = _btc()
    write("value * SCALE", "a")
    module = importlib.import_module("fingerprinted_rules.logic")
    rules = _with(rules, scoring_function="fingerprinted_rules.logic:score")
    first = build_book(spec, rules).current
    uses = first.document["cycle"]["callables"]["scoring_function"]["uses"]
    assert set(uses) == {"fingerprinted_rules.logic:helper", "fingerprinted_rules.logic:SCALE"}
    write("value * SCALE", "b")  # a function the scoring function does not use
    importlib.reload(module)
    assert build_book(spec, rules).current.fingerprint == first.fingerprint
    write("value * SCALE + 0.0", "b")  # its helper
    importlib.reload(module)
    assert build_book(spec, rules).current.fingerprint != first.fingerprint


def test_a_declared_change_is_checked_when_the_spec_and_the_code_location_load(tmp_path):
    spec, rules = _btc()
    with pytest.raises(SpecError, match="slot 'emission_builder' cannot change at a cycle"):
        RulesChange(T, slots={"emission_builder": POSITION}).validate()
    with pytest.raises(SpecError, match="scoring_funtion"):
        RulesChange(T, slots={"scoring_funtion": POSITION}).validate()
    with pytest.raises(SpecError, match="changes nothing"):
        RulesChange(T).validate()
    with pytest.raises(SpecError, match="nearest|did you mean|effective_from"):
        RulesChange(T, efective_from=T)
    with pytest.raises(SpecError, match="aware UTC"):
        replace(spec, rules_changes=(RulesChange(T.replace(tzinfo=None), slots={"scoring_function": POSITION}),))
    with pytest.raises(SpecError, match="in order of effective_from"):
        replace(spec, rules_changes=(RulesChange(T, slots={"scoring_function": POSITION}),
                                     RulesChange(T - timedelta(hours=1), failure_policy=FailurePolicy.constant(0.1))))
    with pytest.raises(SpecError, match="cannot be removed"):
        RulesChange(T, slots={"scoring_function": None}).validate()
    with pytest.raises(RulesError, match="rules_changes at 2025-01-07T04:30:00\\+00:00: .*no_such_module"):
        build_book(replace(spec, rules_changes=(RulesChange(T, slots={"scoring_function": "no_such_module:f"}),)), rules)
    with pytest.raises(RulesError, match="max_price_staleness_seconds"):
        build_book(replace(spec, rules_changes=(RulesChange(T, max_price_staleness_seconds=120),)), rules)
    from competitions.btc_updown.definitions import build_definitions

    with pytest.raises(RulesError, match="no_such_module"):
        build_definitions(spec=replace(spec, rules_changes=(RulesChange(T, slots={"scoring_function": "no_such_module:f"}),)))


def _versions(*digests):
    return [{"effective_from": at.isoformat() if at else None, "fingerprint": fp, "cycle_digest": cd, "note": ""}
            for at, fp, cd in digests]


def test_a_period_is_mixed_only_when_its_cycle_rules_differ_undeclared():
    start, end = T - timedelta(hours=1), T + timedelta(hours=1)
    cycles = [start + timedelta(minutes=m) for m in range(120)]
    digests = {"A": "a", "A2": "a", "B": "b"}
    one = _versions((None, "A", "a"))
    declared = _versions((None, "A", "a"), (T, "B", "b"))

    def labels(pick):
        return [CycleLabel(at, "BTC", pick(at)) for at in cycles]

    same = check_period(one, labels(lambda at: "A"), digests, start, end, "A")
    assert not same["mixed"] and same["scored_under"][0]["cycles"] == 120
    # another fingerprint with the same per-cycle rules (a per-period change): not a mix
    period_change = check_period(one, labels(lambda at: "A" if at < T else "A2"), digests, start, end, "A")
    assert not period_change["mixed"] and len(period_change["scored_under"]) == 2
    undeclared = check_period(one, labels(lambda at: "A" if at < T else "B"), digests, start, end, "A")
    assert undeclared["mixed"] and f"{T.isoformat()} .. " in undeclared["detail"]
    as_declared = check_period(declared, labels(lambda at: "A" if at < T else "B"), digests, start, end, "B")
    assert not as_declared["mixed"] and all(g["as_declared"] == g["cycles"] for g in as_declared["scored_under"])
    # declared, but the cycles after it were scored under the old rules: not as declared
    ignored = check_period(declared, labels(lambda at: "A"), digests, start, end, "B")
    assert ignored["mixed"]
    # scored before fingerprints were recorded: not counted as a mix, said
    legacy = check_period(one, labels(lambda at: None if at < T else "A"), digests, start, end, "A")
    assert not legacy["mixed"] and legacy["unlabelled_cycles"] == 60 and "before fingerprints" in legacy["detail"]
    # a fingerprint with no recorded document is its own rules
    unknown = check_period(one, labels(lambda at: "A" if at < T else "Z"), digests, start, end, "A")
    assert unknown["mixed"]
    # the whole period under rules that changed after it was scored: one regime, not a mix
    later = check_period(_versions((None, "B", "b")), labels(lambda at: "A"), digests, start, end, "B")
    assert not later["mixed"] and "changed after they were scored" in later["detail"]

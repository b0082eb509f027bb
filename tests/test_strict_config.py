"""Configuration that is given and wrong is refused by name: an unknown field of the rules, of the
spec's declarations or of a spec file fails the load with the field and the nearest valid one, and
`crunch-dagster doctor` reports it. And a checkpoint's stored policies name what actually paid.

Issue: `CallableRules(..., emision_builder=...)` (misspelt) or a leftover `failure_score=` loaded,
`check_wiring()` and `doctor` passed, and the checkpoint paid the default tiered split instead of the
competition's builder."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from crunch_assets import spec as spec_module
from crunch_assets.rules import CallableRules, FeedGroundTruth, WiringError
from crunch_assets.spec import (
    CompetitionSpec,
    Declared,
    Eligibility,
    EmissionPolicy,
    FailurePolicy,
    LeaderboardWindow,
    Scope,
    SpecError,
)

START = datetime(2026, 11, 10, tzinfo=timezone.utc)
H = timedelta(hours=1)
BUILDER = "tests.test_strict_config:winner_takes_all"


def winner_takes_all(entries):
    """A competition's own emission: rank 1 takes everything."""
    return [1_000_000_000] + [0] * (len(entries) - 1)


def _rules_fields(**override) -> dict:
    from competitions.btc_updown.definitions import RULES

    return {**{name: getattr(RULES, name) for name in CallableRules.model_fields}, **override}


# --- the rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, message", [
    ({"emision_builder": BUILDER}, "CallableRules: unknown field 'emision_builder'; did you mean 'emission_builder'?"),
    ({"failure_score": 0.0}, "CallableRules: unknown field 'failure_score'; it is no longer a field here: "
                             "a FAILED or ABSENT prediction's score is the spec's failure_policy"),
    ({"scoring_fn": BUILDER}, "unknown field 'scoring_fn'; did you mean 'scoring_function'?"),
])
def test_an_unknown_rules_field_fails_the_load_naming_it_and_the_nearest(given, message):
    with pytest.raises(WiringError) as refused:
        CallableRules(**_rules_fields(), **given)
    assert message in str(refused.value)


def test_every_unknown_rules_field_is_named_at_once():
    with pytest.raises(WiringError) as refused:
        CallableRules(**_rules_fields(), emision_builder=BUILDER, failure_score=0.0)
    assert "'emision_builder'" in str(refused.value) and "'failure_score'" in str(refused.value)


def test_a_ground_truth_resource_refuses_an_unknown_field_too():
    with pytest.raises(WiringError, match="FeedGroundTruth: unknown field 'reads_fed'"):
        FeedGroundTruth(reads_fed=False)


def test_a_correctly_spelt_builder_pays_and_the_checkpoint_names_it(clean_database, tmp_path):
    """Through the real assets: the competition's builder pays (rank 1 takes all, where the spec's
    tiered policy would split 50/25/25), and the stored policies say so, with its path."""
    from crunch_assets.definitions import build_competition_definitions
    from resources.feeds.synthetic import SyntheticFeed
    from resources.store.competition import CompetitionStore
    from resources.store.database import engine_for
    from tests.rewards_fixtures import hour_key, materialize_hours, materialize_one, spec_for, write_models

    spec = spec_for(START, checkpoint_interval_seconds=3600)
    models = write_models(tmp_path / "models", ["oracle", "coin", "anti"])
    defs = build_competition_definitions(spec, CallableRules(**_rules_fields(emission_builder=BUILDER)),
                                         models_dir=models, feed=SyntheticFeed(), automation_running=False)
    materialize_hours(defs, spec, ["feed_records"], START, START + H)
    materialize_hours(defs, spec, ["predictions", "scores"], START, START)
    materialize_one(defs, spec, "snapshots", "2026-11-10")
    materialize_one(defs, spec, "emission_checkpoints", hour_key(START))
    checkpoint = CompetitionStore(engine_for(), spec.slug).checkpoint(START, START + H)
    assert [(r["model_id"], r["reward_pct"]) for r in checkpoint.entries["ranking"]] == [
        ("oracle", 1_000_000_000), ("coin", 0), ("anti", 0)]
    assert checkpoint.entries["policies"]["emission"] == f"the competition's emission builder {BUILDER}"
    assert {r["breakdown"]["rule"] for r in checkpoint.entries["ranking"]} == {f"the competition's emission builder {BUILDER}"}


def test_the_stored_emission_policy_is_the_spec_s_when_no_builder_paid():
    from competitions.btc_updown.definitions import RULES, SPEC
    from crunch_assets.defs.checkpoints.assets import _paying_rule, emission_rule

    assert emission_rule(SPEC, RULES, builder_paid=False).startswith("tiered by rank")
    with_builder = CallableRules(**_rules_fields(emission_builder=BUILDER))
    # a builder that answered None left the split to the spec's policy: that is what paid
    assert emission_rule(SPEC, with_builder, builder_paid=False).startswith("tiered by rank")
    nobody = {"m": {"eligible": False, "breakdown": {"rule": "not eligible: no reward"}}}
    assert _paying_rule(SPEC, with_builder, nobody) == (
        f"the competition's emission builder {BUILDER} (no eligible model: nothing paid)")


# --- the spec's declarations ---------------------------------------------------------------------------


@pytest.mark.parametrize("build, message", [
    (lambda s: dataclasses.replace(s, failure_scor=FailurePolicy.constant(0.0)),
     "CompetitionSpec: unknown field 'failure_scor'; did you mean 'failure_policy'?"),
    (lambda s: dataclasses.replace(s, emision=EmissionPolicy.softmax(1.0)),
     "CompetitionSpec: unknown field 'emision'; did you mean 'emission'?"),
    (lambda s: Scope("BTC", 60, 60, wieght=2.0), "Scope: unknown field 'wieght'; did you mean 'weight'?"),
    (lambda s: FailurePolicy("constant", valu=0.0), "FailurePolicy: unknown field 'valu'; did you mean 'value'?"),
    (lambda s: Eligibility("min_coverage", min_coverag=0.9),
     "Eligibility: unknown field 'min_coverag'; did you mean 'min_coverage'?"),
    (lambda s: EmissionPolicy("softmax", temprature=2.0),
     "EmissionPolicy: unknown field 'temprature'; did you mean 'temperature'?"),
    (lambda s: LeaderboardWindow("score_recent", second=86400),
     "LeaderboardWindow: unknown field 'second'; did you mean 'seconds'?"),
])
def test_an_unknown_spec_field_fails_the_load_naming_it_and_the_nearest(build, message):
    from competitions.btc_updown.definitions import SPEC

    with pytest.raises(SpecError) as refused:
        build(SPEC)
    assert message in str(refused.value)


def _flatten_type_args(hint) -> list:
    import typing

    found = []
    for arg in typing.get_args(hint):
        found += [arg, *_flatten_type_args(arg)]
    return found


def test_every_declaration_in_the_spec_refuses_unknown_fields():
    """A declaration added to spec.py (a new policy) inherits Declared, or this names it. A declaration is
    any spec.py dataclass a CompetitionSpec can hold, however deep (findings like CadenceProblem are not)."""
    import typing

    declared, pending = [], [CompetitionSpec]
    while pending:
        cls = pending.pop()
        if cls in declared:
            continue
        declared.append(cls)
        for hint in typing.get_type_hints(cls).values():
            for held in [hint, *_flatten_type_args(hint)]:
                if (isinstance(held, type) and dataclasses.is_dataclass(held)
                        and held.__module__ == spec_module.__name__):
                    pending.append(held)
    assert CompetitionSpec in declared and Scope in declared and len(declared) > 5
    assert [cls.__name__ for cls in declared if not issubclass(cls, Declared)] == []


# --- spec files and doctor -----------------------------------------------------------------------------


@pytest.mark.parametrize("body, message", [
    ({"failure_policy": {"kind": "constant", "valu": 0.0}}, "failure_policy.valu: unknown key; did you mean 'value'?"),
    ({"failure_policy": {"kind": "relative", "percentil": 90}},
     "failure_policy.percentil: unknown key; did you mean 'percentile'?"),
    ({"eligibility": {"mode": "min_coverage", "min_coverage": 0.5, "min_coverag": 0.9}},
     "eligibility.min_coverag: unknown key; did you mean 'min_coverage'?"),
    ({"emission": {"kind": "tiered", "tier_pct": [[1, 50.0]]}}, "emission.tier_pct: unknown key; did you mean 'tiers_pct'?"),
    ({"callables": {"emision_builder": BUILDER}}, "callables.emision_builder: unknown key; did you mean 'emission_builder'?"),
    ({"leaderboard_windows": [{"name": "score_recent", "secs": 86400}]},
     "leaderboard_windows[0].secs: unknown key; did you mean 'seconds'?"),
    ({"feed": {"kind": "candle", "granularity": 60}}, "feed.granularity: unknown key; did you mean 'granularity_seconds'?"),
    ({"failure_score": 0.0}, "failure_score: unknown key; did you mean 'failure_policy'?"),
    ({"zzz": 1}, "zzz: unknown key; known keys here: callables, "),
])
def test_an_unknown_spec_file_key_is_refused_with_the_nearest(tmp_path, body, message):
    from crunch_assets.scaffold.config import ScaffoldError, resolve

    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"spec_version": "1", **body}))
    with pytest.raises(ScaffoldError) as refused:
        resolve("strict_comp", None, path)
    assert any(message in problem for problem in refused.value.problems), refused.value.problems


def test_every_spec_file_section_forbids_unknown_keys():
    """Every section of a spec file refuses unknown keys, or this names it: the spec's own
    declarations (CompetitionSpec validates the spec keys) and the scaffold's few models (feed, callables)."""
    from dataclasses import fields
    from typing import get_args, get_type_hints

    from pydantic import BaseModel

    from crunch_assets.scaffold.config import ScaffoldConfig
    from crunch_assets.spec import CompetitionSpec, _declared_types

    def held_models(annotation):
        found = [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []
        return found + [m for argument in get_args(annotation) for m in held_models(argument)]

    seen, todo = set(), [ScaffoldConfig]
    while todo:
        model = todo.pop()
        if model not in seen:
            seen.add(model)
            todo += [m for field in model.model_fields.values() for m in held_models(field.annotation)]
    assert [m.__name__ for m in seen if m.model_config.get("extra") != "forbid"] == []
    declarations, todo = set(), [CompetitionSpec]
    while todo:
        declaration = todo.pop()
        if declaration not in declarations:
            declarations.add(declaration)
            hints = get_type_hints(declaration)
            todo += [held for f in fields(declaration) for held in _declared_types(hints[f.name])]
    assert len(declarations) > 10
    assert [d.__name__ for d in declarations if d.__pydantic_config__.get("extra") != "forbid"] == []


def test_doctor_reports_an_unknown_key_of_a_spec_file(tmp_path):
    from crunch_assets.cli import main as cli

    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"spec_version": "1", "slug": "strict_comp",
                                "emission": {"kind": "softmax", "temprature": 2.0},
                                "callables": {"emision_builder": BUILDER}}))
    result = CliRunner().invoke(cli, ["doctor", "--spec", str(path)])
    assert result.exit_code == 1, result.output
    assert "emission.temprature: unknown key; did you mean 'temperature'?" in result.output
    assert "callables.emision_builder: unknown key; did you mean 'emission_builder'?" in result.output


def test_doctor_reports_an_unknown_field_of_rules_and_spec(tmp_path, database_url):
    from tests.test_scaffold import copy_checkout, crunch

    root = copy_checkout(tmp_path / "checkout")
    assert crunch(root, "init", "typo_comp").returncode == 0
    config = root / "competitions/typo_comp/config.py"
    generated = config.read_text()
    assert "RULES = CallableRules(\n" in generated and "    description=" in generated
    config.write_text(generated.replace("RULES = CallableRules(\n", f"RULES = CallableRules(\n    emision_builder={BUILDER!r},\n"))
    rules = crunch(root, "doctor", "typo_comp")
    assert rules.returncode == 1, rules.stdout + rules.stderr
    assert "RULES: CallableRules: unknown field 'emision_builder'; did you mean 'emission_builder'?" in rules.stdout
    assert "fix: correct it where RULES is declared (competitions/typo_comp/config.py)" in rules.stdout

    config.write_text(generated.replace("    description=", "    failure_scor=FailurePolicy.constant(0.0),\n    description="))
    spec = crunch(root, "doctor", "typo_comp")
    assert spec.returncode == 1, spec.stdout + spec.stderr
    assert "SPEC: CompetitionSpec: unknown field 'failure_scor'; did you mean 'failure_policy'?" in spec.stdout

    config.write_text(generated)
    assert crunch(root, "doctor", "typo_comp").returncode == 0

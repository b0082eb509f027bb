"""One spec schema: CompetitionSpec (pydantic dataclasses) is what Python definitions, spec files and
`doctor` are checked by; its JSON schema is published in docs/ and equals the model's."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import jsonschema_rs
import pytest

from crunch_assets.fingerprint import to_json
from crunch_assets.spec import SCHEMA_DOCUMENT, CompetitionSpec, SpecError, schema_text

ROOT = Path(__file__).resolve().parents[1]
SENSOR_INTERVALS = {"rollup_sensor_interval_seconds": 300, "checkpoint_sensor_interval_seconds": 300,
                    "run_failure_sensor_interval_seconds": 120}


def _specs() -> list[CompetitionSpec]:
    from competitions.btc_updown.definitions import ENSEMBLES, METRICS
    from competitions.btc_updown.definitions import SPEC as btc
    from competitions.crypto_density.definitions import SPEC as density

    return [btc, density, replace(btc, ensembles=ENSEMBLES, metrics=METRICS)]


def test_the_published_schema_is_the_models():
    assert (ROOT / SCHEMA_DOCUMENT).read_text() == schema_text(), (
        "docs/competition-spec.schema.json is stale: regenerate it with .venv/bin/python -m crunch_assets.spec")


def test_every_field_is_in_the_schema():
    properties = CompetitionSpec.model_json_schema()["properties"]
    assert sorted(properties) == sorted(f.name for f in fields(CompetitionSpec))


@pytest.mark.parametrize("index", range(3))
def test_every_field_round_trips_through_plain_json(index):
    """A spec written as JSON (what a spec file holds) is the same spec: every field, nested
    policies included, can be set from a file; the schema accepts that JSON too."""
    spec = _specs()[index]
    data = json.loads(json.dumps(to_json(spec)))
    assert CompetitionSpec.model_validate(data) == spec
    jsonschema_rs.validator_for(CompetitionSpec.model_json_schema()).validate(data)


def test_sensor_intervals_are_declared_with_their_defaults():
    spec = _specs()[0]
    assert {name: getattr(spec, name) for name in SENSOR_INTERVALS} == SENSOR_INTERVALS
    for name in SENSOR_INTERVALS:
        with pytest.raises(SpecError, match=f"{name} must be > 0, got 0"):
            replace(spec, **{name: 0})


@pytest.mark.parametrize("change, message", [
    ({"gate": {"min_eligible_participant": 3}},
     "gate.min_eligible_participant: unknown key; did you mean 'min_eligible_participants'?"),
    ({"scopes": [{"subject": "BTC", "resolve_horizon_seconds": 60, "prediction_interval_seconds": 60, "wieght": 2}]},
     "scopes[0].wieght: unknown key; did you mean 'weight'?"),
    ({"copy_detection": {"polcy": "flag"}}, "copy_detection.polcy: unknown key; did you mean 'policy'?"),
    ({"void_after_secs": 60}, "void_after_secs: unknown key; did you mean 'void_after_seconds'?"),
    # wrong values are refused by name, never coerced nor defaulted
    ({"void_after_seconds": "3600"}, "void_after_seconds: Input should be a valid integer (got '3600')"),
    ({"history_seconds": 3600.5}, "history_seconds: Input should be a valid integer"),
    ({"ranking_descending": "yes"}, "ranking_descending: Input should be a valid boolean (got 'yes')"),
    ({"rollup_sensor_interval_seconds": True}, "rollup_sensor_interval_seconds: Input should be a valid integer"),
    ({"gate": {"max_participant_share_pct": 120}}, "gate: max_participant_share_pct must be in (0, 100]"),
    ({"start": "2026-11-01T00:00:00"}, "start must be timezone-aware UTC"),
])
def test_a_spec_file_is_refused_by_name(change, message):
    data = {**json.loads(json.dumps(to_json(_specs()[0]))), **change}
    with pytest.raises(SpecError) as refused:
        CompetitionSpec.model_validate(data)
    assert message in str(refused.value)


def test_a_python_definition_is_refused_the_same_way():
    spec = _specs()[0]
    with pytest.raises(SpecError, match="void_after_seconds: Input should be a valid integer"):
        replace(spec, void_after_seconds="3600")
    with pytest.raises(SpecError, match="CompetitionSpec: unknown field 'void_after_secs'; did you mean 'void_after_seconds'"):
        replace(spec, void_after_secs=60)
    # a setting its kind does not use is refused by name, never ignored (a spec file's too)
    with pytest.raises(SpecError, match="emission: floor_pct is not a setting of the softmax emission"):
        replace(spec, emission={"kind": "softmax", "temperature": 2.0, "floor_pct": 5.0})
    with pytest.raises(SpecError, match="failure_policy: percentile is not a setting of the constant failure policy"):
        replace(spec, failure_policy={"kind": "constant", "value": -1.0, "percentile": 50.0})
    with pytest.raises(SpecError, match="eligibility: min_coverage is not a setting of the every_cycle eligibility"):
        replace(spec, eligibility={"mode": "every_cycle", "min_coverage": 0.5})
    # a policy given as its fields (as in a spec file) is the policy
    assert replace(spec, gate={"min_eligible_participants": 5}).gate.min_eligible_participants == 5


# --- spec files of `crunch-dagster init` ----------------------------------------------------------------

EVERY_OTHER_FIELD = {
    "eligibility": {"mode": "every_cycle", "min_scored_answers": 3, "require_every_scope": True},
    "emission": {"kind": "tiered", "tiers_pct": [[1, 40.0], [4, 20.0]], "unclaimed": "pro_rata"},
    "payout": {"pay_best_model_per_participant": False, "max_models_per_participant": 2,
               "benchmark_models": ["house"], "benchmark_cutoff": True, "ties": "by_model_id"},
    "gate": {"min_eligible_participants": 5, "max_participant_share_pct": 40.0, "dispute_window_seconds": 3600},
    "copy_detection": {"policy": "flag", "decimals": 4, "lags": [1, 2], "never_match": [{"position": 0.0}]},
    "live_feed_wait_seconds": 4.5, "feed_poll_interval_seconds": 20, "max_catchup_seconds": 600,
    "cycle_lead_seconds": 10, "cycle_sensor_interval_seconds": 15, "settlement_sensor_interval_seconds": 120,
    "registry_sensor_interval_seconds": 90, "lag_sensor_interval_seconds": 100,
    "rollup_sensor_interval_seconds": 200, "checkpoint_sensor_interval_seconds": 250,
    "run_failure_sensor_interval_seconds": 30,
    "rules_changes": [{"effective_from": "2027-01-01T00:00:00Z", "void_after_seconds": 7200, "note": "longer wait"}],
}


def _resolve(tmp_path, body):
    from crunch_assets.scaffold.config import resolve

    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"spec_version": "1", "start": "2026-11-02T00:00:00Z", **body}))
    return resolve("every_field", None, path)


def test_a_spec_file_sets_fields_init_could_not_set_before(tmp_path):
    """Before, these fields could not be given in a spec file (unknown key); now every CompetitionSpec
    field can, and the generated config.py declares exactly the spec `init` checked."""
    from datetime import datetime, timezone

    from crunch_assets.scaffold.config import to_competition_spec
    from crunch_assets.scaffold.generate import render

    resolved = _resolve(tmp_path, EVERY_OTHER_FIELD)
    start = datetime(2026, 11, 2, tzinfo=timezone.utc)
    spec = to_competition_spec(resolved, start)
    declared = to_json(spec)
    for name, value in EVERY_OTHER_FIELD.items():
        if name != "rules_changes":
            assert {k: declared[name][k] for k in value} == value if isinstance(value, dict) else declared[name] == value
    assert spec.rules_changes[0].void_after_seconds == 7200
    config_py = next(f for f in render(resolved) if f.path.endswith("/config.py"))
    namespace: dict = {"__file__": str(tmp_path / "config.py")}
    exec(compile(config_py.content, config_py.path, "exec"), namespace)
    assert namespace["SPEC"] == spec


@pytest.mark.parametrize("body, message", [
    ({"gat": {"min_eligible_participants": 5}}, "gat: unknown key; did you mean 'gate'?"),
    ({"gate": {"min_eligible_participant": 5}},
     "gate.min_eligible_participant: unknown key; did you mean 'min_eligible_participants'?"),
    ({"rollup_sensor_interval_seconds": "300"}, "rollup_sensor_interval_seconds: Input should be a valid integer"),
    ({"checkpoint_sensor_interval_seconds": 0}, "checkpoint_sensor_interval_seconds must be > 0, got 0"),
    ({"payout": {"ties": "coin_flip"}}, "payout: ties must be one of share, by_model_id"),
])
def test_a_spec_file_field_is_refused_by_name(tmp_path, body, message):
    from crunch_assets.scaffold.config import ScaffoldError

    with pytest.raises(ScaffoldError) as refused:
        _resolve(tmp_path, body)
    assert any(message in problem for problem in refused.value.problems), refused.value.problems


def test_doctor_checks_a_spec_file_against_the_published_schema(tmp_path):
    from crunch_assets.scaffold.doctor import doctor_spec

    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"spec_version": "1", "slug": "schema_check", "void_after_seconds": "3600",
                                "gate": {"min_eligible_participant": 5}}))
    report = doctor_spec(path)
    schema_lines = [p.what for p in report.problems if p.what.endswith("(JSON schema)")]
    assert any("void_after_seconds" in line and "integer" in line for line in schema_lines), schema_lines
    assert any("gate" in line and "min_eligible_participant" in line for line in schema_lines), schema_lines
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"spec_version": "1", "slug": "schema_check", **EVERY_OTHER_FIELD}))
    assert [p.what for p in doctor_spec(good).problems if p.what.endswith("(JSON schema)")] == []


def test_a_spec_files_contribution_emission_keeps_the_presets_floor_unless_it_gives_one(tmp_path):
    # The 1 % floor of the reference's preset is what a spec file that left floor_pct out always paid;
    # the declaration's own default (no floor) would silently change that file's payout.
    import json

    from crunch_assets.scaffold.config import SPEC_VERSION, resolve

    for given, floor in (({"kind": "contribution"}, 1.0), ({"kind": "contribution", "floor_pct": 0}, 0.0)):
        path = tmp_path / "spec.json"
        path.write_text(json.dumps({"spec_version": SPEC_VERSION, "slug": "floors", "emission": given,
                                    "ensembles": [{"name": "field"}],
                                    "metrics": {"names": ["contribution", "model_correlation"],
                                                "signal": "competitions.btc_updown.logic:signal"}}))
        assert resolve(None, None, path).spec.emission.floor_pct == floor

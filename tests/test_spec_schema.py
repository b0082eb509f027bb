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
                    "run_failure_sensor_interval_seconds": 60}


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
    # a policy given as its fields (as in a spec file) is the policy
    assert replace(spec, gate={"min_eligible_participants": 5}).gate.min_eligible_participants == 5

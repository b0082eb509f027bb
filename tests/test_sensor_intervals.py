"""Every sensor's interval comes from the spec: set, it reaches the sensor; zero or negative, the
spec is refused by the field's name. No database, no Dagster run."""

from dataclasses import replace

import pytest

from competitions.btc_updown.definitions import SPEC, build_definitions
from crunch_assets.spec import SpecError
from resources.feeds.synthetic import SyntheticFeed

INTERVALS = {
    "cycle_sensor": "cycle_sensor_interval_seconds",
    "settlement_sensor": "settlement_sensor_interval_seconds",
    "rollup_sensor": "rollup_sensor_interval_seconds",
    "checkpoint_sensor": "checkpoint_sensor_interval_seconds",
    "model_registry_sensor": "registry_sensor_interval_seconds",
    "lag_sensor": "lag_sensor_interval_seconds",
    "run_failure_sensor": "run_failure_sensor_interval_seconds",
}


def test_the_defaults_are_the_intervals_the_sensors_had():
    assert (SPEC.rollup_sensor_interval_seconds, SPEC.checkpoint_sensor_interval_seconds,
            SPEC.run_failure_sensor_interval_seconds) == (300, 300, 120)


def test_each_sensor_ticks_at_its_spec_interval():
    spec = replace(SPEC, **{field: 41 + i for i, field in enumerate(INTERVALS.values())})
    defs = build_definitions(spec=spec, feed=SyntheticFeed(), automation_running=False)
    ticks = {s.name.removeprefix("btc_updown__"): s.minimum_interval_seconds for s in defs.sensors}
    assert {name: ticks[name] for name in INTERVALS} == {name: 41 + i for i, name in enumerate(INTERVALS)}
    # the feed sensor: the slower of the feed's poll and the settlement sensor's interval
    assert ticks["feed_sensor"] == max(spec.feed_poll_interval_seconds, spec.settlement_sensor_interval_seconds)


@pytest.mark.parametrize("field", ["rollup_sensor_interval_seconds", "checkpoint_sensor_interval_seconds",
                                   "run_failure_sensor_interval_seconds"])
@pytest.mark.parametrize("value", [0, -60])
def test_an_interval_that_is_not_positive_is_refused_by_name(field, value):
    with pytest.raises(SpecError, match=f"{field} must be > 0, got {value}"):
        replace(SPEC, **{field: value})

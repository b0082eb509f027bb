"""btc_updown with fast cycles, for the chaos run (bench/chaos.py): one cycle every
CRUNCH_CHAOS_CYCLE_SECONDS (default 20) instead of 60, same rules, feed and models."""

import os
from dataclasses import replace

from competitions.btc_updown.definitions import SPEC, build_definitions
from crunch_assets.spec import Scope

CYCLE_SECONDS = int(os.environ.get("CRUNCH_CHAOS_CYCLE_SECONDS", "20"))
# The cycle sensor's interval scaled down with the cycle (30 s at 60 s cycles), so that "every due
# cycle stored within 2 cycles" asks the same of recovery as it does at the real cycle length; the
# lag sensor every minute, so a verdict on the stored cycles follows the first one soon.
FAST_SPEC = replace(SPEC, scopes=(Scope(subject="BTC", resolve_horizon_seconds=60, prediction_interval_seconds=CYCLE_SECONDS),),
                    cycle_sensor_interval_seconds=max(10, CYCLE_SECONDS // 2), lag_sensor_interval_seconds=60)

defs = build_definitions(FAST_SPEC)

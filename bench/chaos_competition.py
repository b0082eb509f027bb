"""btc_updown with fast cycles, for the chaos run (bench/chaos.py): one cycle every
CRUNCH_CHAOS_CYCLE_SECONDS (default 20) instead of 60, same rules, feed and models."""

import os
from dataclasses import replace

from competitions.btc_updown.definitions import SPEC, build_definitions
from crunch_assets.spec import Scope

CYCLE_SECONDS = int(os.environ.get("CRUNCH_CHAOS_CYCLE_SECONDS", "20"))
FAST_SPEC = replace(SPEC, scopes=(Scope(subject="BTC", resolve_horizon_seconds=60, prediction_interval_seconds=CYCLE_SECONDS),))

defs = build_definitions(FAST_SPEC)

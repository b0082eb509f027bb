"""btc_updown with a shorter cycle, for bench/bench_live.py: one cycle every
CRUNCH_BENCH_CYCLE_SECONDS (default 60, the real competition) instead of 60; nothing else changes
(rules, feed, models, sensors, the hour windows of the live runs). Short cycles give enough
cycles for a real p99 in a window of minutes."""

import os
from dataclasses import replace

from competitions.btc_updown.definitions import SPEC, build_definitions
from crunch_assets.spec import Scope

CYCLE_SECONDS = int(os.environ.get("CRUNCH_BENCH_CYCLE_SECONDS", "60"))
BENCH_SPEC = replace(SPEC, scopes=(Scope(subject="BTC", resolve_horizon_seconds=60, prediction_interval_seconds=CYCLE_SECONDS),))

defs = build_definitions(BENCH_SPEC)

"""btc_updown with fast cycles, for the chaos run (bench/chaos.py): one cycle every
CRUNCH_CHAOS_CYCLE_SECONDS (default 30) instead of 60, same rules, feed and models. The cycle
must leave every cycle a candle at most max_price_staleness_seconds (30 s) old on the 60 s
candles: 30 or 60, not 20 (one cycle in three could never be resolved; the load refuses it)."""

import os
from dataclasses import replace

from competitions.btc_updown.definitions import SPEC as BTC_UPDOWN_SPEC
from competitions.btc_updown.definitions import build_definitions
from crunch_assets.spec import Scope

DEFAULT_CYCLE_SECONDS = 30
CYCLE_SECONDS = int(os.environ.get("CRUNCH_CHAOS_CYCLE_SECONDS", str(DEFAULT_CYCLE_SECONDS)))


def fast_spec(cycle_seconds: int):
    # The cycle sensor's interval scaled down with the cycle (30 s at 60 s cycles), so that "every
    # due cycle stored within 2 cycles" asks the same of recovery as it does at the real cycle
    # length; the lag sensor every minute, so a verdict on the stored cycles follows the first one soon.
    return replace(BTC_UPDOWN_SPEC, scopes=(Scope(subject="BTC", resolve_horizon_seconds=60, prediction_interval_seconds=cycle_seconds),),
                   cycle_sensor_interval_seconds=max(10, cycle_seconds // 2), lag_sensor_interval_seconds=60)


# SPEC: what the report API of a deployment serving this file reads (`crunch-dagster api --workspace`)
SPEC = FAST_SPEC = fast_spec(CYCLE_SECONDS)
defs = build_definitions(FAST_SPEC)

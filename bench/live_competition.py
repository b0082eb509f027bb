"""btc_updown with a shorter cycle, for the bench/ commands that need many cycles in minutes
(bench_live.py --cycle-seconds, the smoke modes): one cycle every CRUNCH_BENCH_CYCLE_SECONDS
(default 60, the real competition). Below 60 s the synthetic feed's candles are as long as the
cycle (every cycle then has a fresh price to be resolved with, as max_price_staleness_seconds
demands) and a model sees the same 60 candles as in the real competition. Rules, models, sensors
and the hour windows of the live runs do not change."""

import os
from dataclasses import replace

from competitions.btc_updown.definitions import SPEC, build_definitions
from crunch_assets.spec import Scope
from resources.feeds.synthetic import SyntheticFeed

CYCLE_SECONDS = int(os.environ.get("CRUNCH_BENCH_CYCLE_SECONDS", "60"))
if CYCLE_SECONDS == 60:
    BENCH_SPEC, feed = SPEC, None  # the real competition, its feed from the environment
else:
    BENCH_SPEC = replace(SPEC, scopes=(Scope(subject="BTC", resolve_horizon_seconds=60, prediction_interval_seconds=CYCLE_SECONDS),),
                         history_seconds=60 * CYCLE_SECONDS)
    feed = SyntheticFeed(kind="candle", granularity_seconds=CYCLE_SECONDS)

defs = build_definitions(BENCH_SPEC, feed=feed)

"""A scope's cycles must find an observation within max_price_staleness_seconds at every cycle
instant and every resolution instant, given the feed's granularity; the code location refuses to
load otherwise (crunch_assets/spec.py: cadence_problems). The arithmetic is checked against the
engine's own price lookups (PriceSeries, as every ground truth resolver uses them) on a real
synthetic feed's candles and ticks, cycle by cycle."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from crunch_assets.prices import PriceObservation, PriceSeries
from crunch_assets.spec import Scope, SpecError, cadence_problems, check_feed_cadence
from resources.feeds.synthetic import SyntheticFeed

START = datetime(2026, 11, 6, tzinfo=timezone.utc)


def btc_spec(interval: int, horizon: int = 60, staleness: int = 30):
    from competitions.btc_updown.definitions import SPEC

    return replace(SPEC, start=START, scopes=(Scope("BTC", horizon, interval),), max_price_staleness_seconds=staleness)


def unresolvable_cycles(spec, feed: SyntheticFeed, hours: int = 2) -> tuple[int, int]:
    """(cycles whose entry or resolution price is missing, cycles) over `hours`, by the engine's
    own lookups on what the feed serves."""
    end = START + timedelta(hours=hours)
    scope = spec.scopes[0]
    records = feed.fetch_records("BTC", START - timedelta(hours=1), end + timedelta(seconds=scope.resolve_horizon_seconds + 3600),
                                 as_of=end + timedelta(days=1)).records
    prices = PriceSeries([PriceObservation(r.observed_at, r.price) for r in records])
    cycles = [at for at, _ in spec.cycle_times(START, end)]
    staleness = spec.max_price_staleness_seconds
    missing = 0
    for cycle_at in cycles:
        entry = prices.last_at_or_before(cycle_at, staleness)
        resolved = entry and prices.resolution(entry, cycle_at + scope.horizon, staleness)
        missing += resolved is None
    return missing, len(cycles)


@pytest.mark.parametrize("interval, horizon, staleness, granularity", [
    (20, 60, 30, 60),  # the chaos bench's old default: one cycle in three
    (15, 60, 30, 60),  # 45 s at :45
    (30, 60, 30, 60),  # 30 s old at :30: within the bound (inclusive)
    (60, 100, 30, 60),  # every resolution instant 40 s after a close
    (60, 100, 45, 60),
    (20, 60, 30, 20),
    (45, 120, 50, 60),
    (300, 7200, 60, 300),  # crypto_density
    (900, 7200, 60, 300),
    (7, 60, 3, 5),
])
def test_the_refusal_matches_the_cycles_the_engine_cannot_resolve(interval, horizon, staleness, granularity):
    spec = btc_spec(interval, horizon, staleness)
    missing, total = unresolvable_cycles(spec, SyntheticFeed(granularity_seconds=granularity))
    problems = cadence_problems(spec, "candle", granularity)
    assert bool(problems) == bool(missing), (problems, missing, total)
    if problems:
        problem = problems[0]
        assert missing / total == pytest.approx(problem.unresolvable_cycles / problem.pattern_cycles, abs=0.02)


def test_ticks_are_checked_by_their_interval():
    spec = btc_spec(7, 60, 3)
    feed = SyntheticFeed(kind="tick", granularity_seconds=0, tick_interval_seconds=5)
    missing, total = unresolvable_cycles(spec, feed)
    assert missing == total // 5 or missing == total // 5 + 1  # cycles at 4 s past a tick
    assert cadence_problems(spec, "tick", 5) and not cadence_problems(spec, "tick", None)
    assert not cadence_problems(btc_spec(10, 60, 3), "tick", 5)


def test_the_message_names_the_scope_the_granularity_the_bound_and_the_fixes():
    with pytest.raises(SpecError) as refused:
        check_feed_cadence(btc_spec(20), "candle", 60)
    message = str(refused.value)
    assert message.startswith("scope BTC-60-20: a cycle every 20 s on 60 s candles finds the newest observation up to 40 s old")
    assert "max_price_staleness_seconds (30 s): 1 cycle(s) in 3 can never be resolved" in message
    assert "use one of: prediction_interval_seconds 30; 20 s candles" in message
    assert "max_price_staleness_seconds 40 (it must stay below the 60 s horizon)" in message
    for fixed in (btc_spec(30), btc_spec(20, staleness=40)):
        check_feed_cadence(fixed, "candle", 60)
    check_feed_cadence(btc_spec(20), "candle", 20)


def test_the_code_location_refuses_to_load_and_loads_once_fixed():
    """build_competition_definitions checks the feed it builds: today's 20 s chaos spec on 60 s
    candles loaded, and voided one cycle in three an hour later."""
    from competitions.btc_updown.definitions import build_definitions

    with pytest.raises(SpecError, match="scope BTC-60-20: a cycle every 20 s on 60 s candles"):
        build_definitions(btc_spec(20), feed=SyntheticFeed(), automation_running=False)
    build_definitions(btc_spec(20), feed=SyntheticFeed(granularity_seconds=20), automation_running=False)
    build_definitions(btc_spec(30), feed=SyntheticFeed(), automation_running=False)
    with pytest.raises(SpecError, match="on 5 s ticks"):
        build_definitions(btc_spec(7, staleness=3), feed=SyntheticFeed(kind="tick", granularity_seconds=0,
                                                                          tick_interval_seconds=5), automation_running=False)


def test_every_shipped_competition_and_pack_passes():
    import importlib
    import json
    from pathlib import Path

    from crunch_assets.scaffold.config import resolve

    for slug in ("btc_updown", "crypto_density"):
        module = importlib.import_module(f"competitions.{slug}.definitions")
        feed = module.defs.resources["feed"]
        assert not cadence_problems(module.SPEC, feed.kind, feed.granularity_seconds), slug
    for pack in Path(__file__).resolve().parents[1].joinpath("crunch_assets/scaffold/packs").glob("*.json"):
        json.loads(pack.read_text())
        resolve("pack_check", pack.stem, None)  # raises ScaffoldError on a cadence problem


def test_the_chaos_bench_default_loads():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from chaos import DEFAULT_CYCLE_SECONDS, ChaosFailure, refuse_unresolvable_cycle
    from chaos_competition import fast_spec

    refuse_unresolvable_cycle(DEFAULT_CYCLE_SECONDS)
    check_feed_cadence(fast_spec(DEFAULT_CYCLE_SECONDS), "candle", 60)
    with pytest.raises(ChaosFailure, match="--cycle-seconds 20: scope BTC-60-20"):
        refuse_unresolvable_cycle(20)

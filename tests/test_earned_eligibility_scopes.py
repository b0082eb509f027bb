"""Skipping a scope does not pay, over real BTC/USD candles: two equally weighted scopes (one
cycle a minute, one every six hours) replayed through the real assets; a model that joins after
the six-hour cycle has no row in that scope, and used to be ranked on the other one alone."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from crunch_assets.defs.checkpoints.assets import payout_entries
from crunch_assets.spec import Eligibility, Scope
from resources.feeds.csv_replay import CsvReplayFeed
from resources.store.competition import CompetitionStore
from tests.rewards_fixtures import materialize_hours, materialize_one
from tests.test_earned_eligibility import _reset, write_models

H = timedelta(hours=1)

SIX_HOURS = 6 * 3600


@pytest.fixture(scope="module")
def two_scopes(database_url, btc_csv, tmp_path_factory):
    """Two equally weighted scopes: a one-minute one, and one cycle every six hours. `both` answers
    every cycle; `skipper` joins after the six-hour cycle and answers the minute scope only."""
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.model_runners.local import LocalModelRunner

    engine = _reset(database_url)
    start = datetime(2025, 1, 7, 6, tzinfo=timezone.utc)
    spec = replace(SPEC, start=start, checkpoint_interval_seconds=SIX_HOURS,
                   scopes=(Scope("BTC", 60, 60), Scope("BTC", 60, SIX_HOURS)),
                   eligibility=Eligibility.minimum_coverage(0.5))
    feed = CsvReplayFeed(path=str(btc_csv), source="csv")

    def definitions(directory, names):
        models = write_models(tmp_path_factory.mktemp(directory), ("trend_following",), names)
        return build_definitions(spec=spec, feed=feed, automation_running=False,
                                 model_runner=LocalModelRunner(models_dir=str(models), call_timeout_seconds=5.0))

    early, late = definitions("early", []), definitions("late", ["skipper"])
    materialize_hours(early, spec, ["feed_records"], start, start + 6 * H)
    materialize_hours(early, spec, ["predictions", "scores"], start, start)
    materialize_hours(late, spec, ["predictions", "scores"], start + H, start + 5 * H)
    materialize_one(late, spec, "snapshots", "2025-01-07")
    store = CompetitionStore(engine, spec.slug)
    yield {"engine": engine, "defs": late, "spec": spec, "store": store, "period": (start, start + 6 * H)}
    engine.dispose()


def test_skipping_a_scope_no_longer_pays(two_scopes):
    """Issue: under minimum_coverage(0.5) with two equal scopes, a model with no row in one scope
    was ranked on the other alone (the empty scope dropped out of its mean) and outranked a model
    that answered both. Now the empty scope counts at its failure value, and coverage is judged
    per scope: the skipper is listed, ranked on both scopes, and not paid."""
    spec, store, (start, end) = two_scopes["spec"], two_scopes["store"], two_scopes["period"]
    minute, six_hours = (scope.key for scope in spec.scopes)
    from competitions.btc_updown.definitions import RULES

    paid = payout_entries(spec, RULES, store, store.snapshots(start, end), store.stored_rollups(start, end), start, end)
    skipper, both = paid["skipper"], paid["trend_following"]
    scopes = skipper["breakdown"]["scopes"]
    # what used to decide: 300 of the 361 cycles answered (83 % >= 50 %), and no row in the six-hour scope
    assert skipper["prediction_count"] == 300 and skipper["cycles"] == 361
    assert scopes[minute]["predictions"] == 300 and scopes[six_hours]["predictions"] == 0
    # the empty scope counts at its failure value (0.0) in the combined mean, not out of it
    assert scopes[six_hours]["value"] == 0.0
    assert skipper["score"] == pytest.approx((scopes[minute]["value"] + 0.0) / 2, abs=1e-12)
    assert not skipper["eligible"] and skipper["reward_pct"] == 0
    assert skipper["breakdown"]["unpaid_reason"] == (
        f"scored answers cover 0.00% of scope {six_hours}, less than the policy's 50% in every scope")
    assert both["eligible"] and both["reward_pct"] == 1_000_000_000
    assert both["breakdown"]["scopes"][six_hours]["scored"] == 1

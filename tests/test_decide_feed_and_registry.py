"""The feed sensor's and the model registry sensor's decisions as plain functions."""

from datetime import timedelta

from crunch_assets.defs.feed.sensor import FeedFacts, decide_feed
from crunch_assets.defs.registry.sensor import RegistryFacts, decide_registry
from resources.model_runners.base import ModelInfo
from tests.sensor_facts import KEYS, PARTITIONS, SPEC, at


def feed(facts):
    return decide_feed(SPEC, PARTITIONS, KEYS, facts)


def test_the_live_run_keeps_the_feed_current():
    decision = feed(FeedFacts(at(22, 9, 30), True, 60))
    assert not decision.requests and decision.skip_reason == "the live run keeps the feed current"


def test_a_late_feed_is_fetched_up_to_the_last_closed_record():
    now = at(22, 9, 30, 20)
    decision = feed(FeedFacts(now, False, 60, at(22, 9, 10)))
    request = decision.requests[0]
    assert request.run_key == f"btc_updown:feed:{at(22, 9, 30).isoformat()}"
    assert request.partition_key == "2026-11-22-09:00"
    assert request.run_config == {"ops": {KEYS.op("feed_records"): {"config": {"as_of": at(22, 9, 30).isoformat()}}}}
    assert "fetched up to 2026-11-22T09:10:00" in decision.why[0]
    assert feed(FeedFacts(now, False, 60, None)).requests  # never fetched


def test_a_feed_fetched_past_the_last_closed_record_waits():
    decision = feed(FeedFacts(at(22, 9, 30, 20), False, 60, at(22, 9, 30, 1)))
    assert not decision.requests and decision.skip_reason.startswith("feed fetched up to")


def test_at_the_hour_boundary_the_closing_hour_is_fetched_into_its_own_partition():
    """A candle closing at 10:00 was observed in the 09:00 hour: its run is that partition's."""
    decision = feed(FeedFacts(at(22, 10, 0, 5), False, 60, at(22, 9, 59)))
    assert decision.requests[0].partition_key == "2026-11-22-09:00"
    ticks = feed(FeedFacts(at(22, 10, 0, 5), False, 0, at(22, 9, 59)))  # a tick feed: second resolution
    assert ticks.requests[0].run_key == f"btc_updown:feed:{at(22, 10, 0, 5).isoformat()}"
    assert ticks.requests[0].partition_key == "2026-11-22-10:00"


def registry(stored, served, materialized=True, now=at(22, 9, 30, 40)):
    return decide_registry(SPEC, RegistryFacts(now, stored, served, materialized))


def test_joins_state_changes_and_leaves_request_one_sync_a_minute():
    served = [ModelInfo("m1", "one"), ModelInfo("m2", "two", state="STOPPED"), ModelInfo("m4", "four")]
    decision = registry({"m1": "RUNNING", "m2": "RUNNING", "m3": "RUNNING", "m5": "GONE"}, served)
    changes = "STATE_CHANGED m2: RUNNING -> STOPPED; JOINED m4; LEFT m3"
    assert decision.why == (changes,)
    assert decision.requests[0].tags == {"crunch/registry_changes": changes}
    assert decision.requests[0].run_key == (
        f"btc_updown:registry:STATE_CHANGED m2: RUNNING -> STOPPED|JOINED m4|LEFT m3:{at(22, 9, 30).isoformat()}")
    later = registry({"m1": "RUNNING", "m2": "RUNNING", "m3": "RUNNING", "m5": "GONE"}, served,
                     now=at(22, 9, 30, 40) + timedelta(minutes=1))
    assert later.requests[0].run_key != decision.requests[0].run_key  # retried a minute later if it did not apply


def test_no_change_no_sync_unless_the_registry_was_never_materialized():
    served = [ModelInfo("m1", "one")]
    quiet = registry({"m1": "RUNNING"}, served)
    assert not quiet.requests and quiet.skip_reason == "1 model(s), no change"
    assert registry({"m1": "RUNNING"}, served, materialized=False).why == ("never materialized",)
    assert not registry({}, [], materialized=False).requests  # nothing to show yet

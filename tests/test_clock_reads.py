"""The engine reads the time from resources/clock.py: a test clock drives a live run's wait for its
cycle, the heartbeat a live run stamps and the API's default ranges, without waiting on wall time."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from crunch_assets.api.reference import DEFAULT_SPAN_DAYS, _range
from crunch_assets.defs.live_window.window import beat, last_sign_of_life
from crunch_assets.run_config import WindowRunConfig, resolve_as_of
from resources.clock import TestClock, use_clock

AT = datetime(2031, 3, 4, 10, 0, 5, tzinfo=timezone.utc)  # far from the wall clock: a wall read would show
WINDOW = dg.TimeWindow(datetime(2031, 3, 4, 10, tzinfo=timezone.utc), datetime(2031, 3, 4, 11, tzinfo=timezone.utc))


def test_a_live_run_launched_ahead_of_its_cycle_waits_on_the_clock():
    with use_clock(TestClock(AT)) as clock:
        due = AT + timedelta(seconds=25)
        assert resolve_as_of(WindowRunConfig(as_of=due.isoformat()), WINDOW, wait_up_to_seconds=30) == due
        assert clock.now() == due  # it waited 25 s of the clock's time (a test clock advances at once)


def test_a_run_too_far_ahead_does_not_wait_and_goes_only_up_to_now():
    with use_clock(TestClock(AT)) as clock:
        wanted = AT + timedelta(minutes=5)
        assert resolve_as_of(WindowRunConfig(as_of=wanted.isoformat()), WINDOW, wait_up_to_seconds=30) == AT
        assert clock.now() == AT
        assert resolve_as_of(WindowRunConfig(), WINDOW) == AT  # no as_of: up to now, inside the window
        clock.set(WINDOW.end + timedelta(hours=2))
        assert resolve_as_of(WindowRunConfig(), WINDOW) == WINDOW.end  # never past the window


def test_the_heartbeat_is_stamped_with_the_clocks_time():
    with dg.DagsterInstance.ephemeral() as instance, use_clock(TestClock(AT)) as clock:
        assert last_sign_of_life(instance, "run-1") is None
        beat(instance, "run-1")
        assert last_sign_of_life(instance, "run-1") == AT
        clock.advance(minutes=3)
        beat(instance, "run-1")
        assert last_sign_of_life(instance, "run-1") == AT + timedelta(minutes=3)


def test_the_api_default_range_ends_at_the_clocks_now():
    with use_clock(TestClock(AT)) as clock:
        assert _range(None, None) == (AT - timedelta(days=DEFAULT_SPAN_DAYS), AT)
        clock.advance(hours=1)
        start = AT - timedelta(days=1)
        assert _range(start, None) == (start, AT + timedelta(hours=1))
        with pytest.raises(Exception, match="end must be after start"):
            _range(AT + timedelta(hours=2), None)

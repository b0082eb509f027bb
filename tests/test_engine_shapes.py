"""Engine v2's contract beyond BTC up/down: two competitions side by side in one database, tick
records stored and used, the environment settings read the same way for every competition, and
CLI replays of a partition range."""

import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from crunch_assets.settings import CompetitionSettings, SettingsError, parse_bool
from resources.store.database import dispose_engines, engine_for

PROJECT_ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 11, 18, tzinfo=timezone.utc)


def _versions(engine, competition: str, feed_source: str, feed_granularity: str) -> dict[str, set]:
    """(id, xmin) of one competition's rows in every table (and of its feed stream's rows)."""
    tables = ["inputs", "predictions", "scores", "snapshots", "cycle_rollups", "leaderboards", "checkpoints",
              "models", "model_events", "feed_subscriptions"]
    with engine.connect() as connection:
        versions = {
            table: set(connection.execute(sa.text(
                f"SELECT id, xmin::text FROM crunch.{table} WHERE competition = :c"), {"c": competition}).fetchall())
            for table in tables
        }
        versions["feed_records"] = set(connection.execute(sa.text(
            "SELECT id, xmin::text FROM crunch.feed_records WHERE source = :s AND granularity = :g"),
            {"s": feed_source, "g": feed_granularity}).fetchall())
    return versions


def test_two_competitions_side_by_side_never_change_each_others_rows(clean_database, tmp_path):
    from competitions.btc_updown.definitions import SPEC as BTC_SPEC
    from competitions.btc_updown.definitions import build_definitions as btc_definitions
    from competitions.crypto_density.definitions import SPEC as DENSITY_SPEC
    from competitions.crypto_density.definitions import build_definitions as density_definitions
    from crunch_assets.replay import replay
    from resources.feeds.synthetic import SyntheticFeed

    btc_spec = replace(BTC_SPEC, start=START, checkpoint_interval_seconds=3600)
    density_spec = replace(DENSITY_SPEC, start=START, checkpoint_interval_seconds=3600, history_seconds=3600)
    btc = btc_definitions(spec=btc_spec, feed=SyntheticFeed(), automation_running=False)
    density = density_definitions(spec=density_spec, feed=SyntheticFeed(granularity_seconds=300), automation_running=False)
    # one Dagster instance for both, as one deployment has
    instance = dg.DagsterInstance.ephemeral()
    replay(btc, btc_spec, START, START + timedelta(hours=2), instance=instance)
    engine = engine_for()
    btc_before = _versions(engine, "btc_updown", "synthetic", "1m")
    assert all(btc_before[t] for t in ("inputs", "scores", "checkpoints", "feed_records"))
    replay(density, density_spec, START, START + timedelta(hours=2), instance=instance)
    density_before = _versions(engine, "crypto_density", "synthetic", "5m")
    assert all(density_before[t] for t in ("inputs", "scores", "checkpoints", "feed_records"))
    assert _versions(engine, "btc_updown", "synthetic", "1m") == btc_before  # BTC on the same source untouched
    replay(btc, btc_spec, START, START + timedelta(hours=2), instance=instance)  # and the other way round
    assert _versions(engine, "crypto_density", "synthetic", "5m") == density_before
    assert _versions(engine, "btc_updown", "synthetic", "1m") == btc_before  # a rerun changes no row either


def test_a_replay_checkpoints_only_the_periods_it_replays(clean_database):
    """Hourly checkpoints, a replay of 03:00-04:00: the hours before it are not its to checkpoint."""
    from competitions.btc_updown.definitions import SPEC as BTC_SPEC
    from competitions.btc_updown.definitions import build_definitions as btc_definitions
    from crunch_assets.replay import replay
    from resources.feeds.synthetic import SyntheticFeed

    spec = replace(BTC_SPEC, start=START, checkpoint_interval_seconds=3600)
    defs = btc_definitions(spec=spec, feed=SyntheticFeed(), automation_running=False)
    timings = replay(defs, spec, START + timedelta(hours=3), START + timedelta(hours=4))
    assert len(timings.checkpoints) == 1
    with engine_for().connect() as connection:
        periods = connection.execute(sa.text("SELECT period_start FROM crunch.checkpoints")).scalars().all()
    assert periods == [START + timedelta(hours=3)]


def tick_input(scope, cycle_at, records):
    ticks = records.ticks(scope.subject)[-12:]
    return {"symbol": scope.subject, "asof_ts": int(cycle_at.timestamp()),
            "ticks": [[int(t.ts_event.timestamp()), t.price] for t in ticks]}


def test_tick_records_are_stored_and_used_as_input_and_truth(clean_database, tmp_path):
    from competitions.btc_updown.definitions import RULES, SPEC
    from crunch_assets.definitions import build_competition_definitions
    from crunch_assets.replay import replay
    from crunch_assets.rules import CallableRules
    from resources.feeds.synthetic import SyntheticFeed, synthetic_price
    from tests.rewards_fixtures import write_models

    spec = replace(SPEC, start=START, checkpoint_interval_seconds=3600, history_seconds=60)
    rules = CallableRules(**{**{n: getattr(RULES, n) for n in CallableRules.model_fields},
                             "input_builder": "tests.test_engine_shapes:tick_input"})
    defs = build_competition_definitions(spec, rules, models_dir=write_models(tmp_path / "models", ["coin"]),
                                         feed=SyntheticFeed(kind="tick", granularity_seconds=0, tick_interval_seconds=5),
                                         automation_running=False)
    replay(defs, spec, START, START + timedelta(hours=1))
    engine = engine_for()
    with engine.connect() as connection:
        kinds = connection.execute(sa.text("SELECT kind, granularity, count(*) FROM crunch.feed_records GROUP BY 1, 2")).fetchall()
        raw, actuals = connection.execute(sa.text(
            "SELECT raw_data, actuals FROM crunch.inputs WHERE cycle_at = :t"), {"t": START + timedelta(minutes=30)}).one()
        scored = connection.execute(sa.text("SELECT count(*) FROM crunch.scores WHERE success")).scalar_one()
    assert [(k, g) for k, g, _ in kinds] == [("tick", "tick")]
    at = int((START + timedelta(minutes=30)).timestamp())
    assert raw["ticks"][-1] == [at, round(synthetic_price("BTC", at), 6)]  # the tick at the cycle, nothing later
    assert len(raw["ticks"]) == 12
    assert actuals["entry_price"] == round(synthetic_price("BTC", at), 6)
    assert actuals["resolved_price"] == round(synthetic_price("BTC", at + 60), 6)
    assert scored == 60


def test_hermes_latest_prices_are_stored_as_ticks_live_and_never_claimed_for_the_past(clean_database):
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from crunch_assets.keys import ChainKeys
    from crunch_assets.replay import chain_assets
    from crunch_assets.run_config import as_of_run_config
    from resources.feeds.pyth import PythFeed
    from resources.store.feeds import FeedStore
    from tests.fakes.feed_servers import FakeHermesServer

    now = datetime.now(timezone.utc).replace(microsecond=0)
    spec = replace(SPEC, start=now.replace(minute=0, second=0) - timedelta(hours=2))
    keys = ChainKeys.for_slug(spec.slug)
    with FakeHermesServer() as hermes:
        hermes.now_seconds = int(now.timestamp())
        feed = PythFeed(hermes_base_url=hermes.url, kind="tick", granularity_seconds=0)
        defs = build_definitions(spec=spec, feed=feed, automation_running=False)
        live = dg.materialize(chain_assets(defs, [keys.feed_records]), resources=defs.resources,
                              partition_key=now.strftime("%Y-%m-%d-%H:00"),
                              run_config=as_of_run_config([ChainKeys.op_name(keys.feed_records)], now))
        assert live.success
        stream = feed.stream("BTC")
        stored = FeedStore(engine_for()).load_records([stream], now - timedelta(hours=1), now)[stream]
        assert [t.ts_event for t in stored] == [now] and stored[0].kind == "tick"
        past = now.replace(minute=0, second=0) - timedelta(hours=2)
        backfill = dg.materialize(chain_assets(defs, [keys.feed_records]), resources=defs.resources,
                                  partition_key=past.strftime("%Y-%m-%d-%H:00"))
        metadata = backfill.asset_materializations_for_node(ChainKeys.op_name(keys.feed_records))[0].metadata
        assert metadata["incomplete_fetches"].value  # Hermes has no history: nothing claimed as fetched
        spans = FeedStore(engine_for()).spans([stream], past, past + timedelta(hours=1))[stream]
        assert not spans.covers(past, past + timedelta(minutes=59))


@pytest.mark.parametrize("word, expected", [("on", True), ("TRUE", True), ("yes", True), ("1", True),
                                            ("off", False), ("false", False), ("No", False), ("0", False)])
def test_booleans_parse_strictly(word, expected):
    assert parse_bool("CRUNCH_AUTOMATION", word) is expected


@pytest.mark.parametrize("word", ["", "maybe", "enabled", "2"])
def test_an_unknown_boolean_is_an_error_naming_the_variable(word):
    with pytest.raises(SettingsError, match="CRUNCH_AUTOMATION="):
        parse_bool("CRUNCH_AUTOMATION", word)


def test_settings_are_read_the_same_way_for_every_competition(tmp_path):
    """Issue: CRUNCH_AUTOMATION=false, 0 or no left everything RUNNING, and only btc_updown read its
    feed and runner from the environment."""
    from competitions.crypto_density.definitions import RULES, SPEC
    from crunch_assets.definitions import build_competition_definitions
    from resources.feeds.binance import BinanceFeed

    environ = {"CRUNCH_AUTOMATION": "false", "CRUNCH_CRYPTO_DENSITY_FEED": "binance",
               "CRUNCH_BINANCE_BASE_URL": "http://127.0.0.1:9"}
    settings = CompetitionSettings("crypto_density", environ)
    defs = build_competition_definitions(SPEC, RULES, models_dir=tmp_path, settings=settings,
                                         feed_defaults=__import__("competitions.crypto_density.definitions",
                                                                  fromlist=["FEED"]).FEED)
    assert {s.default_status for s in defs.sensors} == {dg.DefaultSensorStatus.STOPPED}
    feed = defs.resources["feed"]
    assert isinstance(feed, BinanceFeed) and feed.granularity_seconds == 300 and feed.base_url == "http://127.0.0.1:9"
    own = CompetitionSettings("crypto_density", {**environ, "CRUNCH_CRYPTO_DENSITY_AUTOMATION": "on"})
    assert own.automation is True  # the competition's own variable wins
    with pytest.raises(SettingsError, match="CRUNCH_CRYPTO_DENSITY_FEED='kraken'"):
        CompetitionSettings("crypto_density", {"CRUNCH_CRYPTO_DENSITY_FEED": "kraken"}).feed(
            __import__("crunch_assets.settings", fromlist=["FeedDefaults"]).FeedDefaults())
    with pytest.raises(SettingsError, match="CRUNCH_ORCHESTRATOR_HOST"):
        CompetitionSettings("crypto_density", {"CRUNCH_RUNNER": "orchestrator", "CRUNCH_ORCHESTRATOR_PORT": "1"}).model_runner(".")


def test_the_cli_replays_a_partition_range_in_one_run(clean_database, tmp_path):
    """Issue: `dagster asset materialize --partition-range` failed for the chain's assets."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    environment = {**os.environ, "DAGSTER_HOME": str(home), "CRUNCH_AUTOMATION": "off",
                   "CRUNCH_BTC_UPDOWN_START": "2026-11-18T00:00:00+00:00"}
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m",
               "competitions.btc_updown.definitions", "--select", "btc_updown/feed_records,btc_updown/predictions",
               "--partition-range", "2026-11-18-00:00...2026-11-18-02:00"]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    dispose_engines()
    with engine_for().connect() as connection:
        cycles = connection.execute(sa.text(
            "SELECT count(*) FROM crunch.inputs WHERE competition = 'btc_updown'")).scalar_one()
    assert cycles == 3 * 60

"""Rewards on the data a live competition meets: a model that joins late, a declared checkpoint
ranking, a resolver that raises, a backfill launched in the "wrong" order, a range backfill's
per-partition figures. Each case runs through the real assets on the embedded PostgreSQL with
deterministic models (tests/rewards_fixtures.py)."""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from crunch_assets.keys import ChainKeys
from crunch_assets.spec import Eligibility
from resources.store.competition import CompetitionStore
from resources.store.database import engine_for
from tests.rewards_fixtures import competition, hour_key, materialize_hours, materialize_one, spec_for, write_models

START = datetime(2026, 11, 10, tzinfo=timezone.utc)
H = timedelta(hours=1)


def _store():
    return CompetitionStore(engine_for(), "btc_updown")


def _checkpoint_ranking(start, end):
    checkpoint = _store().checkpoint(start, end)
    assert checkpoint is not None
    return [(r["model_id"], r["reward_pct"], r["eligible"]) for r in checkpoint.entries["ranking"]], checkpoint


def _run_hours(defs, spec, first, last):
    materialize_hours(defs, spec, ["feed_records"], first, last + H)  # feed up to the last resolutions
    materialize_hours(defs, spec, ["predictions", "scores"], first, last)


def _roll_up_and_checkpoint(defs, spec, day, checkpoint_key):
    materialize_one(defs, spec, "snapshots", day)
    materialize_one(defs, spec, "leaderboard", day)
    materialize_one(defs, spec, "emission_checkpoints", checkpoint_key)


@pytest.fixture
def late_joiner(clean_database, tmp_path):
    """coin answers both hours of a two-hour period; oracle (a perfect model) joins for the second."""
    spec = spec_for(START, checkpoint_interval_seconds=2 * 3600)
    early = competition(spec, write_models(tmp_path / "early", ["coin"]))
    late = competition(spec, write_models(tmp_path / "late", ["coin", "oracle"]))
    _run_hours(early, spec, START, START)
    _run_hours(late, spec, START + H, START + H)
    return spec, late


def test_a_late_joiner_does_not_win_the_checkpoint_on_its_few_cycles(late_joiner):
    """Issue: a model that answered 60 cycles at 0.90 beat one that answered every cycle at 0.76
    and was paid 625,000,000. Its missed cycles now count at the failure value (0.0)."""
    spec, defs = late_joiner
    _roll_up_and_checkpoint(defs, spec, "2026-11-10", hour_key(START))
    ranking, checkpoint = _checkpoint_ranking(START, START + 2 * H)
    assert ranking == [("coin", 625_000_000, True), ("oracle", 375_000_000, True)]
    by_model = {r["model_id"]: r for r in checkpoint.entries["ranking"]}
    assert by_model["coin"]["score"] == pytest.approx(0.75)
    assert by_model["oracle"]["score"] == pytest.approx(60 * 1.0 / 120)  # 60 perfect cycles of 120
    # explain my reward: everything a participant needs, stored with the checkpoint
    oracle = by_model["oracle"]["breakdown"]
    assert (oracle["cycles_in_period"], oracle["scored"], oracle["missed_cycles"], oracle["failed"]) == (120, 60, 60, 0)
    assert oracle["coverage"] == 0.5 and oracle["rank"] == 2 and oracle["eligible"]
    assert oracle["gap_to_next_rank"] == pytest.approx(0.25)
    assert "tiered by rank" in oracle["rule"] and "failure value" in oracle["eligibility_rule"]
    # what the leaderboard shows for the period is what was paid
    from crunch_assets.run_config import as_of_run_config

    op = ChainKeys.op_name(ChainKeys.for_slug(spec.slug).leaderboard)
    materialize_one(defs, spec, "leaderboard", "2026-11-10", run_config=as_of_run_config([op], START + 2 * H))
    _, entries, _ = _store().leaderboard(START + 2 * H)
    payout = {e["model_id"]: e["payout"] for e in entries}
    assert {m: (p["rank"], p["reward_pct"]) for m, p in payout.items()} == {"coin": (1, 625_000_000), "oracle": (2, 375_000_000)}


def test_a_minimum_coverage_policy_lists_the_late_joiner_but_does_not_pay_it(late_joiner):
    from dataclasses import replace

    spec, defs = late_joiner
    strict = replace(spec, eligibility=Eligibility.minimum_coverage(0.9))
    defs = competition(strict, defs.resources["model_runner"].models_dir)
    _roll_up_and_checkpoint(defs, strict, "2026-11-10", hour_key(START))
    ranking, checkpoint = _checkpoint_ranking(START, START + 2 * H)
    assert ranking == [("coin", 1_000_000_000, True), ("oracle", 0, False)]
    oracle = next(r for r in checkpoint.entries["ranking"] if r["model_id"] == "oracle")
    assert oracle["score"] == pytest.approx(1.0)  # its own mean, shown, but not paid
    assert oracle["breakdown"]["rule"] == "not eligible: no reward"


@pytest.mark.parametrize("ranking, expected", [("period", ["switch", "coin"]), ("score_recent", ["coin", "switch"])])
def test_the_checkpoint_ranks_by_the_declared_ranking(clean_database, tmp_path, ranking, expected):
    """Issue: the checkpoint silently ignored the ranking key. switch is wrong in hour 0 and right in
    hour 1: over the period of hour 1 it beats coin, over the last 24 h it does not."""
    spec = spec_for(START, checkpoint_interval_seconds=3600, checkpoint_ranking=ranking)
    defs = competition(spec, write_models(tmp_path / "models", ["coin", "switch"]))
    _run_hours(defs, spec, START, START + H)
    _roll_up_and_checkpoint(defs, spec, "2026-11-10", hour_key(START + H))
    ranked, _ = _checkpoint_ranking(START + H, START + 2 * H)
    assert [model for model, _, _ in ranked] == expected


def flaky_resolver(scope, cycle_at, resolvable_at, records, max_staleness_seconds):
    """btc_updown's resolver, raising for one cycle."""
    from competitions.btc_updown.logic import resolve_ground_truth

    if cycle_at == START + timedelta(minutes=17):
        raise RuntimeError("upstream outcome service returned garbage")
    return resolve_ground_truth(scope, cycle_at, resolvable_at, records, max_staleness_seconds)


def _rules(**override):
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.rules import CallableRules

    return CallableRules(**{**{name: getattr(RULES, name) for name in CallableRules.model_fields}, **override})


def test_a_resolver_that_raises_voids_one_cycle_and_the_period_still_closes(clean_database, tmp_path):
    """Issue: a resolver raising on one cycle failed the whole hour (180 PENDING, 0 scores) and the
    PENDING rows blocked every later checkpoint forever."""
    from crunch_assets.definitions import build_competition_definitions
    from resources.feeds.synthetic import SyntheticFeed

    spec = spec_for(START, checkpoint_interval_seconds=3600)
    models = write_models(tmp_path / "models", ["coin", "oracle", "anti"])

    def definitions(resolver):
        return build_competition_definitions(spec, _rules(ground_truth_resolver=resolver), models_dir=models,
                                             feed=SyntheticFeed(), automation_running=True)

    defs = definitions("tests.test_rewards_dirty_data:flaky_resolver")
    materialize_hours(defs, spec, ["feed_records"], START, START + H)
    materialize_one(defs, spec, "predictions", hour_key(START))
    scored = materialize_one(defs, spec, "scores", hour_key(START))
    assert scored.success
    metadata = scored.asset_materializations_for_node(ChainKeys.op_name(ChainKeys.for_slug(spec.slug).scores))[0].metadata
    assert metadata["scored"].value + metadata["penalised"].value == 59 * 3
    assert metadata["resolver_errors"].value == 1 and metadata["cycles_voided"].value == 1
    assert "resolver error: RuntimeError: upstream outcome service returned garbage" in metadata["void_reasons"].value[0]
    store = _store()
    assert store.unsettled_count(START, START + H) == 0  # nothing holds the period back
    # the gate's count of what lies in a gap between checkpoints: half-open, the voided cycle has none
    assert store.score_count(START, START + H) == store.period_fingerprint(START, START + H)["scores"] == 59 * 3
    minute = timedelta(minutes=1)
    assert store.score_count(START + 17 * minute, START + 18 * minute) == 0
    assert store.score_count(START + 16 * minute, START + 17 * minute) == 3
    assert store.score_count(START + H, START + 2 * H) == 0
    assert store.prediction_statuses(START, START + H) == {"SCORED": 59 * 3, "VOIDED": 3}
    materialize_one(defs, spec, "snapshots", "2026-11-10")
    sensor = next(s for s in defs.sensors if s.name == "btc_updown__checkpoint_sensor")
    import dagster as dg

    tick = sensor.evaluate_tick(dg.build_sensor_context(resources=defs.resources, definitions=defs))
    assert [r.partition_key for r in tick.run_requests] == [hour_key(START)]

    # once the resolver is fixed, the next scores materialization resolves the voided cycle
    fixed = definitions("competitions.btc_updown.logic:resolve_ground_truth")
    again = materialize_one(fixed, spec, "scores", hour_key(START))
    metadata = again.asset_materializations_for_node(ChainKeys.op_name(ChainKeys.for_slug(spec.slug).scores))[0].metadata
    assert metadata["cycles_rescored"].value == 1 and metadata["scored"].value + metadata["penalised"].value == 3
    assert _store().prediction_statuses(START, START + H) == {"SCORED": 60 * 3}


def test_a_voided_cycle_is_rescored_only_while_its_period_is_unpaid(clean_database, tmp_path):
    from crunch_assets.definitions import build_competition_definitions
    from resources.feeds.synthetic import SyntheticFeed

    spec = spec_for(START, checkpoint_interval_seconds=3600)
    models = write_models(tmp_path / "models", ["coin"])
    broken = build_competition_definitions(spec, _rules(ground_truth_resolver="tests.test_rewards_dirty_data:flaky_resolver"),
                                           models_dir=models, feed=SyntheticFeed(), automation_running=False)
    materialize_hours(broken, spec, ["feed_records"], START, START + H)
    materialize_hours(broken, spec, ["predictions", "scores"], START, START)
    materialize_one(broken, spec, "snapshots", "2026-11-10")
    materialize_one(broken, spec, "emission_checkpoints", hour_key(START))
    # the operator submitted the checkpoint on-chain (through the one way the database allows: with a
    # passing gate result for the row as stored; the gate itself is tested in tests/test_payout_tampering.py)
    from resources.store.payouts import PayoutStore

    checkpoint = _store().checkpoints()[0]
    gate = {"passed": True, "checks": [], "checkpoint_updated_at": checkpoint.updated_at.isoformat(),
            "merkle_root": checkpoint.merkle_root, "chained_root": checkpoint.chained_root}
    PayoutStore(engine_for(), spec.slug).transition(checkpoint.id, "SUBMITTED", actor="operator",
                                                   tx_hash="0x" + "1" * 64, gate=gate)
    fixed = build_competition_definitions(spec, _rules(), models_dir=models, feed=SyntheticFeed(), automation_running=False)
    materialize_one(fixed, spec, "scores", hour_key(START))
    assert _store().prediction_statuses(START, START + H) == {"SCORED": 59, "VOIDED": 1}  # paid periods never move


def test_a_backfill_in_the_wrong_order_gives_the_numbers_of_the_right_order(clean_database, tmp_path):
    """Issue: backfilling predictions + scores before feed_records voided 540 of 540 predictions at
    once (wall-clock voiding) and stored inputs with missing history for good."""
    spec = spec_for(START, checkpoint_interval_seconds=3600)
    defs = competition(spec, write_models(tmp_path / "models", ["coin", "oracle", "anti"]))
    wrong = materialize_hours(defs, spec, ["predictions", "scores"], START, START + 2 * H, raise_on_error=False)
    assert not wrong.success  # the blocking cycle check names the cycles that wait for their feed
    store = _store()
    assert store.stored_cycles(START, START + 3 * H) == set()  # no input built on a missing history
    assert store.prediction_statuses(START, START + 3 * H) == {}  # and nothing voided
    _run_hours(defs, spec, START, START + 2 * H)  # the feed, then the chain
    wrong_order = _outcome()

    engine = engine_for()
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA crunch CASCADE"))
    from resources.store.database import dispose_engines

    dispose_engines()
    _run_hours(defs, spec, START, START + 2 * H)
    assert _outcome() == wrong_order
    assert len(wrong_order[1]) == 3 * 180 and {row[2] for row in wrong_order[1]} == {True}


def _outcome():
    with engine_for().connect() as connection:
        inputs = connection.execute(sa.text("SELECT cycle_at, scope_key, raw_data, actuals FROM crunch.inputs ORDER BY 1")).fetchall()
        scores = connection.execute(sa.text(
            "SELECT p.model_id, p.cycle_at, s.success, s.value FROM crunch.predictions p "
            "JOIN crunch.scores s ON s.prediction_id = p.id ORDER BY 2, 1")).fetchall()
    return [tuple(r) for r in inputs], [tuple(r)[:1] + (r[1], r[2], r[3]) for r in scores]


def test_a_range_backfill_reports_each_partitions_own_figures(clean_database, tmp_path):
    """Issue: a 3-partition backfill wrote the range totals into each partition's materialization."""
    spec = spec_for(START)
    defs = competition(spec, write_models(tmp_path / "models", ["coin"]))
    materialize_hours(defs, spec, ["feed_records"], START, START + 3 * H)
    done = materialize_hours(defs, spec, ["predictions"], START, START + 2 * H)
    op = ChainKeys.op_name(ChainKeys.for_slug(spec.slug).predictions)
    by_partition = {m.partition: m.metadata for m in done.asset_materializations_for_node(op)
                    if m.asset_key == ChainKeys.for_slug(spec.slug).predictions}  # not the registry it synced
    assert sorted(by_partition) == [hour_key(START + h * H) for h in range(3)]
    assert {key: m["cycles_run"].value for key, m in by_partition.items()} == dict.fromkeys(by_partition, 60)
    assert {key: m["predictions_made"].value for key, m in by_partition.items()} == dict.fromkeys(by_partition, 60)

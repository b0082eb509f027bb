"""Versioned rules over real BTC/USD candles (issue 22 section 3): btc_updown's quickstarters, a
3-hour checkpoint period 03:00-06:00 whose scoring function changes mid-period.

- Declared (RulesChange effective 04:30, Brier skill -> position x return): every cycle is scored
  under the rules in force at its time, whether the period is replayed in order or its scores are
  computed hour by hour backwards the way live runs do (as_of set); each cycle stores the fingerprint
  it was scored under; the checkpoint is not flagged and the gate's check passes.
- The same change not declared (the code redeployed with the new scoring function after two hours):
  the checkpoint is flagged and the gate refuses it, naming the cycle where the rules changed; then
  the operator declares the change at that cycle, the checkpoint sensor asks for a rebuild (the rules
  changed), and the rebuilt checkpoint passes."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from tests.api.conftest import accounts, database_named
from tests.rewards_fixtures import hour_key, materialize_hours, materialize_one

START = datetime(2025, 1, 7, 3, tzinfo=timezone.utc)
END = START + timedelta(hours=3)
CHANGE_AT = START + timedelta(minutes=90)  # 04:30, mid-period and mid-hour
H = timedelta(hours=1)
BRIER = "competitions.btc_updown.logic:brier_skill"
POSITION = "competitions.btc_updown.logic:position_return"
_databases = itertools.count()


def _spec(changes=()):
    from competitions.btc_updown.definitions import SPEC

    return replace(SPEC, start=START, checkpoint_interval_seconds=3 * 3600, rules_changes=tuple(changes))


def _declared(at: datetime = CHANGE_AT):
    from crunch_assets.spec import RulesChange

    return _spec([RulesChange(effective_from=at, slots={"scoring_function": POSITION},
                              note="position x return replaces the Brier skill")])


def _rules(scoring: str = BRIER):
    """btc_updown's rules, with another scoring function (the code as redeployed)."""
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.rules import CallableRules

    return CallableRules(**{**{k: getattr(RULES, k) for k in CallableRules.model_fields}, "scoring_function": scoring})


def _definitions(spec, url: str, btc_csv: Path, scoring: str = BRIER):
    from competitions.btc_updown.definitions import MODELS_DIR, SETTINGS
    from crunch_assets.definitions import build_competition_definitions
    from resources.feeds.csv_replay import CsvReplayFeed
    from resources.store.database import CrunchDatabase

    return build_competition_definitions(spec, _rules(scoring), models_dir=MODELS_DIR, settings=SETTINGS,
                                         feed=CsvReplayFeed(path=str(btc_csv), source="csv"), automation_running=False,
                                         database=CrunchDatabase(url=url), payout_accounts=accounts())


@contextlib.contextmanager
def _database(database_url: str):
    from resources.store.database import dispose_engines

    name = f"crunch_rules_{next(_databases)}"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield database_named(database_url, name)
    finally:
        dispose_engines()
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def _store(url: str):
    from resources.store.competition import CompetitionStore
    from resources.store.database import engine_for

    return CompetitionStore(engine_for(url), "btc_updown")


def _scored(url: str) -> dict:
    """(cycle_at, model_id) -> (score, the cycle's fingerprint, output, truth), successful scores only."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT s.cycle_at, s.model_id, s.value, i.rules_fingerprint, p.inference_output, i.actuals "
            "FROM crunch.scores s JOIN crunch.predictions p ON p.id = s.prediction_id JOIN crunch.inputs i ON "
            "i.id = p.input_id WHERE s.success")).fetchall()
    engine.dispose()
    return {(r.cycle_at, r.model_id): (r.value, r.rules_fingerprint, r.inference_output, r.actuals) for r in rows}


def _gate_check(spec, url, defs):
    """The gate's rules check, with the rules and ground truth `defs` loaded (the code as deployed)."""
    from crunch_assets.payouts import run_gate

    store = _store(url)
    checkpoint = store.checkpoint(START, END)
    gate = run_gate(spec, store, checkpoint, accounts(), rules=defs.resources["rules"],
                    ground_truth=defs.resources["ground_truth"])
    return next(c for c in gate["checks"] if c["name"] == "rules_fingerprint_consistent")


def test_a_declared_change_scores_each_cycle_under_its_rules_in_any_order(database_url, btc_csv):
    from competitions.btc_updown.logic import brier_skill, position_return
    from crunch_assets.fingerprint import rules_book
    from crunch_assets.keys import ChainKeys
    from crunch_assets.replay import replay
    from crunch_assets.run_config import as_of_run_config

    spec = _declared()
    with _database(database_url) as in_order, _database(database_url) as backwards:
        defs = _definitions(spec, in_order, btc_csv)
        book = rules_book(spec, defs.resources["rules"], defs.resources["ground_truth"])
        before, after = book.at(CHANGE_AT - timedelta(seconds=1)), book.at(CHANGE_AT)
        assert before.fingerprint != after.fingerprint and before.cycle_digest != after.cycle_digest
        assert defs.metadata["rules_fingerprint"].value == book.current.fingerprint == after.fingerprint
        replay(defs, spec, START, END)

        # the same cycles, scored the way live runs do (as_of set), latest hour first
        other = _definitions(spec, backwards, btc_csv)
        keys = ChainKeys.for_slug(spec.slug)
        materialize_hours(other, spec, ["feed_records"], START, END)
        materialize_hours(other, spec, ["predictions"], START, END - H)
        for hour in (START + 2 * H, START + H, START):
            materialize_one(other, spec, "scores", hour_key(hour),
                            run_config=as_of_run_config([keys.op("scores")], hour + H + timedelta(minutes=2)))
        materialize_one(other, spec, "snapshots", "2025-01-07")
        assert materialize_one(other, spec, "emission_checkpoints", hour_key(START)).success

        scored = _scored(in_order)
        assert len(scored) > 400 and scored == _scored(backwards)
        for (cycle_at, _), (value, fingerprint, output, truth) in scored.items():
            expected = (position_return if cycle_at >= CHANGE_AT else brier_skill)(None, output, truth)["value"]
            assert value == expected
            assert fingerprint == (after if cycle_at >= CHANGE_AT else before).fingerprint
        for url, loaded in ((in_order, defs), (backwards, other)):
            checkpoint = _store(url).checkpoint(START, END)
            rules = checkpoint.entries["rules"]
            assert not rules["mixed"] and rules["fingerprint"] == after.fingerprint
            assert [v["fingerprint"] for v in rules["versions"]] == [before.fingerprint, after.fingerprint]
            assert {g["fingerprint"]: (g["cycles"], g["as_declared"]) for g in rules["scored_under"]} == \
                {before.fingerprint: (90, 90), after.fingerprint: (90, 90)}
            assert checkpoint.meta["rules_fingerprint"] == after.fingerprint
            documents = _store(url).rules.documents()
            assert set(documents) == {before.fingerprint, after.fingerprint}  # what each fingerprint is the hash of
            check = _gate_check(spec, url, loaded)
            assert check["passed"], check["detail"]
        assert _store(in_order).checkpoint(START, END).entries["ranking"] == \
            _store(backwards).checkpoint(START, END).entries["ranking"]


def test_the_same_change_undeclared_is_flagged_and_blocks_the_gate_until_declared(database_url, btc_csv):
    from crunch_assets.fingerprint import rules_book
    from crunch_assets.payouts import GateFailed, advance
    from resources.store.payouts import PayoutStore

    deployed_at = START + 2 * H  # the new scoring function is deployed for the last hour, undeclared
    with _database(database_url) as url:
        old = _definitions(_spec(), url, btc_csv)
        new = _definitions(_spec(), url, btc_csv, scoring=POSITION)
        materialize_hours(old, _spec(), ["feed_records"], START, END)
        materialize_hours(old, _spec(), ["predictions"], START, END - H)
        materialize_hours(old, _spec(), ["scores"], START, deployed_at - H)
        materialize_hours(new, _spec(), ["scores"], deployed_at, END - H)
        materialize_one(new, _spec(), "snapshots", "2025-01-07")
        assert materialize_one(new, _spec(), "emission_checkpoints", hour_key(START)).success

        new_book = rules_book(_spec(), new.resources["rules"], new.resources["ground_truth"])
        old_book = rules_book(_spec(), old.resources["rules"], old.resources["ground_truth"])
        rules = _store(url).checkpoint(START, END).entries["rules"]
        assert rules["mixed"]
        assert f"{START.isoformat()} .. {(deployed_at - timedelta(minutes=1)).isoformat()} under " \
               f"{old_book.current.fingerprint[:16]} (120 cycle(s)); {deployed_at.isoformat()} .. " in rules["detail"]
        assert f"RulesChange(effective_from=..., ...),): {deployed_at.isoformat()})" in rules["detail"]
        assert {g["fingerprint"]: g["cycles"] for g in rules["scored_under"]} == \
            {old_book.current.fingerprint: 120, new_book.current.fingerprint: 60}
        check = _gate_check(_spec(), url, new)
        assert not check["passed"] and f"{deployed_at.isoformat()} .. " in check["detail"]
        checkpoint = _store(url).checkpoint(START, END)
        with pytest.raises(GateFailed, match="rules_fingerprint_consistent"):
            advance(_spec(), _store(url), PayoutStore(_store(url).engine, "btc_updown"), accounts(), checkpoint.id,
                    "SUBMITTED", actor="test", tx_hash="7" * 30, rules=new.resources["rules"],
                    ground_truth=new.resources["ground_truth"])

        # the operator declares the change at the cycle it happened (the old function kept importable)
        declared = _definitions(_declared(deployed_at), url, btc_csv)
        declared_book = rules_book(_declared(deployed_at), declared.resources["rules"], declared.resources["ground_truth"])
        # the declared version is exactly the deployed rules (a declaration is not part of a fingerprint)
        assert declared_book.at(deployed_at).fingerprint == new_book.current.fingerprint
        assert declared_book.at(deployed_at - timedelta(seconds=1)).fingerprint == old_book.current.fingerprint
        stale = _gate_check(_declared(deployed_at), url, declared)
        assert not stale["passed"]
        sensor = next(s for s in declared.sensors if s.name == "btc_updown__checkpoint_sensor")
        tick = sensor.evaluate_tick(dg.build_sensor_context(resources=declared.resources, definitions=declared))
        assert [r.partition_key for r in tick.run_requests] == [hour_key(START)]  # built under other rules: rebuilt
        assert materialize_one(declared, _declared(deployed_at), "emission_checkpoints", hour_key(START)).success
        rebuilt = _store(url).checkpoint(START, END).entries["rules"]
        assert not rebuilt["mixed"], rebuilt["detail"]
        check = _gate_check(_declared(deployed_at), url, declared)
        assert check["passed"], check["detail"]
        again = sensor.evaluate_tick(dg.build_sensor_context(resources=declared.resources, definitions=declared))
        assert not again.run_requests

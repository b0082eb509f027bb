"""Each checkpoint commits to what it paid for: a Merkle root over its period's scores, chained to
the previous checkpoint. Changing one stored score (or output, or truth) is found, at the first
checkpoint it touches; a participant's inclusion proof verifies against the stored root."""

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from crunch_assets import merkle
from crunch_assets.verification import audit_checkpoints, first_problem, inclusion_proof
from resources.store.competition import CompetitionStore
from resources.store.database import engine_for
from tests.rewards_fixtures import competition, write_models

START = datetime(2026, 11, 12, tzinfo=timezone.utc)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@settings(max_examples=60, deadline=None)
@given(count=st.integers(min_value=1, max_value=70), data=st.data())
def test_every_leaf_has_a_proof_that_verifies_and_only_for_its_own_leaf(count, data):
    leaves = [merkle.sha256_hex(str(i).encode()) for i in range(count)]
    root = merkle.merkle_root(leaves)
    index = data.draw(st.integers(min_value=0, max_value=count - 1))
    proof = merkle.inclusion_proof(leaves, index)
    assert merkle.verify_proof(leaves[index], proof, root)
    assert not merkle.verify_proof(merkle.sha256_hex(b"forged"), proof, root)
    if count > 1:
        other = (index + 1) % count
        assert not merkle.verify_proof(leaves[other], proof, root) or leaves[other] == leaves[index]


def test_the_root_depends_on_every_leaf_and_their_order():
    leaves = [merkle.sha256_hex(bytes([i])) for i in range(5)]
    root = merkle.merkle_root(leaves)
    assert merkle.merkle_root(leaves[:4] + [merkle.sha256_hex(b"x")]) != root
    assert merkle.merkle_root([leaves[1], leaves[0], *leaves[2:]]) != root
    assert merkle.merkle_root(leaves + [leaves[-1]]) != root  # no duplicate-leaf ambiguity


@pytest.fixture(scope="module")
def checkpointed(database_url, tmp_path_factory):
    """Three hourly checkpoints of a real replay (three models, synthetic feed)."""
    from dataclasses import replace

    from competitions.btc_updown.definitions import SPEC
    from crunch_assets.replay import replay
    from resources.store.database import dispose_engines

    dispose_engines()
    with engine_for().begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS crunch CASCADE"))
    dispose_engines()
    spec = replace(SPEC, start=START, checkpoint_interval_seconds=3600)
    defs = competition(spec, write_models(tmp_path_factory.mktemp("models"), ["coin", "oracle", "anti"]))
    timings = replay(defs, spec, START, START + timedelta(hours=3))
    assert timings.checkpoints == ["2026-11-12-00:00", "2026-11-12-01:00", "2026-11-12-02:00"]
    return CompetitionStore(engine_for(), "btc_updown")


def _audit_cli() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crunch_assets.cli", "audit", "btc_updown"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120,
                          # the deployment the checkpoints were built by: its start and period are in their rules
                          env={**os.environ, "CRUNCH_AUTOMATION": "off", "CRUNCH_BTC_UPDOWN_START": START.isoformat(),
                               "CRUNCH_BTC_UPDOWN_CHECKPOINT_INTERVAL_SECONDS": "3600"})


def test_untouched_checkpoints_verify_and_chain(checkpointed):
    audits = audit_checkpoints(checkpointed)
    assert [a.ok for a in audits] == [True, True, True] and first_problem(audits) is None
    checkpoints = checkpointed.checkpoints()
    assert checkpoints[1].meta["previous_chained_root"] == checkpoints[0].chained_root
    assert checkpoints[0].meta["leaf_count"] == 60 * 3
    result = _audit_cli()
    assert result.returncode == 0, result.stderr
    assert "3 checkpoint(s) verified" in result.stdout


def test_a_participant_can_prove_a_score_is_in_a_checkpoint(checkpointed):
    checkpoint = checkpointed.checkpoints()[1]
    proof = inclusion_proof(checkpointed, checkpoint, "oracle", START + timedelta(hours=1, minutes=7))
    assert proof["verified"] and proof["merkle_root"] == checkpoint.merkle_root
    assert proof["commitment_scheme"] == merkle.PORTABLE_SCHEME
    assert proof["leaf"]["value"] == 1.0 and merkle.canonical(proof["leaf"]["value"]) == b"1"  # RFC 8785, as JavaScript
    # the proof is checkable with nothing but the leaf's fields and sha256
    leaf = merkle.sha256_hex(b"\x00" + merkle.canonical(proof["leaf"]))
    assert leaf == proof["leaf_hash"]
    assert merkle.verify_proof(leaf, [merkle.ProofStep(**step) for step in proof["proof"]], checkpoint.merkle_root)
    with pytest.raises(LookupError):
        inclusion_proof(checkpointed, checkpoint, "oracle", START + timedelta(hours=2))  # not in this period


def test_changing_one_stored_score_is_found_at_its_checkpoint(checkpointed):
    store = checkpointed
    cycle = START + timedelta(hours=1, minutes=30)
    before = inclusion_proof(store, store.checkpoints()[1], "anti", cycle)
    with engine_for().begin() as connection:
        changed = connection.execute(sa.text(
            "UPDATE crunch.scores SET value = 1.0 WHERE model_id = 'anti' AND cycle_at = :cycle"), {"cycle": cycle}).rowcount
    assert changed == 1
    try:
        audits = audit_checkpoints(store)
        assert [(a.root_matches, a.chain_matches) for a in audits] == [(True, True), (False, False), (True, False)]
        problem = first_problem(audits)
        assert problem.period_start == START + timedelta(hours=1)
        assert "differ from what the checkpoint committed to" in problem.problem
        after = inclusion_proof(store, store.checkpoints()[1], "anti", cycle)
        assert not after["verified"] and after["leaf_hash"] != before["leaf_hash"]
        result = _audit_cli()
        assert result.returncode == 1
        assert "first checkpoint whose data changed" in result.stderr and "01:00:00" in result.stderr
    finally:
        with engine_for().begin() as connection:
            connection.execute(sa.text(
                "UPDATE crunch.scores SET value = 0.0 WHERE model_id = 'anti' AND cycle_at = :cycle"), {"cycle": cycle})
    assert first_problem(audit_checkpoints(store)) is None


def test_changing_a_stored_truth_is_found_too(checkpointed):
    cycle = START + timedelta(minutes=5)
    with engine_for().begin() as connection:
        original = connection.execute(sa.text(
            "SELECT actuals FROM crunch.inputs WHERE cycle_at = :c"), {"c": cycle}).scalar_one()
        connection.execute(sa.text("UPDATE crunch.inputs SET actuals = CAST(:a AS jsonb) WHERE cycle_at = :c"),
                           {"a": json.dumps({**original, "y_up": not original["y_up"]}), "c": cycle})
    try:
        assert first_problem(audit_checkpoints(checkpointed)).period_start == START
    finally:
        with engine_for().begin() as connection:
            connection.execute(sa.text("UPDATE crunch.inputs SET actuals = CAST(:a AS jsonb) WHERE cycle_at = :c"),
                               {"a": json.dumps(original), "c": cycle})

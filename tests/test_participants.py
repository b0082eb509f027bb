"""Every model belongs to a participant: a local models directory declares them in
participants.json / participants.toml (default: each model its own, named after its id); the
registry records them; the checkpoint pays one model per participant, through the real assets."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from crunch_assets.spec import PayoutPolicy
from resources.model_runners.local import LocalModelRunner
from resources.model_runners.participants import ParticipantsFileError
from resources.store.competition import CompetitionStore
from resources.store.database import engine_for
from tests.rewards_fixtures import competition, hour_key, materialize_hours, materialize_one, spec_for, write_models

START = datetime(2026, 11, 10, tzinfo=timezone.utc)
H = timedelta(hours=1)


def _listed(models_dir):
    return {m.model_id: (m.player_id, m.player_name) for m in LocalModelRunner(models_dir=str(models_dir)).list_models()}


def test_without_a_participants_file_each_model_is_its_own_participant(tmp_path):
    models = write_models(tmp_path / "models", ["coin", "oracle"])
    assert _listed(models) == {"coin": (None, None), "oracle": (None, None)}


def test_a_json_participants_file_names_each_models_participant(tmp_path):
    models = write_models(tmp_path / "models", ["coin", "oracle", "anti"])
    (models / "participants.json").write_text(json.dumps({"oracle": "alice", "anti": {"participant": "alice", "name": "Alice"}}))
    assert _listed(models) == {"anti": ("alice", "Alice"), "coin": (None, None), "oracle": ("alice", None)}


def test_a_toml_participants_file_says_the_same(tmp_path):
    models = write_models(tmp_path / "models", ["coin", "oracle"])
    (models / "participants.toml").write_text('coin = "bob"\n\n[oracle]\nparticipant = "alice"\nname = "Alice"\n')
    assert _listed(models) == {"coin": ("bob", None), "oracle": ("alice", "Alice")}


@pytest.mark.parametrize("name, content, message", [
    ("participants.json", '{"orcale": "alice"}', "model 'orcale' is not in"),
    ("participants.json", '{"oracle": {"participant": "alice", "team": "x"}}', "unknown key(s) team"),
    ("participants.json", '{"oracle": ""}', "'participant' must be a non-empty string"),
    ("participants.json", '{"oracle": 7}', "a participant id or a table"),
    ("participants.json", '{"oracle": "alice", "oracle": "bob"}', "oracle declared twice"),
    ("participants.json", '["oracle"]', "must map model ids to participants"),
    ("participants.json", '{"oracle": "alice"', "not valid JSON"),
    ("participants.toml", 'oracle = "alice"\noracle = "bob"\n', "not valid TOML"),
])
def test_a_wrong_participants_file_is_refused_by_name(tmp_path, name, content, message):
    models = write_models(tmp_path / "models", ["coin", "oracle"])
    (models / name).write_text(content)
    with pytest.raises(ParticipantsFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LocalModelRunner(models_dir=str(models)).list_models()


def test_both_formats_at_once_are_refused(tmp_path):
    models = write_models(tmp_path / "models", ["coin"])
    (models / "participants.json").write_text('{"coin": "a"}')
    (models / "participants.toml").write_text('coin = "b"\n')
    with pytest.raises(ParticipantsFileError, match="both participants.json and participants.toml"):
        LocalModelRunner(models_dir=str(models)).list_models()


def test_the_checkpoint_pays_one_model_per_participant(clean_database, tmp_path):
    """oracle (perfect) and anti (always wrong) are alice's; coin is its own. By default alice is
    paid for oracle only: anti is ranked and shown with the reason. Without the policy, alice's two
    models take two shares of the three-model split."""
    models = write_models(tmp_path / "models", ["coin", "oracle", "anti"])
    (models / "participants.json").write_text(json.dumps({"oracle": "alice", "anti": "alice"}))
    spec = spec_for(START, checkpoint_interval_seconds=3600)
    defs = competition(spec, models)
    materialize_hours(defs, spec, ["feed_records"], START, START + H)
    materialize_hours(defs, spec, ["predictions", "scores"], START, START)
    materialize_one(defs, spec, "snapshots", "2026-11-10")
    materialize_one(defs, spec, "emission_checkpoints", hour_key(START))
    store = CompetitionStore(engine_for(), spec.slug)
    registry = {m.model_id: m for m in store.models()}
    assert {m: r.player_id for m, r in registry.items()} == {"anti": "alice", "coin": None, "oracle": "alice"}
    assert registry["anti"].cruncher_index == registry["oracle"].cruncher_index != registry["coin"].cruncher_index
    checkpoint = store.checkpoint(START, START + H)
    ranking = {r["model_id"]: r for r in checkpoint.entries["ranking"]}
    assert {m: r["reward_pct"] for m, r in ranking.items()} == {"oracle": 625_000_000, "coin": 375_000_000, "anti": 0}
    assert ranking["anti"]["participant"] == "alice" and ranking["coin"]["participant"] == "coin"
    assert ranking["anti"]["breakdown"]["unpaid_reason"] == \
        "participant alice's best model is oracle: one paid model per participant"
    # the on-chain emission: one line per cruncher
    assert sorted(r["reward_pct"] for r in checkpoint.entries["cruncher_rewards"]) == [375_000_000, 625_000_000]

    every = spec_for(START, checkpoint_interval_seconds=3600, payout=PayoutPolicy(pay_best_model_per_participant=False))
    materialize_one(competition(every, models), every, "emission_checkpoints", hour_key(START))
    ranking = {r["model_id"]: r["reward_pct"] for r in store.checkpoint(START, START + H).entries["ranking"]}
    assert ranking == {"oracle": 500_000_000, "coin": 250_000_000, "anti": 250_000_000}


def test_the_orchestrators_crunchers_are_the_participants(clean_database):
    """The orchestrator reports each model's cruncher: the registry keeps it and the payout pays
    one model per cruncher, through the real runner client, store and payout function."""
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.defs.checkpoints.assets import payout_entries
    from resources.model_runners.orchestrator import OrchestratorModelRunner
    from resources.store.rows import CycleRollupRow, SnapshotRow
    from tests.fakes.model_orchestrator import AnsweringModel, FakeModelNode, FakeOrchestrator

    orchestrator = FakeOrchestrator(crunch_id="btc-up-down").start()
    nodes = [FakeModelNode(model_id, AnsweringModel(), model_name=model_id, cruncher_id=cruncher,
                           cruncher_name=cruncher.upper()).start()
             for model_id, cruncher in (("m-1", "c-alice"), ("m-2", "c-alice"), ("m-3", "c-bob"))]
    try:
        orchestrator.announce(*(node.announcement() for node in nodes))
        runner = OrchestratorModelRunner(host="127.0.0.1", port=orchestrator.port, crunch_id=orchestrator.crunch_id,
                                         call_timeout_seconds=2.0, connect_timeout_seconds=5.0)
        store = CompetitionStore(engine_for(), "btc_updown")
        store.sync_models(runner.list_models(), START, complete=True)
    finally:
        for node in nodes:
            node.stop()
        orchestrator.stop()
    spec = spec_for(START, checkpoint_interval_seconds=3600)
    counts = {"scored": 60, "failed": 0, "absent": 0, "rejected": 0}
    snapshots = [SnapshotRow(m, "BTC-60-60", START, START + H, 60, 60 * v, 0.0, status_counts=counts)
                 for m, v in (("m-1", 0.7), ("m-2", 0.9), ("m-3", 0.8))]
    rollups = [CycleRollupRow("BTC-60-60", START, START + H, 60, 0, 0.0)]
    paid = payout_entries(spec, RULES, store, snapshots, rollups, START, START + H)
    assert {m: (p["participant"], p["reward_pct"]) for m, p in paid.items()} == {
        "m-2": ("c-alice", 625_000_000), "m-3": ("c-bob", 375_000_000), "m-1": ("c-alice", 0)}
    assert paid["m-1"]["breakdown"]["unpaid_reason"] == "participant c-alice's best model is m-2: one paid model per participant"

"""Every tampering of issue 19 with the payout and its audit, reproduced on a real replay (six
models, hourly checkpoints) and the real report API over HTTP: what a database role may not do is
refused by the database, and what a superuser can still do is refused by the gate or named by
`crunch-dagster audit` and the API.

- the checkpoint's entries changed while PENDING (two models' ids, cruncher indexes and cruncher
  rewards swapped; 50,000,000 moved from rank 6 to rank 1, sum and order kept): the old checks
  pass, the gate's recomputation refuses and names each difference, the entries no longer match
  what the checkpoint committed to;
- the same after SUBMITTED: refused for the engine role, named by the audit when a superuser
  disables the guard;
- the audit: TRUNCATE, DISABLE TRIGGER + UPDATE, session_replication_role = replica + DELETE,
  forged INSERTs;
- `UPDATE crunch.checkpoints SET status = 'PAID'` as the engine and api roles (refused) and as a
  superuser (refused by the guard; with it disabled, flagged by the audit and the API).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.api.conftest import LiveServer, auth, database_named, fresh_copy, role_env, role_url
from tests.rewards_fixtures import SYNTHETIC_PRICES_SOURCE

PROJECT_ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 11, 14, tzinfo=timezone.utc)
HOURS = 2
TEMPLATE = "crunch_tamper_template"
CRUNCH_PUBKEY = "CrunchTamperPubkey111111111111111111111111111"
TOKEN = "tamper-test-operator-token-0123456789"
TX = "0x" + "cd" * 32

# Six participants with distinct, constant-quality answers: six distinct ranks, every one paid
# under the tiered emission (rank 6, the last, gets 83,333,333 of 1e9). A sandboxed model sees
# nothing of the checkout but its base class: each carries the synthetic feed's price function.
MODEL_HEADER = SYNTHETIC_PRICES_SOURCE + """

from competitions.btc_updown.model_base import UpDownModel


def went_up(asof):
    return round(synthetic_price("BTC", asof + 60), 6) > round(synthetic_price("BTC", asof), 6)


class Model(UpDownModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
"""
MODELS = {
    "oracle": "        return {'p_up': 1.0 if went_up(self.latest['asof_ts']) else 0.0}",
    "sharp": "        return {'p_up': 0.85 if went_up(self.latest['asof_ts']) else 0.15}",
    "keen": "        return {'p_up': 0.7 if went_up(self.latest['asof_ts']) else 0.3}",
    "hunch": "        return {'p_up': 0.6 if went_up(self.latest['asof_ts']) else 0.4}",
    "coin": "        return {'p_up': 0.5}",
    "anti": "        return {'p_up': 0.0 if went_up(self.latest['asof_ts']) else 1.0}",
}


def _spec():
    from competitions.btc_updown.definitions import SPEC

    return replace(SPEC, start=START, checkpoint_interval_seconds=3600)


def _rules():
    from competitions.btc_updown.definitions import RULES

    return RULES


def _accounts():
    from resources.payout_accounts import PayoutAccounts

    return PayoutAccounts(crunch_pubkey=CRUNCH_PUBKEY)


@pytest.fixture(scope="module")
def template_url(database_url, tmp_path_factory):
    """A database holding the replay (built by the engine role, migrated by the migrations' role),
    never changed: each test works on a copy."""
    from competitions.btc_updown.definitions import build_definitions
    from crunch_assets.replay import replay
    from resources.feeds.synthetic import SyntheticFeed
    from resources.model_runners.local import LocalModelRunner
    from resources.store.database import CrunchDatabase, dispose_engines

    models = tmp_path_factory.mktemp("tamper_models")
    for name, body in MODELS.items():
        (models / f"{name}.py").write_text(MODEL_HEADER + body + "\n")
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {TEMPLATE}"))
    spec = _spec()
    defs = build_definitions(spec=spec, feed=SyntheticFeed(), automation_running=False,
                             model_runner=LocalModelRunner(models_dir=str(models), call_timeout_seconds=5.0),
                             database=CrunchDatabase(database=TEMPLATE), payout_accounts=_accounts())
    timings = replay(defs, spec, START, START + timedelta(hours=HOURS))
    assert len(timings.checkpoints) == HOURS
    dispose_engines()
    yield database_named(database_url, TEMPLATE)
    dispose_engines()
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def store_url(database_url, template_url):
    """A fresh copy of the replay: the superuser's URL of it."""
    with fresh_copy(database_url, TEMPLATE) as url:
        yield url


@contextlib.contextmanager
def api(store_url: str):
    """The report API on the copy, as the api role, over real HTTP."""
    from crunch_assets.api import ReportCompetition, create_app
    from resources.store.database import CrunchDatabase

    competition = ReportCompetition(_spec(), _accounts(), CrunchDatabase(role="api", database=make_url(store_url).database),
                                    _rules())
    with LiveServer(create_app([competition], api_token=TOKEN, actor="operator", read_env=False)) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def audit_cli(store_url: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRUNCH_")}
    env.update(role_env(store_url))
    env.update({"CRUNCH_AUTOMATION": "off", "CRUNCH_BTC_UPDOWN_START": START.isoformat(),
                "CRUNCH_BTC_UPDOWN_CHECKPOINT_INTERVAL_SECONDS": "3600", "CRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY": CRUNCH_PUBKEY})
    return subprocess.run([sys.executable, "-m", "crunch_assets.cli", "audit", "btc_updown"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def execute(url: str, *statements: str, params: dict | None = None) -> None:
    """The statements in one transaction, as the role of `url`."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(sa.text(statement), params or {})
    finally:
        engine.dispose()


def query(url: str, statement: str, params: dict | None = None) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(statement), params or {}).fetchall()
    finally:
        engine.dispose()


def first_checkpoint(url: str):
    return query(url, "SELECT id, entries FROM crunch.checkpoints ORDER BY period_start LIMIT 1")[0]


def write_entries(url: str, checkpoint_id: int, entries: dict) -> None:
    execute(url, "UPDATE crunch.checkpoints SET entries = CAST(:e AS jsonb) WHERE id = :id",
            params={"e": json.dumps(entries), "id": checkpoint_id})


def confirm(client: httpx.Client, checkpoint_id: int) -> httpx.Response:
    return client.post(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/confirm", json={"tx_hash": TX}, headers=auth(TOKEN))


def failed_checks(response: httpx.Response) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in response.json()["detail"]["gate"]["checks"] if not c["passed"]}


# --- the payout itself ---------------------------------------------------------------------------

def test_the_untouched_replay_passes_the_gate_and_the_audit(store_url):
    checkpoint_id, entries = first_checkpoint(store_url)
    assert [r["model_id"] for r in entries["ranking"]] == list(MODELS)  # six distinct ranks, in order
    assert all(r["reward_pct"] > 50_000_000 for r in entries["ranking"])
    with api(store_url) as client:
        submitted = confirm(client, checkpoint_id)
        assert submitted.status_code == 200, submitted.text
        gate = client.get(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/gate").json()["gate"]
        assert gate["passed"] and {"payout_recomputes", "snapshots_match_scores", "entries_committed"} <= {
            c["name"] for c in gate["checks"] if c["passed"]}
        listed = client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"]
        assert all(c["lifecycle"]["verified"] for c in listed), listed
    result = audit_cli(store_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{HOURS} checkpoint(s) verified" in result.stdout


def test_swapping_two_models_in_the_checkpoint_is_refused_and_named(store_url):
    """The issue's swap: the first two models' ids and cruncher indexes (and their cruncher
    rewards) exchanged, so that the rank-1 reward goes to the rank-2 participant. Rewards, their
    sum, their order and the registry all still agree: the checks of old pass."""
    checkpoint_id, entries = first_checkpoint(store_url)
    first, second = entries["ranking"][0], entries["ranking"][1]
    swapped = json.loads(json.dumps(entries))
    for row, other in ((swapped["ranking"][0], second), (swapped["ranking"][1], first)):
        row["model_id"], row["cruncher_index"] = other["model_id"], other["cruncher_index"]
    swapped["cruncher_rewards"] = sorted(
        [{"cruncher_index": second["cruncher_index"], "reward_pct": first["reward_pct"]},
         {"cruncher_index": first["cruncher_index"], "reward_pct": second["reward_pct"]}]
        + [r for r in entries["cruncher_rewards"] if r["cruncher_index"] not in (first["cruncher_index"], second["cruncher_index"])],
        key=lambda r: r["cruncher_index"])
    write_entries(store_url, checkpoint_id, swapped)
    with api(store_url) as client:
        refused = confirm(client, checkpoint_id)
        assert refused.status_code == 409
        failed = failed_checks(refused)
        assert set(failed) == {"payout_recomputes", "entries_committed"}, failed
        assert f"rank 1: model_id {second['model_id']!r} stored, {first['model_id']!r} recomputed" in failed["payout_recomputes"]
        assert f"rank 2: cruncher_index {first['cruncher_index']:,} stored, {second['cruncher_index']:,} recomputed" in failed["payout_recomputes"]
        assert "cruncher_rewards" in failed["payout_recomputes"]
        assert "changed after it was built" in failed["entries_committed"]
        shown = client.get(f"/competitions/btc_updown/checkpoints/{checkpoint_id}").json()
        assert shown["status"] == "PENDING" and shown["audit"] == []
    result = audit_cli(store_url)
    assert result.returncode == 1
    assert "the checkpoint's entries (who is paid what) differ from what it committed to" in result.stdout
    assert f"rank 1: model_id {second['model_id']!r} stored" in result.stdout
    assert f"first checkpoint whose data changed: #{checkpoint_id}" in result.stderr


def test_moving_fifty_million_from_rank_six_to_rank_one_is_refused_and_named(store_url):
    checkpoint_id, entries = first_checkpoint(store_url)
    moved = json.loads(json.dumps(entries))
    top, sixth = moved["ranking"][0], moved["ranking"][5]
    top["reward_pct"] += 50_000_000
    sixth["reward_pct"] -= 50_000_000
    for row in moved["cruncher_rewards"]:
        if row["cruncher_index"] == top["cruncher_index"]:
            row["reward_pct"] += 50_000_000
        if row["cruncher_index"] == sixth["cruncher_index"]:
            row["reward_pct"] -= 50_000_000
    assert sum(r["reward_pct"] for r in moved["ranking"]) == 10**9
    write_entries(store_url, checkpoint_id, moved)
    with api(store_url) as client:
        refused = confirm(client, checkpoint_id)
        assert refused.status_code == 409
        failed = failed_checks(refused)
        assert set(failed) == {"payout_recomputes", "entries_committed"}, failed
        assert (f"rank 1: reward_pct {top['reward_pct']:,} stored, {top['reward_pct'] - 50_000_000:,} recomputed"
                in failed["payout_recomputes"])
        assert (f"rank 6: reward_pct {sixth['reward_pct']:,} stored, {sixth['reward_pct'] + 50_000_000:,} recomputed"
                in failed["payout_recomputes"])
    assert audit_cli(store_url).returncode == 1


def test_rewritten_entries_and_roots_together_are_still_refused(store_url):
    """A writer who also records the new entries' hash and recomputes the chain (everything the
    commitment covers) is still refused: the payout does not recompute from the snapshots."""
    from crunch_assets import merkle

    checkpoint_id, entries = first_checkpoint(store_url)
    moved = json.loads(json.dumps(entries))
    moved["ranking"][0]["reward_pct"] += 1
    moved["ranking"][-1]["reward_pct"] -= 1
    for row in moved["cruncher_rewards"]:
        row["reward_pct"] += (row["cruncher_index"] == moved["ranking"][0]["cruncher_index"]) - (
            row["cruncher_index"] == moved["ranking"][-1]["cruncher_index"])
    root, previous = query(store_url, "SELECT merkle_root, meta->>'previous_chained_root' FROM crunch.checkpoints "
                                      "WHERE id = :id", {"id": checkpoint_id})[0]
    digest = merkle.entries_sha256(moved)
    execute(store_url, "UPDATE crunch.checkpoints SET entries = CAST(:e AS jsonb), chained_root = :c, "
                       "meta = jsonb_set(meta, '{entries_sha256}', to_jsonb(CAST(:d AS text))) WHERE id = :id",
            params={"e": json.dumps(moved), "c": merkle.chain_with_entries(previous, root, digest), "d": digest,
                    "id": checkpoint_id})
    with api(store_url) as client:
        refused = confirm(client, checkpoint_id)
        assert refused.status_code == 409
        assert set(failed_checks(refused)) >= {"payout_recomputes"}


def test_a_rewritten_snapshot_is_refused_even_with_a_rebuilt_checkpoint(store_url):
    """The engine's role may rewrite snapshots (it rolls them up), and could then rebuild the
    checkpoint from them: the gate recomputes the snapshots from the scores, which are INSERT-only."""
    from crunch_assets.defs.checkpoints.assets import build_checkpoint
    from crunch_assets.publication import RootSink, publish
    from crunch_assets.settings import CompetitionSettings
    from resources.store.competition import CompetitionStore

    engine_url = role_url(store_url, "engine")
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        execute(engine_url, "UPDATE crunch.scores SET value = 1.0 WHERE model_id = 'anti'")
    execute(engine_url, "UPDATE crunch.snapshots SET value_sum = prediction_count WHERE model_id = 'anti'")
    checkpoint_id, _ = first_checkpoint(store_url)
    engine = sa.create_engine(engine_url)
    try:
        store = CompetitionStore(engine, "btc_updown")
        cp = store.checkpoint_by_id(checkpoint_id)
        built = build_checkpoint(_spec(), _rules(), store, _accounts(), cp.period_start, cp.period_end)
        assert built.entries["ranking"][0]["model_id"] == "anti"  # the rewritten snapshots would pay anti first
        stored = store.write_pending_checkpoint(cp.period_start, cp.period_end, built.entries, built.merkle_root,
                                                built.chained_root, built.meta, built.commitment_scheme)
        # and publishes its root, as the checkpoint asset does (the engine's process writes the sink)
        publish(RootSink.from_settings(CompetitionSettings("btc_updown")), stored)
    finally:
        engine.dispose()
    with api(store_url) as client:
        refused = confirm(client, checkpoint_id)
        assert refused.status_code == 409
        failed = failed_checks(refused)
        assert set(failed) == {"snapshots_match_scores"}, failed
        assert failed["snapshots_match_scores"].startswith("anti ")  # the rewritten snapshot, named


def test_a_submitted_checkpoint_is_never_rewritten(store_url):
    checkpoint_id, entries = first_checkpoint(store_url)
    with api(store_url) as client:
        assert confirm(client, checkpoint_id).status_code == 200
    rewritten = json.loads(json.dumps(entries))
    rewritten["ranking"][0]["model_id"], rewritten["ranking"][1]["model_id"] = (
        entries["ranking"][1]["model_id"], entries["ranking"][0]["model_id"])
    # the engine's role: the guard refuses (it may write entries only while PENDING)
    with pytest.raises(sa.exc.DBAPIError, match="never rewritten"):
        write_entries(role_url(store_url, "engine"), checkpoint_id, rewritten)
    # a superuser: the guard too, under replica mode as well
    with pytest.raises(sa.exc.DBAPIError, match="never rewritten"):
        execute(store_url, "SET LOCAL session_replication_role = replica",
                "UPDATE crunch.checkpoints SET entries = CAST(:e AS jsonb) WHERE id = :id",
                params={"e": json.dumps(rewritten), "id": checkpoint_id})
    # a superuser who disables it: the audit and the API name it
    execute(store_url, "ALTER TABLE crunch.checkpoints DISABLE TRIGGER checkpoints_guard",
            "UPDATE crunch.checkpoints SET entries = CAST(:e AS jsonb) WHERE id = :id",
            "ALTER TABLE crunch.checkpoints ENABLE ALWAYS TRIGGER checkpoints_guard",
            params={"e": json.dumps(rewritten), "id": checkpoint_id})
    result = audit_cli(store_url)
    assert result.returncode == 1
    assert "the checkpoint's entries (who is paid what) differ from what it committed to" in result.stdout
    assert "the stored gate result passed another checkpoint content (entries_sha256 differs)" in result.stdout
    with api(store_url) as client:
        shown = client.get(f"/competitions/btc_updown/checkpoints/{checkpoint_id}").json()
        assert shown["lifecycle"]["verified"] is False
        assert any("entries_sha256 differs" in p for p in shown["lifecycle"]["problems"])


# --- the audit and the status --------------------------------------------------------------------

def _submitted(store_url: str) -> int:
    checkpoint_id, _ = first_checkpoint(store_url)
    with api(store_url) as client:
        assert confirm(client, checkpoint_id).status_code == 200
        assert client.patch(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/status", json={"status": "CLAIMABLE"},
                            headers=auth(TOKEN)).status_code == 200
    return checkpoint_id


@pytest.mark.parametrize("role", ["engine", "api"])
def test_the_roles_cannot_touch_the_audit_or_a_status(store_url, role):
    checkpoint_id = _submitted(store_url)
    url = role_url(store_url, role)
    attempts = {
        "TRUNCATE": ["TRUNCATE crunch.checkpoint_audit"],
        "DISABLE TRIGGER + UPDATE": ["ALTER TABLE crunch.checkpoint_audit DISABLE TRIGGER checkpoint_audit_append_only",
                                     "UPDATE crunch.checkpoint_audit SET actor = 'someone else'"],
        "replica + DELETE": ["SET LOCAL session_replication_role = replica", "DELETE FROM crunch.checkpoint_audit"],
        "forged INSERT": [f"INSERT INTO crunch.checkpoint_audit (checkpoint_id, from_status, to_status, actor, digest) "
                          f"VALUES ({checkpoint_id}, 'CLAIMABLE', 'PAID', 'forger', 'x')"],
        "UPDATE status": [f"UPDATE crunch.checkpoints SET status = 'PAID' WHERE id = {checkpoint_id}"],
        "DELETE checkpoint": [f"DELETE FROM crunch.checkpoints WHERE id = {checkpoint_id}"],
        "DDL": ["CREATE TABLE crunch.mine (id int)"],
        "the gate function": ["SELECT crunch.record_checkpoint_gate('btc_updown', 1, '{\"passed\": true}')"],
    }
    for name, statements in attempts.items():
        if role == "api" and name == "the gate function":
            continue  # the api role's to call (it changes only a PENDING checkpoint's stored gate)
        with pytest.raises(sa.exc.DBAPIError, match="permission denied|must be owner") as refused:
            execute(url, *statements)
        assert "permission denied" in str(refused.value) or "must be owner" in str(refused.value), name
    assert [tuple(r) for r in query(store_url, "SELECT to_status, actor FROM crunch.checkpoint_audit ORDER BY id")] == [
        ("SUBMITTED", "operator"), ("CLAIMABLE", "operator")]
    assert query(store_url, "SELECT status FROM crunch.checkpoints WHERE id = :id", {"id": checkpoint_id})[0][0] == "CLAIMABLE"


def test_the_api_role_moves_a_checkpoint_only_with_a_passing_gate_for_that_row(store_url):
    checkpoint_id, _ = first_checkpoint(store_url)
    call = ("SELECT outcome, message FROM crunch.advance_checkpoint('btc_updown', :id, 'SUBMITTED', 'forger', :tx, NULL, "
            "CAST(:gate AS jsonb))")
    url = role_url(store_url, "api")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            without = connection.execute(sa.text(call), {"id": checkpoint_id, "tx": TX, "gate": None}).one()
            forged = connection.execute(sa.text(call), {"id": checkpoint_id, "tx": TX, "gate": json.dumps(
                {"passed": True, "checkpoint_updated_at": "2000-01-01T00:00:00+00:00"})}).one()
            skipping = connection.execute(sa.text(call.replace("'SUBMITTED'", "'PAID'")),
                                          {"id": checkpoint_id, "tx": TX, "gate": None}).one()
    finally:
        engine.dispose()
    assert without.outcome == "gate" and "passing emission safety gate" in without.message
    assert forged.outcome == "conflict" and "rebuilt while the gate ran" in forged.message
    assert skipping.outcome == "conflict" and "needs it CLAIMABLE" in skipping.message
    assert query(store_url, "SELECT count(*) FROM crunch.checkpoint_audit")[0][0] == 0


def test_a_superuser_is_refused_by_the_triggers_even_in_replica_mode(store_url):
    checkpoint_id = _submitted(store_url)
    refusals = {
        "TRUNCATE": (["TRUNCATE crunch.checkpoint_audit"], "append-only"),
        "TRUNCATE checkpoints": (["TRUNCATE crunch.checkpoints CASCADE"], "append-only|past PENDING"),
        "replica + DELETE": (["SET LOCAL session_replication_role = replica", "DELETE FROM crunch.checkpoint_audit"],
                             "append-only"),
        "replica + UPDATE": (["SET LOCAL session_replication_role = replica",
                              "UPDATE crunch.checkpoint_audit SET tx_hash = NULL"], "append-only"),
        "forged INSERT": ([f"INSERT INTO crunch.checkpoint_audit (checkpoint_id, from_status, to_status, actor, digest) "
                           f"VALUES ({checkpoint_id}, 'CLAIMABLE', 'PAID', 'forger', 'x')"], "only by crunch.advance_checkpoint"),
        "UPDATE status": ([f"UPDATE crunch.checkpoints SET status = 'PAID' WHERE id = {checkpoint_id}"],
                          "only through crunch.advance_checkpoint"),
        "replica + UPDATE status": (["SET LOCAL session_replication_role = replica",
                                     f"UPDATE crunch.checkpoints SET status = 'PAID' WHERE id = {checkpoint_id}"],
                                    "only through crunch.advance_checkpoint"),
        "DELETE checkpoint": ([f"DELETE FROM crunch.checkpoints WHERE id = {checkpoint_id}"], "never deleted"),
    }
    for statements, message in refusals.values():
        with pytest.raises(sa.exc.DBAPIError, match=message):
            execute(store_url, *statements)
    assert len(query(store_url, "SELECT id FROM crunch.checkpoint_audit")) == 2, "nothing changed"
    assert audit_cli(store_url).returncode == 0


def test_what_a_superuser_forces_past_the_triggers_is_flagged(store_url):
    """With the triggers disabled a superuser can still write anything: an audit row edited or
    forged, a status set to PAID with no audit, gate or tx hash. `audit` and the API name each."""
    submitted = _submitted(store_url)
    other = query(store_url, "SELECT id FROM crunch.checkpoints ORDER BY period_start")[1][0]
    execute(store_url,
            "ALTER TABLE crunch.checkpoint_audit DISABLE TRIGGER checkpoint_audit_append_only",
            "ALTER TABLE crunch.checkpoint_audit DISABLE TRIGGER checkpoint_audit_insert_guard",
            "ALTER TABLE crunch.checkpoints DISABLE TRIGGER checkpoints_guard",
            # an audit row rewritten
            f"UPDATE crunch.checkpoint_audit SET actor = 'someone else' WHERE checkpoint_id = {submitted} AND to_status = 'CLAIMABLE'",
            # the second checkpoint shown PAID, with a forged trail row but no gate, tx hash or digest chain
            f"UPDATE crunch.checkpoints SET status = 'PAID' WHERE id = {other}",
            f"INSERT INTO crunch.checkpoint_audit (checkpoint_id, from_status, to_status, actor, digest) "
            f"VALUES ({other}, 'CLAIMABLE', 'PAID', 'forger', repeat('0', 64))",
            "ALTER TABLE crunch.checkpoint_audit ENABLE ALWAYS TRIGGER checkpoint_audit_append_only",
            "ALTER TABLE crunch.checkpoint_audit ENABLE ALWAYS TRIGGER checkpoint_audit_insert_guard",
            "ALTER TABLE crunch.checkpoints ENABLE ALWAYS TRIGGER checkpoints_guard")
    result = audit_cli(store_url)
    assert result.returncode == 1
    assert f"checkpoint #{submitted} (CLAIMABLE) does not verify: audit row" in result.stderr
    assert "(SUBMITTED -> CLAIMABLE) was changed, or a row before it removed or forged" in result.stdout
    assert f"checkpoint #{other} (PAID) does not verify: PAID without a matching audit trail" in result.stderr
    assert "PAID without a stored passing gate result" in result.stdout
    with api(store_url) as client:
        listed = {c["id"]: c["lifecycle"] for c in client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"]}
        assert listed[submitted]["verified"] is False and listed[other]["verified"] is False
        assert any("PAID without a matching audit trail" in p for p in listed[other]["problems"])
        assert any("without a stored passing gate result" in p for p in listed[other]["problems"])
        trail = client.get(f"/competitions/btc_updown/checkpoints/{submitted}/audit").json()
        assert trail["lifecycle"]["verified"] is False


def test_a_status_forced_with_no_audit_row_at_all_is_flagged(store_url):
    """The issue's `UPDATE crunch.checkpoints SET status = 'PAID'`: an empty audit trail, no gate,
    no tx hash."""
    checkpoint_id, _ = first_checkpoint(store_url)
    execute(store_url, "ALTER TABLE crunch.checkpoints DISABLE TRIGGER checkpoints_guard",
            f"UPDATE crunch.checkpoints SET status = 'PAID' WHERE id = {checkpoint_id}",
            "ALTER TABLE crunch.checkpoints ENABLE ALWAYS TRIGGER checkpoints_guard")
    result = audit_cli(store_url)
    assert result.returncode == 1
    assert (f"checkpoint #{checkpoint_id} (PAID) does not verify: PAID without a matching audit trail (the audit holds: "
            "no row)") in result.stderr
    with api(store_url) as client:
        shown = client.get(f"/competitions/btc_updown/checkpoints/{checkpoint_id}").json()
        assert shown["status"] == "PAID" and shown["audit"] == []
        assert shown["lifecycle"]["verified"] is False
        assert set(shown["lifecycle"]["problems"]) == {
            "PAID without a matching audit trail (the audit holds: no row)", "PAID without a stored passing gate result"}
        # and the next checkpoint cannot be submitted on top of it
        refused = confirm(client, query(store_url, "SELECT id FROM crunch.checkpoints ORDER BY period_start")[1][0])
        assert refused.status_code == 409
        assert "without a matching audit trail" in failed_checks(refused)["period_starts_where_previous_ended"]


# --- disputes (migration 0010) -------------------------------------------------------------------

OPEN_DISPUTE = ("SELECT outcome, message, dispute_id FROM crunch.open_checkpoint_dispute('btc_updown', :id, 'alice', "
                "'scored against a stale price', CAST(:cycles AS jsonb), 'operator')")
RESOLVE_DISPUTE = ("SELECT outcome, message, resolution_id FROM crunch.resolve_checkpoint_dispute('btc_updown', :id, "
                   ":dispute, 'rechecked: no change', 'operator')")
ADVANCE = ("SELECT outcome, message FROM crunch.advance_checkpoint('btc_updown', :id, 'SUBMITTED', 'forger', :tx, NULL, "
           "CAST(:gate AS jsonb))")


def call(url: str, statement: str, params: dict):
    """One row of one statement, committed, as the role of `url`."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            return connection.execute(sa.text(statement), params).one()
    finally:
        engine.dispose()


def forged_gate(url: str, checkpoint_id: int) -> str:
    """A 'passing gate result' for the row as it is now: what any client calling the function can
    write without running the gate."""
    updated_at, merkle_root, chained_root = query(
        url, "SELECT updated_at, merkle_root, chained_root FROM crunch.checkpoints WHERE id = :id", {"id": checkpoint_id})[0]
    return json.dumps({"passed": True, "checkpoint_updated_at": updated_at.isoformat(), "merkle_root": merkle_root,
                       "chained_root": chained_root})


def cycles_of(url: str, checkpoint_id: int, shift: timedelta = timedelta(0)) -> str:
    start = query(url, "SELECT period_start FROM crunch.checkpoints WHERE id = :id", {"id": checkpoint_id})[0][0]
    return json.dumps([{"first": (start + shift).isoformat(), "last": (start + shift + timedelta(minutes=5)).isoformat()}])


def test_a_dispute_opened_through_the_api_roles_function_blocks_advance_checkpoint(store_url):
    """The api role calling the database's functions itself, with no gate run and a forged passing
    gate result for the row: a dispute it opens blocks crunch.advance_checkpoint until resolved."""
    checkpoint_id, _ = first_checkpoint(store_url)
    api_url = role_url(store_url, "api")
    opened = call(api_url, OPEN_DISPUTE, {"id": checkpoint_id, "cycles": cycles_of(store_url, checkpoint_id)})
    assert opened.outcome == "opened", opened.message
    blocked = call(api_url, ADVANCE, {"id": checkpoint_id, "tx": TX, "gate": forged_gate(store_url, checkpoint_id)})
    assert blocked.outcome == "disputed" and "1 open dispute" in blocked.message
    assert query(store_url, "SELECT status FROM crunch.checkpoints WHERE id = :id", {"id": checkpoint_id})[0][0] == "PENDING"
    assert query(store_url, "SELECT count(*) FROM crunch.checkpoint_audit")[0][0] == 0

    # what the function refuses: cycles outside the period, a time without an offset, an unknown checkpoint
    outside = call(api_url, OPEN_DISPUTE, {"id": checkpoint_id,
                                           "cycles": cycles_of(store_url, checkpoint_id, timedelta(minutes=-10))})
    assert outside.outcome == "outside" and "are not inside checkpoint" in outside.message
    naive = call(api_url, OPEN_DISPUTE, {"id": checkpoint_id, "cycles": json.dumps(
        [{"first": "2026-11-14T00:00:00", "last": "2026-11-14T00:05:00"}])})
    assert naive.outcome == "invalid" and "UTC offset" in naive.message
    assert call(api_url, OPEN_DISPUTE, {"id": 10**9, "cycles": cycles_of(store_url, checkpoint_id)}).outcome == "not_found"

    resolved = call(api_url, RESOLVE_DISPUTE, {"id": checkpoint_id, "dispute": opened.dispute_id})
    assert resolved.outcome == "resolved"
    twice = call(api_url, RESOLVE_DISPUTE, {"id": checkpoint_id, "dispute": opened.dispute_id})
    assert twice.outcome == "invalid" and "already resolved" in twice.message
    moved = call(api_url, ADVANCE, {"id": checkpoint_id, "tx": TX, "gate": forged_gate(store_url, checkpoint_id)})
    assert moved.outcome == "changed", moved.message
    late = call(api_url, OPEN_DISPUTE, {"id": checkpoint_id, "cycles": cycles_of(store_url, checkpoint_id)})
    assert late.outcome == "conflict" and "SUBMITTED" in late.message
    assert [tuple(r) for r in query(store_url, "SELECT action, dispute_id FROM crunch.checkpoint_disputes ORDER BY id")] \
        == [("OPENED", None), ("RESOLVED", opened.dispute_id)]


def test_the_dispute_window_is_the_databases_to_enforce(store_url):
    """A checkpoint built under rules declaring a 7-day dispute window cannot be moved to SUBMITTED
    by crunch.advance_checkpoint before it ends, whatever gate result is given; nor can one that
    names no recorded rules document (its window is unknown)."""
    from crunch_assets.defs.checkpoints.assets import build_checkpoint
    from resources.store.competition import CompetitionStore

    first, second = [r[0] for r in query(store_url, "SELECT id FROM crunch.checkpoints ORDER BY period_start")]
    spec = replace(_spec(), gate=replace(_spec().gate, dispute_window_seconds=7 * 86400))
    engine = sa.create_engine(role_url(store_url, "engine"))
    try:  # rebuilt by the engine under those rules, as the checkpoint asset does
        store = CompetitionStore(engine, "btc_updown")
        cp = store.checkpoint_by_id(first)
        built = build_checkpoint(spec, _rules(), store, _accounts(), cp.period_start, cp.period_end)
        store.rules.record([built.rules_document])
        store.write_pending_checkpoint(cp.period_start, cp.period_end, built.entries, built.merkle_root,
                                       built.chained_root, built.meta, built.commitment_scheme)
    finally:
        engine.dispose()
    api_url = role_url(store_url, "api")
    waiting = call(api_url, ADVANCE, {"id": first, "tx": TX, "gate": forged_gate(store_url, first)})
    assert waiting.outcome == "dispute_window" and "the dispute window ends at" in waiting.message
    assert "604800 s after it was built" in waiting.message

    entries = query(store_url, "SELECT entries FROM crunch.checkpoints WHERE id = :id", {"id": second})[0][0]
    write_entries(store_url, second, {key: value for key, value in entries.items() if key != "rules"})
    unknown = call(api_url, ADVANCE, {"id": second, "tx": TX, "gate": forged_gate(store_url, second)})
    assert unknown.outcome == "dispute_window" and "names no recorded rules document" in unknown.message
    assert query(store_url, "SELECT count(*) FROM crunch.checkpoint_audit")[0][0] == 0


@pytest.mark.parametrize("role", ["engine", "api"])
def test_the_roles_write_disputes_only_through_the_functions(store_url, role):
    checkpoint_id, _ = first_checkpoint(store_url)
    api_url = role_url(store_url, "api")
    opened = call(api_url, OPEN_DISPUTE, {"id": checkpoint_id, "cycles": cycles_of(store_url, checkpoint_id)})
    url = role_url(store_url, role)
    attempts = {
        "INSERT a resolution": [f"INSERT INTO crunch.checkpoint_disputes (competition, checkpoint_id, action, dispute_id, "
                                f"actor, note) VALUES ('btc_updown', {checkpoint_id}, 'RESOLVED', {opened.dispute_id}, "
                                "'forger', 'nothing to see')"],
        "INSERT a dispute": [f"INSERT INTO crunch.checkpoint_disputes (competition, checkpoint_id, action, claimant, what, "
                             f"cycles, actor) VALUES ('btc_updown', {checkpoint_id}, 'OPENED', 'x', 'y', '[]', 'forger')"],
        "DELETE the dispute": ["DELETE FROM crunch.checkpoint_disputes"],
        "UPDATE the dispute": ["UPDATE crunch.checkpoint_disputes SET what = 'nothing'"],
        "TRUNCATE": ["TRUNCATE crunch.checkpoint_disputes"],
        "UPDATE a rules document": ["UPDATE crunch.rules_fingerprints SET document = '{}'"],
        "DELETE a rules document": ["DELETE FROM crunch.rules_fingerprints"],
    }
    if role == "api":
        attempts["INSERT a rules document"] = [
            "INSERT INTO crunch.rules_fingerprints (competition, fingerprint, cycle_digest, document) "
            "VALUES ('btc_updown', 'x', 'y', '{}')"]
        attempts["UPDATE a cycle's fingerprint"] = ["UPDATE crunch.inputs SET rules_fingerprint = 'x'"]
    else:  # the engine may call no dispute function
        attempts["open through the function"] = [OPEN_DISPUTE.replace(":id", str(checkpoint_id)).replace(
            ":cycles", "'[]'")]
    for name, statements in attempts.items():
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied") as refused:
            execute(url, *statements)
        assert "permission denied" in str(refused.value), name
    assert [tuple(r) for r in query(store_url, "SELECT action, actor FROM crunch.checkpoint_disputes")] == [
        ("OPENED", "operator")]
    blocked = call(api_url, ADVANCE, {"id": checkpoint_id, "tx": TX, "gate": forged_gate(store_url, checkpoint_id)})
    assert blocked.outcome == "disputed"


def test_a_superusers_forged_dispute_resolution_is_refused_by_the_triggers(store_url):
    """A superuser writing around the dispute functions (to lift a block with a resolution nobody
    recorded, or to erase a dispute) is refused by triggers that replica mode does not skip; with
    the functions' own setting forged, every row is still checked. Only disabling the triggers gets
    past them (docs/operations.md, threat model)."""
    checkpoint_id, _ = first_checkpoint(store_url)
    api_url = role_url(store_url, "api")
    opened = call(api_url, OPEN_DISPUTE, {"id": checkpoint_id, "cycles": cycles_of(store_url, checkpoint_id)})

    def row(action: str, dispute_id: int | None, **more: str) -> str:
        """An INSERT of a dispute row written around the functions."""
        columns = ", ".join(["competition", "checkpoint_id", "action", "dispute_id", "actor", "note", *more])
        values = ", ".join(["'btc_updown'", str(checkpoint_id), f"'{action}'", "NULL" if dispute_id is None else str(dispute_id),
                            "'forger'", "'nothing to see'", *(f"'{v}'" for v in more.values())])
        return f"INSERT INTO crunch.checkpoint_disputes ({columns}) VALUES ({values})"

    forged = row("RESOLVED", opened.dispute_id)
    in_function = f"SELECT set_config('crunch.checkpoint_dispute', '{checkpoint_id}', true)"
    refusals = {
        "forged resolution": ([forged], "appended only by crunch.open_checkpoint_dispute"),
        "replica + forged resolution": (["SET LOCAL session_replication_role = replica", forged], "appended only by"),
        # the function's setting forged too: each row is still checked
        "resolution of no dispute": ([in_function, row("RESOLVED", 999999)], "a resolution names how an opened dispute"),
        "resolution claiming a dispute": ([in_function, row("RESOLVED", opened.dispute_id, claimant="x")],
                                          "a resolution names how an opened dispute"),
        "DELETE the dispute": (["DELETE FROM crunch.checkpoint_disputes"], "append-only"),
        "replica + DELETE": (["SET LOCAL session_replication_role = replica", "DELETE FROM crunch.checkpoint_disputes"],
                             "append-only"),
        "UPDATE the dispute": (["UPDATE crunch.checkpoint_disputes SET action = 'RESOLVED'"], "append-only"),
        "TRUNCATE": (["TRUNCATE crunch.checkpoint_disputes"], "append-only"),
        "TRUNCATE rules documents": (["TRUNCATE crunch.rules_fingerprints"], "append-only"),
        "replica + UPDATE rules document": (["SET LOCAL session_replication_role = replica",
                                             "UPDATE crunch.rules_fingerprints SET document = '{}'"], "append-only"),
    }
    for statements, message in refusals.values():
        with pytest.raises(sa.exc.DBAPIError, match=message):
            execute(store_url, *statements)
    assert [tuple(r) for r in query(store_url, "SELECT action FROM crunch.checkpoint_disputes")] == [("OPENED",)]
    # a resolution forged for a checkpoint past PENDING is refused even from inside (the setting forged)
    assert call(api_url, RESOLVE_DISPUTE, {"id": checkpoint_id, "dispute": opened.dispute_id}).outcome == "resolved"
    assert call(api_url, ADVANCE, {"id": checkpoint_id, "tx": TX,
                                   "gate": forged_gate(store_url, checkpoint_id)}).outcome == "changed"
    with pytest.raises(sa.exc.DBAPIError, match="a dispute is recorded only while it is PENDING"):
        execute(store_url, in_function, row("OPENED", None, claimant="x", what="y", cycles="[]"))

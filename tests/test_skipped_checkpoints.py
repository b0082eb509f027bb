"""A period nobody can be paid for must not stop the payouts of every period after it.

Four hourly periods replayed through the real assets (synthetic feed, three participants' models
in their own processes, the embedded PostgreSQL):
- hour 0: all three answer: payable;
- hour 1: every model raises: nobody is eligible, the checkpoint pays 0 to all (its blocking asset
  check fails) and can never be submitted;
- hour 2: one model raises: two eligible participants, below the gate's minimum of three (and the
  first is paid 62.5 %, over the 50 % cap): refused by declared policy;
- hour 3: all three answer: payable, but submissions go in order, so before this change it waited
  for hour 1 forever.

Then the operator's way out, PENDING -> SKIPPED (final, audited, with the reason), over real HTTP,
the console script and the database function, and what a database console can do around it.
"""

from __future__ import annotations

import contextlib
import getpass
from markupsafe import escape
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.api.conftest import LiveServer, auth, database_named, fresh_copy, role_env, role_url
from tests.rewards_fixtures import MODEL_HEADER, hour_key, materialize_one

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("crunch-dagster"))
START = datetime(2026, 11, 20, tzinfo=timezone.utc)
HOURS = 4
DEAD_HOUR, THIN_HOUR = 1, 2
TEMPLATE = "crunch_skip_template"
CRUNCH_PUBKEY = "CrunchSkipPubkey11111111111111111111111111111"
TOKEN = "skip-test-operator-token-0123456789"
ACTOR = "treasury-operator"
TX = "0x" + "ef" * 32
REASON = "hour 1: every model failed every cycle (feed incident on the participants' side): nobody to pay"

# hour index -> raises; otherwise each answers with a constant quality: three distinct ranks
MODEL_BODY = """
START_TS = {start_ts}
DEAD_HOURS = {dead_hours!r}


class Model(UpDownModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        asof = self.latest['asof_ts']
        if (asof - START_TS) // 3600 in DEAD_HOURS:
            raise RuntimeError('down this hour')
        return {{'p_up': {right} if went_up(asof) else {wrong}}}
"""
MODELS = {
    "oracle": ((DEAD_HOUR,), 1.0),
    "sharp": ((DEAD_HOUR,), 0.85),
    "keen": ((DEAD_HOUR, THIN_HOUR), 0.7),
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


def _definitions(database: str, models_dir: Path):
    from competitions.btc_updown.definitions import build_definitions
    from resources.feeds.synthetic import SyntheticFeed
    from resources.model_runners.local import LocalModelRunner
    from resources.store.database import CrunchDatabase

    return build_definitions(spec=_spec(), feed=SyntheticFeed(), automation_running=False,
                             model_runner=LocalModelRunner(models_dir=str(models_dir), call_timeout_seconds=5.0),
                             database=CrunchDatabase(database=database), payout_accounts=_accounts())


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("skip_models")
    for name, (dead_hours, right) in MODELS.items():
        (directory / f"{name}.py").write_text(MODEL_HEADER + MODEL_BODY.format(
            start_ts=int(START.timestamp()), dead_hours=dead_hours, right=right, wrong=round(1 - right, 6)))
    return directory


@pytest.fixture(scope="module")
def template_url(database_url, models_dir):
    """The four hours replayed (checkpoints built by the engine role, all PENDING), never changed."""
    from crunch_assets.replay import replay
    from resources.store.database import dispose_engines

    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {TEMPLATE}"))
    timings = replay(_definitions(TEMPLATE, models_dir), _spec(), START, START + timedelta(hours=HOURS))
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
    with LiveServer(create_app([competition], api_token=TOKEN, actor=ACTOR, read_env=False)) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def cli_env(store_url: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRUNCH_")}
    env.update(role_env(store_url))
    env.update({"CRUNCH_AUTOMATION": "off", "CRUNCH_BTC_UPDOWN_START": START.isoformat(),
                "CRUNCH_BTC_UPDOWN_CHECKPOINT_INTERVAL_SECONDS": "3600", "CRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY": CRUNCH_PUBKEY})
    return env


def cli(store_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=PROJECT_ROOT, env=cli_env(store_url), capture_output=True, text=True,
                          timeout=300)


def execute(url: str, *statements: str, params: dict | None = None) -> None:
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


def checkpoint_ids(url: str) -> list[int]:
    """The checkpoints of hours 0..3, in order."""
    return [row[0] for row in query(url, "SELECT id FROM crunch.checkpoints ORDER BY period_start")]


def confirm(client: httpx.Client, checkpoint_id: int) -> httpx.Response:
    return client.post(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/confirm", json={"tx_hash": TX}, headers=auth(TOKEN))


def skip(client: httpx.Client, checkpoint_id: int, **body) -> httpx.Response:
    return client.patch(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/status", json={"status": "SKIPPED", **body},
                        headers=auth(TOKEN))


def failed_checks(response: httpx.Response) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in response.json()["detail"]["gate"]["checks"] if not c["passed"]}


# --- the replay is what the scenario says ---------------------------------------------------------

def test_the_replay_has_a_payable_hour_then_two_unpayable_ones_then_a_payable_one(template_url):
    rows = query(template_url, "SELECT status, entries FROM crunch.checkpoints ORDER BY period_start")
    assert [status for status, _ in rows] == ["PENDING"] * HOURS
    rewards = [sorted((r["reward_pct"] for r in entries["ranking"]), reverse=True) for _, entries in rows]
    assert rewards == [[500_000_000, 250_000_000, 250_000_000], [0, 0, 0], [625_000_000, 375_000_000, 0],
                       [500_000_000, 250_000_000, 250_000_000]]
    dead = rows[DEAD_HOUR][1]["ranking"]
    assert {r["breakdown"]["unpaid_reason"] for r in dead} == {"no scored answer in the period"}
    assert rows[DEAD_HOUR][1]["cruncher_rewards"] == []


# --- the defect, and the way out -----------------------------------------------------------------

def test_an_unpayable_period_blocks_the_later_ones_until_an_operator_skips_it(store_url):
    first, dead, thin, last = checkpoint_ids(store_url)
    with api(store_url) as client:
        assert confirm(client, first).status_code == 200

        # nobody can be paid for the dead hour: the gate refuses it, for good
        refused = confirm(client, dead)
        assert refused.status_code == 409
        assert {"some_model_is_paid", "rewards_sum_to_one_billion", "minimum_field_size"} <= set(failed_checks(refused))
        assert "no model is paid: none of the 3 ranked model(s) is eligible (no scored answer in the period)" in \
            failed_checks(refused)["some_model_is_paid"]
        # the thin hour: refused by the declared policy (two participants, one paid 62.5 %)
        thin_refused = failed_checks(confirm(client, thin))
        assert {"minimum_field_size", "participant_share_within_cap", "period_starts_where_previous_ended"} <= set(thin_refused)
        # the defect: the last hour is payable in every other respect, and still refused, forever
        blocked = confirm(client, last)
        assert blocked.status_code == 409
        assert set(failed_checks(blocked)) == {"period_starts_where_previous_ended"}
        assert f"the previous checkpoint (#{thin}) is still PENDING" in failed_checks(blocked)["period_starts_where_previous_ended"]

        # the listing says why the dead and thin hours can never be submitted, and the way out
        listed = {c["id"]: c for c in client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"]}
        assert listed[first]["unpayable"] is None and listed[last]["unpayable"] is None
        assert listed[dead]["unpayable"]["reasons"][0].startswith("some_model_is_paid: no model is paid")
        assert f"crunch-dagster checkpoints skip btc_updown {dead} --reason" in listed[dead]["unpayable"]["remedy"]
        assert '"status": "SKIPPED"' in listed[dead]["unpayable"]["remedy"]
        assert any(r.startswith("minimum_field_size: 2 eligible participant(s)") for r in listed[thin]["unpayable"]["reasons"])
        assert any(r.startswith("participant_share_within_cap") for r in listed[thin]["unpayable"]["reasons"])

        # a skip needs a reason and pays nothing on-chain; it goes in order
        assert skip(client, dead).status_code == 422
        assert skip(client, dead, note="   ").status_code == 422
        assert skip(client, dead, note=REASON, tx_hash=TX).status_code == 422
        out_of_order = skip(client, thin, note="two participants")
        assert out_of_order.status_code == 409
        assert any(f"(#{dead}) is still PENDING" in r for r in out_of_order.json()["detail"]["reasons"])
        assert client.get(f"/competitions/btc_updown/checkpoints/{thin}").json()["status"] == "PENDING"

        skipped = skip(client, dead, note=REASON)
        assert skipped.status_code == 200, skipped.text
        body = skipped.json()
        assert body["changed"] and body["checkpoint"]["status"] == "SKIPPED"
        assert body["checkpoint"]["tx_hash"] is None and body["checkpoint"]["submitted_at"] is None
        assert (body["audit"]["from_status"], body["audit"]["to_status"], body["audit"]["actor"], body["audit"]["note"],
                body["audit"]["tx_hash"]) == ("PENDING", "SKIPPED", ACTOR, REASON, None)
        again = skip(client, dead, note="a second reason")
        assert again.status_code == 200 and again.json()["changed"] is False and again.json()["audit"] is None

        # final: a skipped checkpoint is never submitted or paid
        for attempt in (confirm(client, dead),
                        client.patch(f"/competitions/btc_updown/checkpoints/{dead}/status", json={"status": "CLAIMABLE"}, headers=auth(TOKEN)),
                        client.patch(f"/competitions/btc_updown/checkpoints/{dead}/status", json={"status": "PENDING"}, headers=auth(TOKEN))):
            assert attempt.status_code == 409, attempt.text
        assert "a skipped checkpoint is final" in confirm(client, dead).json()["detail"]["message"]

        shown = client.get(f"/competitions/btc_updown/checkpoints/{dead}").json()
        assert shown["status"] == "SKIPPED" and shown["lifecycle"] == {"verified": True, "problems": []}
        assert shown["skipped"]["reason"] == REASON and shown["skipped"]["actor"] == ACTOR
        assert shown["gate"]["passed"] is False  # the refusal that justified it stays with it
        assert {c["name"] for c in shown["gate"]["checks"] if not c["passed"]} >= {"some_model_is_paid"}

        # the thin hour now may be skipped (in order), then the last one submits
        assert set(failed_checks(confirm(client, thin))) == {"minimum_field_size", "participant_share_within_cap"}
        assert skip(client, thin, note="two eligible participants: below the declared minimum of three").status_code == 200
        submitted = confirm(client, last)
        assert submitted.status_code == 200, submitted.text
        gate = {c["name"]: c for c in client.get(f"/competitions/btc_updown/checkpoints/{last}/gate").json()["gate"]["checks"]}
        assert gate["period_starts_where_previous_ended"]["detail"] == \
            f"continues checkpoint #{thin} (SKIPPED) (skipped: it paid nothing)"

        # a SUBMITTED checkpoint is never skipped
        for other in (first, last):
            refused_skip = skip(client, other, note="too late")
            assert refused_skip.status_code == 409
            assert refused_skip.json()["detail"]["status"] == "SUBMITTED"
            assert "SKIPPED needs it PENDING" in refused_skip.json()["detail"]["message"]

        listed = client.get("/competitions/btc_updown/checkpoints?status=SKIPPED").json()["checkpoints"]
        assert [(c["id"], c["skipped"]["reason"], c["lifecycle"]["verified"]) for c in listed] == [
            (thin, "two eligible participants: below the declared minimum of three", True), (dead, REASON, True)]
        page = client.get("/page/btc_updown").text
        assert f'data-checkpoint="{dead}"' in page and "nothing is paid for this period, now or later" in page
        assert str(escape(REASON)) in page  # as the page escapes it
        model_page = client.get("/page/btc_updown/models/oracle").text
        assert "Skipped: nothing is paid for this period" in model_page

    audit_rows = query(store_url, "SELECT checkpoint_id, from_status, to_status, note FROM crunch.checkpoint_audit "
                                  "WHERE to_status = 'SKIPPED' ORDER BY id")
    assert [tuple(r) for r in audit_rows] == [(dead, "PENDING", "SKIPPED", REASON),
                                              (thin, "PENDING", "SKIPPED",
                                               "two eligible participants: below the declared minimum of three")]
    result = cli(store_url, "audit", "btc_updown")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{HOURS} checkpoint(s) verified" in result.stdout
    assert f"ok  #{dead} " in result.stdout and "SKIPPED" in result.stdout


def test_a_payable_tampered_or_unsettled_checkpoint_is_not_skipped(store_url):
    """A skip is for a period nobody can be paid for: one the gate passes is submitted; one whose
    entries were changed is rebuilt; a skip never hides either."""
    first, dead, _, _ = checkpoint_ids(store_url)
    with api(store_url) as client:
        payable = skip(client, first, note="the operator would rather not pay")
        assert payable.status_code == 409
        assert payable.json()["detail"]["reasons"] == [
            "the emission safety gate passes: the checkpoint can be paid; submit it (a skip is for a period nobody can be "
            "paid for)"]
        assert client.get(f"/competitions/btc_updown/checkpoints/{first}").json()["status"] == "PENDING"
        assert confirm(client, first).status_code == 200

    # the dead hour's entries changed by a database console: the gate's recomputation names it, no skip
    entries = query(store_url, "SELECT entries FROM crunch.checkpoints WHERE id = :id", {"id": dead})[0][0]
    entries["ranking"][0]["eligible"] = True
    execute(store_url, "UPDATE crunch.checkpoints SET entries = CAST(:e AS jsonb) WHERE id = :id",
            params={"e": json.dumps(entries), "id": dead})
    with api(store_url) as client:
        tampered = skip(client, dead, note=REASON)
        assert tampered.status_code == 409
        reasons = tampered.json()["detail"]["reasons"]
        assert any(r.startswith("payout_recomputes: rank 1: eligible True stored, False recomputed") for r in reasons), reasons
        assert any(r.startswith("entries_committed:") for r in reasons)
        assert client.get(f"/competitions/btc_updown/checkpoints/{dead}").json()["status"] == "PENDING"
    assert query(store_url, "SELECT count(*) FROM crunch.checkpoint_audit WHERE to_status = 'SKIPPED'")[0][0] == 0


def test_the_database_function_holds_the_rules_for_any_caller(store_url):
    """crunch.advance_checkpoint called directly as the api role (what a leaked API login could
    do): a skip without a reason, with a tx hash or a gate, out of order, without a stored refusal
    for this very row, with an open dispute, or of a SUBMITTED checkpoint is refused; nothing
    leaves a SKIPPED one."""
    from crunch_assets import payouts
    from resources.store.competition import CompetitionStore
    from resources.store.payouts import PayoutStore

    first, dead, thin, _ = checkpoint_ids(store_url)
    call = ("SELECT outcome, message FROM crunch.advance_checkpoint('btc_updown', :id, :to, 'console', :tx, :note, "
            "CAST(:gate AS jsonb))")
    engine = sa.create_engine(role_url(store_url, "api"))

    def advance(checkpoint_id: int, to: str, note=None, tx=None, gate=None):
        with engine.begin() as connection:
            return tuple(connection.execute(sa.text(call), {"id": checkpoint_id, "to": to, "note": note, "tx": tx,
                                                            "gate": None if gate is None else json.dumps(gate)}).one())

    try:
        assert advance(dead, "SKIPPED")[0] == "invalid"
        assert advance(dead, "SKIPPED", note=" \t ")[0] == "invalid"
        assert advance(dead, "SKIPPED", note=REASON, tx=TX) == (
            "invalid", "SKIPPED pays nothing on-chain: it takes no tx_hash and no gate result")
        assert advance(dead, "SKIPPED", note=REASON, gate={"passed": False})[0] == "invalid"
        # in order: the checkpoint before it is PENDING
        assert advance(dead, "SKIPPED", note=REASON) == (
            "conflict", f"checkpoint {dead}: the checkpoint before it (#{first}) is still PENDING: skip or submit in order")
        store, payout_store = CompetitionStore(engine, "btc_updown"), PayoutStore(engine, "btc_updown")
        payouts.advance(_spec(), store, payout_store, _accounts(), first, "SUBMITTED", actor="console", tx_hash=TX,
                        rules=_rules())
        # no gate run stored for it yet
        outcome, message = advance(dead, "SKIPPED", note=REASON)
        assert outcome == "gate" and "needs a stored emission safety gate result that refuses it" in message
        # a passing gate result stored (forged through the api role's function): still no skip
        checkpoint = store.checkpoint_by_id(dead)
        this_row = {"checkpoint_updated_at": checkpoint.updated_at.isoformat(), "merkle_root": checkpoint.merkle_root,
                    "chained_root": checkpoint.chained_root}
        payout_store.record_gate(dead, {**this_row, "passed": True, "checks": []})
        assert advance(dead, "SKIPPED", note=REASON)[0] == "gate"
        # a refusal of another content of the row (it was rebuilt since): run the gate again
        payout_store.record_gate(dead, {**this_row, "passed": False, "checks": [],
                                        "checkpoint_updated_at": (checkpoint.updated_at - timedelta(seconds=1)).isoformat()})
        assert advance(dead, "SKIPPED", note=REASON) == (
            "conflict", f"checkpoint {dead} was rebuilt after its gate ran; run the skip again")
        payout_store.record_gate(dead, {**this_row, "passed": False, "checks": []})
        # an open dispute (migration 0010): a skip is final, the dispute could never be answered after it
        dispute = store.disputes.open(dead, claimant="alice", what="my model answered that hour",
                                      cycles=[(checkpoint.period_start, checkpoint.period_start)], actor="console")
        outcome, message = advance(dead, "SKIPPED", note=REASON)
        assert outcome == "disputed" and "1 open dispute(s)" in message and "before it is SKIPPED" in message
        store.disputes.resolve(dead, dispute.id, resolution="it did not: the runner's log", actor="console")
        assert advance(dead, "SKIPPED", note=REASON) == ("changed", f"checkpoint {dead}: PENDING -> SKIPPED")
        assert advance(dead, "SKIPPED", note="again")[0] == "unchanged"
        for target in ("SUBMITTED", "CLAIMABLE", "PAID"):
            outcome, message = advance(dead, target, tx=TX)
            assert outcome == "conflict" and "a skipped checkpoint is final" in message, (target, message)
        outcome, message = advance(first, "SKIPPED", note="too late")
        assert outcome == "conflict" and message == f"checkpoint {first} is SUBMITTED: SKIPPED needs it PENDING"
        # the gate a checkpoint was skipped with is never replaced
        payout_store.record_gate(dead, {"passed": True})
        assert payout_store.gate(dead)["passed"] is False
        # the engine's role has no way to skip
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            execute(role_url(store_url, "engine"), call.replace("SELECT outcome, message FROM ", "SELECT * FROM "),
                    params={"id": thin, "to": "SKIPPED", "note": REASON, "tx": None, "gate": None})
    finally:
        engine.dispose()
    # settlement never changes the scores of a period before a SKIPPED checkpoint's end: its root
    # is in every later chained root
    owner = sa.create_engine(store_url)
    try:
        assert CompetitionStore(owner, "btc_updown").locked_until() == START + timedelta(hours=DEAD_HOUR + 1)
    finally:
        owner.dispose()


def test_skipped_set_by_hand_or_its_reason_edited_is_flagged(store_url):
    """A superuser who disables the guard and writes SKIPPED (no audit row, no refusing gate), or
    who edits a skip's reason in the audit: `audit`, the API's lifecycle and the next gate name it."""
    first, dead, thin, _ = checkpoint_ids(store_url)
    # the guard refuses it, in replica mode too
    with pytest.raises(sa.exc.DBAPIError, match="only through crunch.advance_checkpoint"):
        execute(store_url, "SET LOCAL session_replication_role = replica",
                f"UPDATE crunch.checkpoints SET status = 'SKIPPED' WHERE id = {dead}")
    with api(store_url) as client:
        assert confirm(client, first).status_code == 200
    execute(store_url, "ALTER TABLE crunch.checkpoints DISABLE TRIGGER checkpoints_guard",
            f"UPDATE crunch.checkpoints SET status = 'SKIPPED' WHERE id = {dead}",
            "ALTER TABLE crunch.checkpoints ENABLE ALWAYS TRIGGER checkpoints_guard")
    result = cli(store_url, "audit", "btc_updown")
    assert result.returncode == 1
    assert (f"checkpoint #{dead} (SKIPPED) does not verify: SKIPPED without a matching audit trail (the audit holds: "
            "no row)") in result.stderr
    assert "SKIPPED without a stored gate result that refused it" in result.stdout
    with api(store_url) as client:
        shown = client.get(f"/competitions/btc_updown/checkpoints/{dead}").json()
        assert shown["status"] == "SKIPPED" and shown["skipped"] is None and shown["lifecycle"]["verified"] is False
        refused = confirm(client, thin)
        assert "without a matching audit trail" in failed_checks(refused)["period_starts_where_previous_ended"]
        assert skip(client, thin, note="two participants").status_code == 409  # not on top of a forged skip either


def test_an_edited_skip_reason_breaks_the_digest(store_url):
    first, dead, _, _ = checkpoint_ids(store_url)
    with api(store_url) as client:
        assert confirm(client, first).status_code == 200
        assert skip(client, dead, note=REASON).status_code == 200
    execute(store_url, "ALTER TABLE crunch.checkpoint_audit DISABLE TRIGGER checkpoint_audit_append_only",
            f"UPDATE crunch.checkpoint_audit SET note = 'ordered by the board' WHERE checkpoint_id = {dead}",
            "ALTER TABLE crunch.checkpoint_audit ENABLE ALWAYS TRIGGER checkpoint_audit_append_only")
    result = cli(store_url, "audit", "btc_updown")
    assert result.returncode == 1
    assert "(PENDING -> SKIPPED) was changed, or a row before it removed or forged" in result.stdout


def test_the_command_line_says_why_and_skips_with_a_reason(store_url):
    first, dead, _, _ = checkpoint_ids(store_url)
    listed = cli(store_url, "checkpoints", "list", "btc_updown")
    assert listed.returncode == 0, listed.stderr
    assert "CANNOT BE SUBMITTED: some_model_is_paid: no model is paid" in listed.stdout
    assert f"skip it: crunch-dagster checkpoints skip btc_updown {dead} --reason" in listed.stdout

    without = cli(store_url, "checkpoints", "skip", "btc_updown", str(dead))
    assert without.returncode == 2 and "--reason" in without.stderr
    blank = cli(store_url, "checkpoints", "skip", "btc_updown", str(dead), "--reason", " ")
    assert blank.returncode == 1 and "SKIPPED needs the reason" in blank.stderr
    out_of_order = cli(store_url, "checkpoints", "skip", "btc_updown", str(dead), "--reason", REASON)
    assert out_of_order.returncode == 1 and "cannot be skipped" in out_of_order.stderr
    assert f"(#{first}) is still PENDING" in out_of_order.stderr
    payable = cli(store_url, "checkpoints", "skip", "btc_updown", str(first), "--reason", "no")
    assert payable.returncode == 1 and "the checkpoint can be paid; submit it" in payable.stderr

    assert cli(store_url, "checkpoints", "submit", "btc_updown", str(first), "--tx-hash", TX).returncode == 0
    skipped = cli(store_url, "checkpoints", "skip", "btc_updown", str(dead), "--reason", REASON)
    assert skipped.returncode == 0, skipped.stderr
    assert f"checkpoint {dead}: PENDING -> SKIPPED" in skipped.stdout and f"by {getpass.getuser()}" in skipped.stdout
    submitted_again = cli(store_url, "checkpoints", "skip", "btc_updown", str(first), "--reason", "too late")
    assert submitted_again.returncode == 1 and "SKIPPED needs it PENDING" in submitted_again.stderr

    shown = json.loads(cli(store_url, "checkpoints", "show", "btc_updown", str(dead)).stdout)
    assert shown["status"] == "SKIPPED" and shown["skipped"]["reason"] == REASON
    assert [(a["to_status"], a["actor"], a["note"]) for a in shown["audit"]] == [("SKIPPED", getpass.getuser(), REASON)]
    only_skipped = cli(store_url, "checkpoints", "list", "btc_updown", "--status", "SKIPPED")
    assert f"#{dead}" in only_skipped.stdout and f"skipped by {getpass.getuser()} at" in only_skipped.stdout
    assert REASON in only_skipped.stdout and "NOT VERIFIED" not in only_skipped.stdout


def test_a_skipped_checkpoint_is_never_rebuilt(store_url, models_dir):
    """The checkpoint sensor passes it by, and a materialization of its period leaves it as it was,
    even when the data it would be built from changed."""
    first, dead, _, _ = checkpoint_ids(store_url)
    with api(store_url) as client:
        assert confirm(client, first).status_code == 200
        assert skip(client, dead, note=REASON).status_code == 200
    before = query(store_url, "SELECT status, entries, merkle_root, chained_root, updated_at, gate FROM crunch.checkpoints "
                              "WHERE id = :id", {"id": dead})[0]
    # the engine's role rewrites the period's snapshots (it may: it rolls them up) so that a rebuild would differ
    execute(role_url(store_url, "engine"), "UPDATE crunch.snapshots SET value_sum = prediction_count "
                                           "WHERE model_id = 'oracle' AND period_start = :s",
            params={"s": START + timedelta(hours=DEAD_HOUR)})
    defs = _definitions(make_url(store_url).database, models_dir)
    sensor = next(s for s in defs.sensors if s.name == "btc_updown__checkpoint_sensor")
    with dg.instance_for_test() as instance:
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs))
        assert hour_key(START + timedelta(hours=DEAD_HOUR)) not in [r.partition_key for r in tick.run_requests or []]
        result = materialize_one(defs, _spec(), "emission_checkpoints", hour_key(START + timedelta(hours=DEAD_HOUR)),
                                 instance=instance)
        assert result.success
        [event] = result.get_asset_materialization_events()
        assert event.materialization.metadata["status"].value == "SKIPPED"
    after = query(store_url, "SELECT status, entries, merkle_root, chained_root, updated_at, gate FROM crunch.checkpoints "
                             "WHERE id = :id", {"id": dead})[0]
    assert tuple(after) == tuple(before)


def test_the_page_shows_a_skipped_checkpoint_with_its_reason_in_a_browser(store_url):
    """Headless chromium (as tests/api/test_participant_page.py): the skipped period says it pays
    nothing, with the operator's reason; the one that cannot be paid yet says why."""
    from playwright.sync_api import sync_playwright

    from tests.api.test_participant_page import CHROMIUM, LAUNCH_ARGS

    first, dead, thin, _ = checkpoint_ids(store_url)
    with api(store_url) as client:
        assert confirm(client, first).status_code == 200
        assert skip(client, dead, note=REASON).status_code == 200
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            try:
                page = browser.new_page()
                assert page.goto(str(client.base_url) + "/page/btc_updown").status == 200
                skipped = page.locator(f'section.checkpoint[data-checkpoint="{dead}"]')
                assert skipped.locator("h3 .status").inner_text() == "SKIPPED"
                assert skipped.locator(".skip-reason").inner_text() == REASON
                assert "nothing is paid for this period, now or later" in skipped.locator(".skipped").inner_text()
                waiting = page.locator(f'section.checkpoint[data-checkpoint="{thin}"]')
                assert waiting.locator("h3 .status").inner_text() == "PENDING"
                assert "Cannot be paid as built: minimum_field_size" in waiting.locator(".unpayable").inner_text()
                assert page.locator(f'section.checkpoint[data-checkpoint="{first}"] .unpayable').count() == 0
                page.goto(str(client.base_url) + "/page/btc_updown/models/oracle")
                explained = page.locator(f'section.explain[data-checkpoint="{dead}"]')
                assert explained.locator(".skip-reason").inner_text() == REASON
            finally:
                browser.close()

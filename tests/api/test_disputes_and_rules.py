"""The dispute window and disputes (issue 22 section 5) and the rules fingerprint's reads (section 3)
over real HTTP and the CLI, on a copy of the replayed store (two days of real candles, daily
checkpoints).

- An open dispute blocks submission (the gate's `no_open_dispute`, and the transition itself under
  the checkpoint's lock: a dispute recorded while the gate ran still blocks); resolving it lifts
  the block; every step is an append-only row (UPDATE and DELETE refused by a trigger).
- A declared dispute window refuses submission until it has passed since the checkpoint was built.
- The fingerprint is served with the competition, each checkpoint and its recorded document,
  whose RFC 8785 bytes hash to it, and shown on the page."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.api.conftest import ACTOR, START, TOKEN, LiveServer, accounts, auth, replay_spec
from tests.api.test_checkpoints_cli import CLI, _env

TX = "9" * 24 + "DisputedSubmission"


def _competition(url: str, **gate):
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.api import ReportCompetition
    from resources.store.database import CrunchDatabase

    spec = replay_spec()
    if gate:
        spec = replace(spec, gate=replace(spec.gate, **gate))
    # as the API connects: the api role (it writes a dispute only through the database's functions)
    return ReportCompetition(spec, accounts(), CrunchDatabase(role="api", database=make_url(url).database), rules=RULES)


def _serve(url: str, **gate) -> LiveServer:
    from crunch_assets.api import create_app

    return LiveServer(create_app([_competition(url, **gate)], api_token=TOKEN, actor=ACTOR, read_env=False))


def _first_checkpoint(client: httpx.Client) -> dict:
    return sorted(client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"], key=lambda c: c["period_start"])[0]


def test_an_open_dispute_blocks_submission_until_resolved(api_database_url):
    with _serve(api_database_url) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        first = _first_checkpoint(client)
        cid, period_start = first["id"], first["period_start"]
        cycle = (START + timedelta(hours=2)).isoformat()
        body = {"claimant": "alice", "what": "my 02:00 answer was scored against a stale price",
                "cycles": [{"first": cycle, "last": (START + timedelta(hours=2, minutes=5)).isoformat()}]}
        assert client.post(f"/competitions/btc_updown/checkpoints/{cid}/disputes", json=body).status_code == 401
        assert client.post(f"/competitions/btc_updown/checkpoints/{cid}/disputes", json=body, headers=auth("wrong")).status_code == 403
        before_period = datetime.fromisoformat(period_start) - timedelta(minutes=1)
        outside = {**body, "cycles": [{"first": before_period.isoformat(), "last": cycle}]}
        refused = client.post(f"/competitions/btc_updown/checkpoints/{cid}/disputes", json=outside, headers=auth())
        assert refused.status_code == 422 and "not inside checkpoint" in refused.text
        backwards = {**body, "cycles": [{"first": cycle, "last": period_start}]}
        assert client.post(f"/competitions/btc_updown/checkpoints/{cid}/disputes", json=backwards, headers=auth()).status_code == 422
        assert client.post("/competitions/btc_updown/checkpoints/999/disputes", json=body, headers=auth()).status_code == 404
        opened = client.post(f"/competitions/btc_updown/checkpoints/{cid}/disputes", json=body, headers=auth())
        assert opened.status_code == 200, opened.text
        dispute = opened.json()["dispute"]
        assert dispute["claimant"] == "alice" and dispute["opened_by"] == ACTOR and dispute["resolution_id"] is None

        blocked = client.post(f"/competitions/btc_updown/checkpoints/{cid}/confirm", json={"tx_hash": TX}, headers=auth())
        assert blocked.status_code == 409
        reasons = blocked.json()["detail"]["reasons"]
        assert any(r.startswith("no_open_dispute: dispute #") and "by alice" in r for r in reasons), reasons
        listed = client.get(f"/competitions/btc_updown/checkpoints/{cid}/disputes").json()
        assert listed["open"] == 1 and listed["disputes"][0]["what"] == body["what"]
        assert client.get(f"/competitions/btc_updown/checkpoints/{cid}").json()["disputes"][0]["id"] == dispute["id"]

        resolve = {"resolution": "the price was the last observed one within the staleness bound: no change"}
        assert client.post(f"/competitions/btc_updown/checkpoints/{cid}/disputes/999/resolve", json=resolve,
                           headers=auth()).status_code == 404
        resolved = client.post(f"/competitions/btc_updown/checkpoints/{cid}/disputes/{dispute['id']}/resolve", json=resolve,
                               headers=auth())
        assert resolved.status_code == 200 and resolved.json()["dispute"]["resolution"] == resolve["resolution"]
        twice = client.post(f"/competitions/btc_updown/checkpoints/{cid}/disputes/{dispute['id']}/resolve", json=resolve,
                            headers=auth())
        assert twice.status_code == 422 and "already resolved" in twice.text
        submitted = client.post(f"/competitions/btc_updown/checkpoints/{cid}/confirm", json={"tx_hash": TX}, headers=auth())
        assert submitted.status_code == 200, submitted.text
        gate = {c["name"]: c for c in client.get(f"/competitions/btc_updown/checkpoints/{cid}/gate").json()["gate"]["checks"]}
        assert gate["no_open_dispute"]["passed"] and gate["dispute_window_elapsed"]["passed"]
        assert gate["rules_fingerprint_consistent"]["passed"], gate["rules_fingerprint_consistent"]["detail"]
        late = client.post(f"/competitions/btc_updown/checkpoints/{cid}/disputes", json=body, headers=auth())
        assert late.status_code == 409 and late.json()["detail"]["status"] == "SUBMITTED"

    engine = sa.create_engine(api_database_url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT action, dispute_id, actor FROM crunch.checkpoint_disputes ORDER BY id")).fetchall()
        assert [(r.action, r.dispute_id, r.actor) for r in rows] == [("OPENED", None, ACTOR),
                                                                     ("RESOLVED", dispute["id"], ACTOR)]
    for statement in ("UPDATE crunch.checkpoint_disputes SET note = 'rewritten'",
                      "DELETE FROM crunch.checkpoint_disputes",
                      "UPDATE crunch.rules_fingerprints SET cycle_digest = 'x'",
                      "DELETE FROM crunch.rules_fingerprints"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with engine.begin() as connection:
                connection.execute(sa.text(statement))
    engine.dispose()


def test_a_dispute_recorded_while_the_gate_ran_still_blocks_the_transition(api_database_url):
    from crunch_assets import payouts
    from resources.store.payouts import TransitionConflict

    c = _competition(api_database_url)
    checkpoint = min(c.store.checkpoints(), key=lambda cp: cp.period_start)
    gate = payouts.run_gate(c.spec, c.store, checkpoint, c.accounts, rules=c.rules, payouts=c.payouts,
                            ground_truth=c.ground_truth)
    assert gate["passed"], [x for x in gate["checks"] if not x["passed"]]
    payouts.open_dispute(c.spec, c.store, checkpoint.id, claimant="bob", what="late", actor="operator",
                         cycles=[(checkpoint.period_start, checkpoint.period_start)])
    with pytest.raises(TransitionConflict, match="1 open dispute"):  # crunch.advance_checkpoint's own refusal
        c.payouts.transition(checkpoint.id, "SUBMITTED", actor="operator", tx_hash=TX, gate=gate)
    assert c.store.checkpoint_by_id(checkpoint.id).status == "PENDING"


def test_a_declared_dispute_window_refuses_submission_until_it_has_passed(api_database_url):
    from crunch_assets import payouts

    with _serve(api_database_url, dispute_window_seconds=7 * 86400) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        cid = _first_checkpoint(client)["id"]
        refused = client.post(f"/competitions/btc_updown/checkpoints/{cid}/confirm", json={"tx_hash": TX}, headers=auth())
        assert refused.status_code == 409
        assert [r for r in refused.json()["detail"]["reasons"] if r.startswith("dispute_window_elapsed: the dispute "
                                                                               "window ends at")]
    c = _competition(api_database_url, dispute_window_seconds=7 * 86400)
    checkpoint = c.store.checkpoint_by_id(cid)
    ends = checkpoint.updated_at + timedelta(days=7)
    assert not payouts.check_dispute_window(checkpoint, c.spec.gate, ends - timedelta(seconds=1)).passed
    assert payouts.check_dispute_window(checkpoint, c.spec.gate, ends).passed
    assert payouts.check_dispute_window(checkpoint, replace(c.spec.gate, dispute_window_seconds=0), ends).detail \
        .startswith("no dispute window")


def test_the_rules_fingerprint_is_served_and_shown(api_database_url):
    from crunch_assets.fingerprint import canonical_bytes, sha256_hex

    c = _competition(api_database_url)
    fingerprint = c.rules_book.current.fingerprint
    with _serve(api_database_url) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        assert client.get("/competitions").json()["competitions"][0]["rules_fingerprint"] == fingerprint
        rules = client.get("/competitions/btc_updown/rules").json()
        assert rules["fingerprint"] == fingerprint and rules["versions"][0]["effective_from"] is None
        # anyone can hash the document again: sha256 of its RFC 8785 canonical bytes
        assert sha256_hex(canonical_bytes(rules["document"])) == fingerprint
        assert "def brier_skill" in rules["document"]["cycle"]["callables"]["scoring_function"]["source"]
        recorded = client.get(f"/competitions/btc_updown/rules/{fingerprint}").json()
        assert recorded["verified"] and recorded["document"] == rules["document"]
        assert client.get("/competitions/btc_updown/rules/" + "0" * 64).status_code == 404
        assert client.get("/competitions/btc_updown/rules/not-a-fingerprint").status_code == 422
        summary = client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"][0]
        assert summary["rules_fingerprint"] == fingerprint and summary["rules_mixed"] is False
        full = client.get(f"/competitions/btc_updown/checkpoints/{summary['id']}").json()
        assert full["rules"]["scored_under"][0]["fingerprint"] == fingerprint and not full["rules"]["mixed"]
        page = client.get("/").text
        assert f'title="{fingerprint}"' in page and 'id="rules-fingerprint"' in page
        assert page.count(f'<code title="{fingerprint}">') >= 3  # the competition's and each checkpoint's


def test_disputes_on_the_command_line(api_database_url):
    env = _env(api_database_url)
    listed = subprocess.run([CLI, "checkpoints", "list", "btc_updown", "--json"], capture_output=True, text=True,
                            env=env, timeout=300)
    first = min(json.loads(listed.stdout), key=lambda c: c["period_start"])["id"]
    cycle = (START + timedelta(hours=3)).isoformat()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([CLI, "disputes", *args], capture_output=True, text=True, env=env, timeout=300)

    opened = run("open", "btc_updown", str(first), "--claimant", "carol", "--what", "missing cycle",
                 "--cycles", f"{cycle}..{cycle}", "--actor", "ops")
    assert opened.returncode == 0, opened.stderr
    assert "dispute #" in opened.stdout and "OPEN: blocks submission" in opened.stdout
    dispute_id = opened.stdout.split("#", 1)[1].split(" ", 1)[0]
    blocked = subprocess.run([CLI, "checkpoints", "submit", "btc_updown", str(first), "--tx-hash", TX],
                             capture_output=True, text=True, env=env, timeout=300)
    assert blocked.returncode == 1 and "no_open_dispute" in blocked.stderr
    naive = run("open", "btc_updown", str(first), "--claimant", "carol", "--what", "x", "--cycles", "2025-01-07T03:00")
    assert naive.returncode == 2 and "UTC offset" in naive.stderr
    resolved = run("resolve", "btc_updown", str(first), dispute_id, "--resolution", "rechecked: no change")
    assert resolved.returncode == 0 and "resolved by" in resolved.stdout
    listed = json.loads(run("list", "btc_updown", str(first), "--json").stdout)
    assert [(d["claimant"], d["opened_by"], d["resolution"]) for d in listed] == [("carol", "ops", "rechecked: no change")]
    submitted = subprocess.run([CLI, "checkpoints", "submit", "btc_updown", str(first), "--tx-hash", TX],
                               capture_output=True, text=True, env=env, timeout=300)
    assert submitted.returncode == 0, submitted.stderr
    shown = subprocess.run([CLI, "rules", "btc_updown"], capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0 and "rules fingerprint" in shown.stdout

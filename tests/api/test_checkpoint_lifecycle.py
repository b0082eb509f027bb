"""The checkpoint lifecycle through the report API over real HTTP, on a real replay: PENDING ->
SUBMITTED -> CLAIMABLE -> PAID, every step audited, the safety gate blocking what must not be
paid, idempotent repeats, every error code."""

from __future__ import annotations

import threading

import httpx
import pytest
import sqlalchemy as sa

from tests.api.conftest import ACTOR, TOKEN, auth, serve

TX1 = "5" * 20 + "TxHashOfTheFirstSubmission"
TX2 = "0x" + "ab" * 32


def _checkpoint_ids(client: httpx.Client) -> list[int]:
    response = client.get("/competitions/btc_updown/checkpoints")
    assert response.status_code == 200, response.text
    listed = response.json()["checkpoints"]
    return [c["id"] for c in sorted(listed, key=lambda c: c["period_start"])]


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url)


def test_pending_to_paid_is_gated_audited_and_idempotent(live_api, api_database_url):
    _, client = live_api
    first, second = _checkpoint_ids(client)
    submitted = client.post(f"/competitions/btc_updown/checkpoints/{first}/confirm", json={"tx_hash": TX1, "note": "batch 1"},
                            headers=auth())
    assert submitted.status_code == 200, submitted.text
    body = submitted.json()
    assert body["changed"] is True and body["checkpoint"]["status"] == "SUBMITTED"
    assert body["checkpoint"]["tx_hash"] == TX1 and body["checkpoint"]["submitted_at"]
    assert body["audit"]["from_status"] == "PENDING" and body["audit"]["actor"] == ACTOR

    again = client.post(f"/competitions/btc_updown/checkpoints/{first}/confirm", json={"tx_hash": TX1}, headers=auth())
    assert again.status_code == 200 and again.json()["changed"] is False
    assert "nothing changed" in again.json()["message"] and again.json()["audit"] is None

    for status in ("CLAIMABLE", "PAID"):
        moved = client.patch(f"/competitions/btc_updown/checkpoints/{first}/status", json={"status": status}, headers=auth())
        assert moved.status_code == 200, moved.text
        assert moved.json()["changed"] and moved.json()["checkpoint"]["status"] == status
    repeat = client.patch(f"/competitions/btc_updown/checkpoints/{first}/status", json={"status": "PAID"}, headers=auth())
    assert repeat.status_code == 200 and repeat.json()["changed"] is False

    shown = client.get(f"/competitions/btc_updown/checkpoints/{first}").json()
    assert shown["status"] == "PAID" and shown["tx_hash"] == TX1
    assert [(a["from_status"], a["to_status"], a["actor"]) for a in shown["audit"]] == [
        ("PENDING", "SUBMITTED", ACTOR), ("SUBMITTED", "CLAIMABLE", ACTOR), ("CLAIMABLE", "PAID", ACTOR)]
    assert shown["audit"][0]["tx_hash"] == TX1 and shown["audit"][0]["note"] == "batch 1"
    assert shown["gate"]["passed"] is True
    assert {c["name"] for c in shown["gate"]["checks"]} >= {
        "rewards_sum_to_one_billion", "rewards_follow_stored_ranking", "paid_models_are_eligible",
        "each_cruncher_once", "period_starts_where_previous_ended", "nothing_in_period_pending",
        "merkle_root_verifies", "emission_accounts_configured", "payout_recomputes", "snapshots_match_scores",
        "entries_committed"}

    # the second period continues the first, which is now past PENDING: it may be submitted
    assert client.post(f"/competitions/btc_updown/checkpoints/{second}/confirm", json={"tx_hash": TX2}, headers=auth()).status_code == 200

    engine = _engine(api_database_url)
    with engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT status, tx_hash FROM crunch.checkpoints ORDER BY period_start")).fetchall()
        audit_rows = connection.execute(sa.text("SELECT count(*) FROM crunch.checkpoint_audit")).scalar_one()
    assert [tuple(r) for r in stored] == [("PAID", TX1), ("SUBMITTED", TX2)]
    assert audit_rows == 4
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE crunch.checkpoint_audit SET actor = 'someone else'"))
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        with engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM crunch.checkpoint_audit"))
    engine.dispose()


def test_error_codes(live_api, api_database_url):
    _, client = live_api
    first, second = _checkpoint_ids(client)
    confirm = f"/competitions/btc_updown/checkpoints/{first}/confirm"
    status = f"/competitions/btc_updown/checkpoints/{first}/status"
    assert client.post(confirm, json={"tx_hash": TX1}).status_code == 401
    assert client.post(confirm, json={"tx_hash": TX1}, headers=auth("not-the-token")).status_code == 403
    assert client.post("/competitions/btc_updown/checkpoints/999999/confirm", json={"tx_hash": TX1}, headers=auth()).status_code == 404
    assert client.post("/competitions/nope/checkpoints/1/confirm", json={"tx_hash": TX1}, headers=auth()).status_code == 404
    assert client.post(confirm, json={}, headers=auth()).status_code == 422
    assert client.post(confirm, json={"tx_hash": "has spaces in it, not a hash"}, headers=auth()).status_code == 422
    assert client.patch(status, json={"status": "DONE"}, headers=auth()).status_code == 422
    assert client.patch(status, json={"status": "SUBMITTED"}, headers=auth()).status_code == 422  # no tx_hash
    assert client.patch(status, json={"status": "PAID"}, headers=auth()).status_code == 409  # skips two steps
    assert client.patch(status, json={"status": "PENDING"}, headers=auth()).status_code == 409
    # the second period cannot be submitted while the first is PENDING: the gate says why
    refused = client.post(f"/competitions/btc_updown/checkpoints/{second}/confirm", json={"tx_hash": TX2}, headers=auth())
    assert refused.status_code == 409
    assert any("still PENDING" in reason for reason in refused.json()["detail"]["reasons"])
    assert client.post(confirm, json={"tx_hash": TX1}, headers=auth()).status_code == 200
    other_hash = client.post(confirm, json={"tx_hash": TX2}, headers=auth())
    assert other_hash.status_code == 409 and TX1 in other_hash.json()["detail"]["message"]
    assert client.patch(status, json={"status": "PAID"}, headers=auth()).status_code == 409  # SUBMITTED -> PAID
    # nothing the refused calls sent was recorded
    audit = client.get(f"/competitions/btc_updown/checkpoints/{first}/audit").json()["audit"]
    assert [(a["to_status"], a["tx_hash"]) for a in audit] == [("SUBMITTED", TX1)]

    with serve(api_database_url, token=None) as read_only, httpx.Client(base_url=read_only.url, timeout=60) as other:
        disabled = other.post(f"/competitions/btc_updown/checkpoints/{second}/confirm", json={"tx_hash": TX2}, headers=auth())
        assert disabled.status_code == 403 and "disabled" in disabled.json()["detail"]
        assert other.get("/competitions/btc_updown/checkpoints").status_code == 200  # reads stay open


def test_gate_refuses_without_a_crunch_key_and_stores_why(api_database_url):
    with serve(api_database_url, crunch=None) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        first = _checkpoint_ids(client)[0]
        refused = client.post(f"/competitions/btc_updown/checkpoints/{first}/confirm", json={"tx_hash": TX1}, headers=auth())
        assert refused.status_code == 409
        reasons = refused.json()["detail"]["reasons"]
        assert any("CRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY" in reason for reason in reasons), reasons
        shown = client.get(f"/competitions/btc_updown/checkpoints/{first}").json()
        assert shown["status"] == "PENDING" and shown["audit"] == []
        failed = {c["name"] for c in shown["gate"]["checks"] if not c["passed"]}
        assert failed == {"emission_accounts_configured"}


def test_gate_refuses_changed_scores_unsettled_cycles_and_bad_rewards(live_api, api_database_url):
    _, client = live_api
    first = _checkpoint_ids(client)[0]
    engine = _engine(api_database_url)
    with engine.begin() as connection:
        period = connection.execute(sa.text("SELECT period_start, period_end FROM crunch.checkpoints WHERE id = :id"),
                                    {"id": first}).one()
        # a score rewritten after the checkpoint was built, and another removed (its prediction unscored again)
        connection.execute(sa.text(
            "UPDATE crunch.scores SET value = value + 0.5 WHERE id = (SELECT min(id) FROM crunch.scores "
            "WHERE cycle_at >= :s AND cycle_at < :e)"), {"s": period[0], "e": period[1]})
        connection.execute(sa.text(
            "DELETE FROM crunch.scores WHERE id = (SELECT max(id) FROM crunch.scores WHERE cycle_at >= :s AND cycle_at < :e)"),
            {"s": period[0], "e": period[1]})
        # rewards that do not add up, one cruncher twice
        connection.execute(sa.text(
            "UPDATE crunch.checkpoints SET entries = jsonb_set(jsonb_set(entries, '{ranking,0,reward_pct}', '1'), "
            "'{cruncher_rewards}', (entries->'cruncher_rewards') || (entries->'cruncher_rewards'->0)) WHERE id = :id"),
            {"id": first})
    refused = client.post(f"/competitions/btc_updown/checkpoints/{first}/confirm", json={"tx_hash": TX1}, headers=auth())
    assert refused.status_code == 409
    failed = {c["name"] for c in refused.json()["detail"]["gate"]["checks"] if not c["passed"]}
    # the entries no longer hash to what the checkpoint committed to, nor recompute from the snapshots,
    # and the snapshots no longer recompute from the changed scores
    assert failed == {"rewards_sum_to_one_billion", "rewards_follow_stored_ranking", "each_cruncher_once",
                      "nothing_in_period_pending", "merkle_root_verifies", "payout_recomputes", "entries_committed",
                      "snapshots_match_scores"}
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT status FROM crunch.checkpoints WHERE id = :id"), {"id": first}).scalar() == "PENDING"
        assert connection.execute(sa.text("SELECT count(*) FROM crunch.checkpoint_audit")).scalar() == 0
    engine.dispose()


def test_concurrent_submissions_record_exactly_one(live_api, api_database_url):
    _, client = live_api
    first = _checkpoint_ids(client)[0]
    barrier = threading.Barrier(4)
    results: list[tuple[str, int, dict]] = []

    def submit(tx: str) -> None:
        with httpx.Client(base_url=client.base_url, timeout=60) as own:
            barrier.wait()
            response = own.post(f"/competitions/btc_updown/checkpoints/{first}/confirm", json={"tx_hash": tx}, headers=auth())
            results.append((tx, response.status_code, response.json()))

    threads = [threading.Thread(target=submit, args=(tx,)) for tx in (TX1, TX1, TX2, TX2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    changed = [r for r in results if r[1] == 200 and r[2]["changed"]]
    assert len(results) == 4 and len(changed) == 1
    winner = changed[0][0]
    for tx, code, body in results:
        if body is changed[0][2]:
            continue
        assert (code, body.get("changed")) == ((200, False) if tx == winner else (409, None)), (tx, code, body)
    audit = client.get(f"/competitions/btc_updown/checkpoints/{first}/audit").json()["audit"]
    assert [(a["to_status"], a["tx_hash"]) for a in audit] == [("SUBMITTED", winner)]


def test_token_from_the_environment(monkeypatch, api_database_url):
    from crunch_assets.api import create_app
    from tests.api.conftest import LiveServer, report_competition

    monkeypatch.setenv("CRUNCH_API_TOKEN", "environment-token")
    monkeypatch.setenv("CRUNCH_API_ACTOR", "treasury-bot")
    with LiveServer(create_app([report_competition(api_database_url)])) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        first = _checkpoint_ids(client)[0]
        assert client.post(f"/competitions/btc_updown/checkpoints/{first}/confirm", json={"tx_hash": TX1},
                           headers=auth(TOKEN)).status_code == 403
        ok = client.post(f"/competitions/btc_updown/checkpoints/{first}/confirm", json={"tx_hash": TX1},
                         headers=auth("environment-token"))
        assert ok.status_code == 200 and ok.json()["audit"]["actor"] == "treasury-bot"

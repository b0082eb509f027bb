"""`crunch-dagster checkpoints ...` through the project's console script, as real subprocesses on a
copy of the replayed store: the same gate and audit as the API; the actor is the OS user unless
--actor is given."""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from tests.api.conftest import COMPUTE_PUBKEY, CRUNCH_PUBKEY, START, role_env

CLI = str(Path(sys.executable).with_name("crunch-dagster"))
TX = "4" * 24 + "CliSubmission"


def _env(url: str, crunch: str | None = CRUNCH_PUBKEY) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRUNCH_")}
    env.update(role_env(url))
    env.update({
        "CRUNCH_AUTOMATION": "off",
        "CRUNCH_BTC_UPDOWN_START": START.isoformat(), "CRUNCH_BTC_UPDOWN_CHECKPOINT_INTERVAL_SECONDS": "86400",
        "CRUNCH_BTC_UPDOWN_COMPUTE_PROVIDER_PUBKEY": COMPUTE_PUBKEY,
    })
    if crunch:
        env["CRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY"] = crunch
    return env


def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "checkpoints", *args], capture_output=True, text=True, env=env, timeout=300)


def test_checkpoints_from_pending_to_paid_on_the_command_line(api_database_url):
    env = _env(api_database_url)
    listed = _run(env, "list", "btc_updown", "--json")
    assert listed.returncode == 0, listed.stderr
    second, first = [c["id"] for c in json.loads(listed.stdout)]  # newest first
    out_of_order = _run(env, "submit", "btc_updown", str(second), "--tx-hash", TX)
    assert out_of_order.returncode == 1 and "still PENDING" in out_of_order.stderr

    without_key = _run(_env(api_database_url, crunch=None), "submit", "btc_updown", str(first), "--tx-hash", TX)
    assert without_key.returncode == 1 and "CRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY" in without_key.stderr

    submitted = _run(env, "submit", "btc_updown", str(first), "--tx-hash", TX, "--note", "from the CLI")
    assert submitted.returncode == 0, submitted.stderr
    assert "PENDING -> SUBMITTED" in submitted.stdout and f"by {getpass.getuser()}" in submitted.stdout
    again = _run(env, "submit", "btc_updown", str(first), "--tx-hash", TX)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    skipped = _run(env, "advance", "btc_updown", str(first), "PAID")
    assert skipped.returncode == 1 and "needs it CLAIMABLE" in skipped.stderr
    assert _run(env, "advance", "btc_updown", str(first), "CLAIMABLE", "--actor", "treasurer").returncode == 0
    assert _run(env, "advance", "btc_updown", str(first), "PAID").returncode == 0

    shown = _run(env, "show", "btc_updown", str(first))
    assert shown.returncode == 0, shown.stderr
    full = json.loads(shown.stdout)
    assert full["status"] == "PAID" and full["tx_hash"] == TX and full["gate"]["passed"]
    assert [(a["to_status"], a["actor"]) for a in full["audit"]] == [
        ("SUBMITTED", getpass.getuser()), ("CLAIMABLE", "treasurer"), ("PAID", getpass.getuser())]
    cli = json.loads(_run(env, "show", "btc_updown", str(first), "--format", "cli", "--pool", "1000000").stdout)
    assert sorted(cli["rewards"].values()) == [25.0, 25.0, 50.0]
    assert sorted(p["amount"] for p in cli["prizes"]) == [250_000, 250_000, 500_000]
    assert all(p["prize_id"] == f"{first}-{p['model_id']}" for p in cli["prizes"])
    emission = json.loads(_run(env, "show", "btc_updown", str(first), "--format", "emission").stdout)
    assert emission["crunch"] == CRUNCH_PUBKEY and sum(r["reward_pct"] for r in emission["cruncher_rewards"]) == 10**9
    missing = _run(env, "show", "btc_updown", "999")
    assert missing.returncode == 1 and "no checkpoint 999" in missing.stderr
    listed = _run(env, "list", "btc_updown", "--status", "PAID")
    assert listed.returncode == 0 and f"#{first}" in listed.stdout and f"tx {TX}" in listed.stdout

    engine = sa.create_engine(api_database_url)
    with engine.connect() as connection:
        audit = connection.execute(sa.text("SELECT to_status, actor, note FROM crunch.checkpoint_audit ORDER BY id")).fetchall()
    engine.dispose()
    assert [tuple(r) for r in audit] == [("SUBMITTED", getpass.getuser(), "from the CLI"),
                                         ("CLAIMABLE", "treasurer", None), ("PAID", getpass.getuser(), None)]


def test_a_submission_killed_while_waiting_for_the_lock_leaves_nothing(api_database_url):
    """SIGKILL of `checkpoints submit` in the middle of its transition (blocked on the checkpoint's
    row lock held by another session): nothing is recorded, and the next submission goes through."""
    env = _env(api_database_url)
    first = min(c["id"] for c in json.loads(_run(env, "list", "btc_updown", "--json").stdout))
    engine = sa.create_engine(api_database_url)
    blocker = engine.connect()
    transaction = blocker.begin()
    blocker.execute(sa.text("SELECT id FROM crunch.checkpoints WHERE id = :id FOR UPDATE"), {"id": first})
    process = subprocess.Popen([CLI, "checkpoints", "submit", "btc_updown", str(first), "--tx-hash", TX],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # pg_stat_activity is read afresh only outside a transaction: the watcher autocommits
    watcher_engine = sa.create_engine(api_database_url, isolation_level="AUTOCOMMIT")
    waiting = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND wait_event_type = 'Lock' AND query LIKE '%advance_checkpoint%'")
    others = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND pid <> pg_backend_pid() AND state <> 'idle'")
    deadline = time.monotonic() + 120
    try:
        with watcher_engine.connect() as watcher:
            while watcher.execute(waiting).scalar() == 0:  # the gate ran; the transition waits for the lock
                assert process.poll() is None, "the submission ended before it reached the lock"
                assert time.monotonic() < deadline, "the submission never waited for the lock"
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            transaction.rollback()
            blocker.close()
            while watcher.execute(others).scalar():  # the killed client's backend has ended its transaction
                assert time.monotonic() < deadline, "a backend is still busy after the kill"
                time.sleep(0.05)
            stored = watcher.execute(sa.text("SELECT status, tx_hash FROM crunch.checkpoints WHERE id = :id"),
                                     {"id": first}).one()
            audit = watcher.execute(sa.text("SELECT count(*) FROM crunch.checkpoint_audit")).scalar()
    finally:
        if process.poll() is None:
            process.kill()
        blocker.close()
        watcher_engine.dispose()
    assert tuple(stored) == ("PENDING", None) and audit == 0
    again = _run(env, "submit", "btc_updown", str(first), "--tx-hash", TX)
    assert again.returncode == 0 and "PENDING -> SUBMITTED" in again.stdout
    engine.dispose()

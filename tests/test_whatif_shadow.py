"""What-if and shadow entry over real BTC/USD candles (issue 22 section 4): btc_updown's three
quickstarters replayed 03:00-09:00 through the real assets, two 3-hour checkpoint periods.

- whatif with the current spec reproduces each stored checkpoint's shares to the unit (from the
  stored rollups, and rescored from the stored outputs and truth); another emission or scoring
  function gives other shares; neither writes a row (row counts and xmin of every table).
- shadow of a quickstarter's own file in its place equals its stored scores, rank and share; beside
  it (the field holding it twice) the candidate is found to be its copy and paid 0; a candidate
  sees exactly the stored inputs (nothing later); a candidate that raises is paid nothing.
- the CLI commands as real subprocesses."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.api.conftest import COMPUTE_PUBKEY, CRUNCH_PUBKEY, accounts, database_named, role_env

START = datetime(2025, 1, 7, 3, tzinfo=timezone.utc)
END = START + timedelta(hours=6)
PERIODS = [(START, START + timedelta(hours=3)), (START + timedelta(hours=3), END)]
TEMPLATE_DB = "crunch_whatif_template"
QUICKSTARTERS = Path(__file__).resolve().parents[1] / "competitions" / "btc_updown" / "models"
CLI = str(Path(sys.executable).with_name("crunch-dagster"))
_copies = itertools.count()

# Answers a function of exactly the input it was sent, and refuses an input holding anything
# observed after the cycle: what it is paid proves what it saw.
INPUT_ECHO = '''from competitions.btc_updown.model_base import UpDownModel


class Model(UpDownModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        candles = self.latest["candles_1m"]
        if any(c["ts"] + 60 > self.latest["asof_ts"] for c in candles):
            raise RuntimeError("a candle closing after the cycle")
        return {"p_up": (len(candles) * 7919 + int(candles[-1]["close"] * 100)) % 1000 / 1000.0}
'''
RAISES = '''from competitions.btc_updown.model_base import UpDownModel


class Model(UpDownModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        raise ValueError("no idea")
'''


def _spec():
    from competitions.btc_updown.definitions import SPEC

    return replace(SPEC, start=START, checkpoint_interval_seconds=3 * 3600)


def _definitions(url: str, btc_csv: Path):
    from competitions.btc_updown.definitions import build_definitions
    from resources.feeds.csv_replay import CsvReplayFeed
    from resources.store.database import CrunchDatabase

    return build_definitions(spec=_spec(), feed=CsvReplayFeed(path=str(btc_csv), source="csv"),
                             automation_running=False, database=CrunchDatabase(url=url), payout_accounts=accounts())


@pytest.fixture(scope="module")
def template_url(database_url, btc_csv):
    from crunch_assets.replay import replay
    from resources.store.database import dispose_engines

    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {TEMPLATE_DB}"))
    url = database_named(database_url, TEMPLATE_DB)
    replay(_definitions(url, btc_csv), _spec(), START, END)
    dispose_engines()
    yield url
    dispose_engines()
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)"))
    admin.dispose()


@contextlib.contextmanager
def _fresh(database_url: str):
    from resources.store.database import dispose_engines

    name = f"crunch_whatif_{next(_copies)}"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
    try:
        yield database_named(database_url, name)
    finally:
        dispose_engines()
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture(scope="module")
def replayed(database_url, template_url):
    """A copy of the replay shared by this module's tests (none of them may change it: each checks so)."""
    with _fresh(database_url) as url:
        yield url


def _competition(url: str, **runner):
    """As the API serves it: the api role (it reads, and can write nothing here), the competition's
    local runner (`runner`: its settings, e.g. sandbox)."""
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.api.competitions import ReportCompetition
    from crunch_assets.rules import FeedGroundTruth
    from resources.model_runners.local import LocalModelRunner
    from resources.store.database import CrunchDatabase

    return ReportCompetition(_spec(), accounts(), CrunchDatabase(role="api", database=make_url(url).database),
                             rules=RULES, ground_truth=FeedGroundTruth(),
                             model_runner=LocalModelRunner(models_dir=str(QUICKSTARTERS), call_timeout_seconds=10.0,
                                                           **runner))


def table_state(url: str) -> dict[str, tuple[int, int]]:
    """Every crunch table's row count and the sum of its rows' xmin: any write moves one of them."""
    engine = sa.create_engine(url)
    state = {}
    with engine.connect() as connection:
        tables = connection.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'crunch' ORDER BY tablename")).scalars().all()
        for table in tables:
            count, xmins = connection.execute(sa.text(
                f"SELECT count(*), coalesce(sum(xmin::text::bigint), 0) FROM crunch.{table}")).one()
            state[table] = (int(count), int(xmins))
    engine.dispose()
    return state


def _stored(url: str) -> dict:
    c = _competition(url)
    return {(cp.period_start, cp.period_end): {r["model_id"]: r for r in cp.entries["ranking"]}
            for cp in c.store.checkpoints()}


def test_whatif_with_the_current_spec_reproduces_the_stored_checkpoints_and_writes_nothing(replayed):
    from crunch_assets.whatif import Proposal, whatif

    c = _competition(replayed)
    stored = _stored(replayed)
    assert sorted(stored) == PERIODS
    before = table_state(replayed)
    for rescore in (False, True):
        periods = whatif(c.spec, c.rules, c.ground_truth, c.store, c.accounts, Proposal(), START, END, rescore=rescore)
        assert [(p.start, p.end) for p in periods] == PERIODS
        for p in periods:
            assert p.rescored is rescore
            ranking = stored[(p.start, p.end)]
            assert p.after == p.before
            assert {m: (r["rank"], r["reward_pct"], r["score"]) for m, r in ranking.items()} == \
                {m: (a["rank"], a["reward_pct"], a["score"]) for m, a in p.after.items()}
            assert all(row["change_pct"] == 0 for row in p.rows())
            # the whole recomputed ranking (breakdowns included) is the stored one
            assert p.after_entries["ranking"] == [ranking[m] for m in sorted(ranking, key=lambda m: ranking[m]["rank"])]
    assert table_state(replayed) == before


def test_whatif_with_softmax_or_another_scoring_function_changes_shares_and_writes_nothing(replayed):
    from crunch_assets.whatif import Proposal, ProposalError, whatif

    c = _competition(replayed)
    stored = _stored(replayed)
    before = table_state(replayed)
    softmax = Proposal.from_json({"emission": {"kind": "softmax", "temperature": 0.01}})
    periods = whatif(c.spec, c.rules, c.ground_truth, c.store, c.accounts, softmax, START, END)
    for p in periods:
        assert not p.rescored  # the per-cycle rules are the same: the stored rollups are used
        assert sum(a["reward_pct"] for a in p.after.values()) == 10**9
        assert {m: a["rank"] for m, a in p.after.items()} == {m: r["rank"] for m, r in stored[(p.start, p.end)].items()}
        assert [a["reward_pct"] for a in p.after.values()] != [b["reward_pct"] for b in p.before.values()]
        assert "softmax" in p.after_entries["policies"]["emission"]
        assert p.movers(1)[0]["change_pct"] != 0
    rescored = whatif(c.spec, c.rules, c.ground_truth, c.store, c.accounts, Proposal.from_json(
        {"callables": {"scoring_function": "competitions.btc_updown.logic:position_return"}}), START, END)
    for p in rescored:
        assert p.rescored
        scores = {m: a["score"] for m, a in p.after.items()}
        assert all(abs(s) < 0.01 for s in scores.values())  # position x return, not a Brier skill near 0.75
        assert sum(a["reward_pct"] for a in p.after.values()) == 10**9
    assert table_state(replayed) == before
    with pytest.raises(ProposalError, match="emision"):
        Proposal.from_json({"emision": {"kind": "softmax"}})
    with pytest.raises(ProposalError, match="history_seconds cannot change"):
        Proposal.from_json({"history_seconds": 60})
    with pytest.raises(ProposalError, match="output_validator cannot change"):
        Proposal.from_json({"callables": {"output_validator": "x:y"}})
    with pytest.raises(ProposalError, match="temperature"):
        whatif(c.spec, c.rules, c.ground_truth, c.store, c.accounts,
               Proposal.from_json({"emission": {"kind": "softmax", "temperature": -1}}), START, END)


def _scores(url: str, model_id: str) -> dict:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT cycle_at, value FROM crunch.scores WHERE model_id = :m AND cycle_at >= :s AND cycle_at < :e"),
            {"m": model_id, "s": START, "e": END}).fetchall()
    engine.dispose()
    return {at: value for at, value in rows}


def test_shadow_of_a_models_own_file_in_its_place_equals_its_stored_scores_rank_and_share(replayed, tmp_path):
    from crunch_assets.whatif import run_candidate, shadow

    c = _competition(replayed)
    stored = _stored(replayed)
    before = table_state(replayed)
    report = shadow(c.spec, c.rules, c.ground_truth, c.store, c.accounts, QUICKSTARTERS / "trend_following.py",
                    START, END, replaces="trend_following", configured_runner=c.model_runner)
    assert report.candidate_id == "trend_following" and "not in the field twice" in report.field_note
    assert report.cycles_run == 360 and report.statuses == {"scored": 360}
    for p in report.periods:
        mine = stored[(p.start, p.end)]["trend_following"]
        assert (p.candidate["rank"], p.candidate["reward_pct"], p.candidate["score"]) == \
            (mine["rank"], mine["reward_pct"], mine["score"])
        assert p.candidate["breakdown"] == mine["breakdown"]
        assert [(r["rank"], r["reward_pct"]) for r in p.field] == [(r["stored_rank"], r["stored_reward_pct"]) for r in p.field]
    run = run_candidate(c.spec, c.rules, c.ground_truth, c.store, QUICKSTARTERS / "trend_following.py",
                        "trend_following", START, END, c.model_runner)
    assert {s.cycle_at: s.value for s in run.scored} == _scores(replayed, "trend_following")
    assert table_state(replayed) == before


def test_shadow_beside_the_original_is_its_copy_and_the_report_says_the_field_holds_it_twice(replayed):
    from crunch_assets.whatif import shadow

    c = _competition(replayed)
    before = table_state(replayed)
    report = shadow(c.spec, c.rules, c.ground_truth, c.store, c.accounts, QUICKSTARTERS / "trend_following.py",
                    START, END, configured_runner=c.model_runner)
    assert report.candidate_id == "shadow:trend_following" and "plus the candidate" in report.field_note
    for p in report.periods:
        assert p.field_size == 4
        assert p.candidate["reward_pct"] == 0 and not p.candidate["eligible"]
        assert "identical to trend_following" in p.candidate["breakdown"]["unpaid_reason"]
        shares = {r["model_id"]: (r["reward_pct"], r["stored_reward_pct"]) for r in p.field}
        assert all(now == then for model, (now, then) in shares.items() if model != report.candidate_id)
    assert table_state(replayed) == before


def test_shadow_candidate_sees_the_stored_inputs_and_nothing_later_and_a_raising_one_is_paid_nothing(replayed, tmp_path):
    from competitions.btc_updown.logic import brier_skill
    from crunch_assets.whatif import shadow

    c = _competition(replayed)
    echo = tmp_path / "echo.py"
    echo.write_text(INPUT_ECHO)
    report = shadow(c.spec, c.rules, c.ground_truth, c.store, c.accounts, echo, START, START + timedelta(hours=3),
                    configured_runner=c.model_runner)
    assert report.statuses == {"scored": 180}
    cycles = c.store.history.cycles(START, START + timedelta(hours=3), with_inputs=True)
    expected = {}
    for cycle in cycles:
        candles = cycle.raw_data["candles_1m"]
        p_up = (len(candles) * 7919 + int(candles[-1]["close"] * 100)) % 1000 / 1000.0
        expected[cycle.cycle_at.isoformat()] = brier_skill(None, {"p_up": p_up}, cycle.actuals)["value"]
    assert {x["cycle_at"]: x["value"] for x in report.per_cycle} == expected
    assert report.periods[0].candidate["breakdown"]["scored"] == 180

    raises = tmp_path / "raises.py"
    raises.write_text(RAISES)
    failed = shadow(c.spec, c.rules, c.ground_truth, c.store, c.accounts, raises, START, START + timedelta(hours=3),
                    configured_runner=c.model_runner)
    # five failures in a row, then quarantined (not called) for ten minutes, as a live model would be
    assert set(failed.statuses) == {"failed"} and failed.statuses["failed"] == 180
    mine = failed.periods[0].candidate
    assert mine["reward_pct"] == 0 and mine["breakdown"]["unpaid_reason"] == "no scored answer in the period"
    quarantined = [x for x in failed.per_cycle if "quarantined" in (x["reason"] or "")]
    assert quarantined and len(quarantined) < 180
    with pytest.raises(ValueError, match="no whole checkpoint period"):
        shadow(c.spec, c.rules, c.ground_truth, c.store, c.accounts, raises, START, START + timedelta(hours=2))


def _env(url: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRUNCH_")}
    env.update(role_env(url))  # each role's URL: the commands connect as the api role
    env.update({"CRUNCH_AUTOMATION": "off",
                "CRUNCH_BTC_UPDOWN_START": START.isoformat(), "CRUNCH_BTC_UPDOWN_CHECKPOINT_INTERVAL_SECONDS": "10800",
                "CRUNCH_BTC_UPDOWN_CRUNCH_PUBKEY": CRUNCH_PUBKEY, "CRUNCH_BTC_UPDOWN_COMPUTE_PROVIDER_PUBKEY": COMPUTE_PUBKEY})
    return env


def test_whatif_and_shadow_commands(replayed, tmp_path):
    env = _env(replayed)
    before = table_state(replayed)
    stored = _stored(replayed)
    same = tmp_path / "same.json"
    same.write_text("{}")
    run = subprocess.run([CLI, "whatif", "btc_updown", "--spec", str(same), "--from", START.isoformat(), "--to",
                          END.isoformat(), "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    for period in json.loads(run.stdout):
        key = (datetime.fromisoformat(period["period_start"]), datetime.fromisoformat(period["period_end"]))
        assert {m["model_id"]: m["reward_pct_after"] for m in period["models"]} == \
            {m: r["reward_pct"] for m, r in stored[key].items()}
    softmax = tmp_path / "softmax.json"
    softmax.write_text(json.dumps({"emission": {"kind": "softmax", "temperature": 0.01}}))
    printed = subprocess.run([CLI, "whatif", "btc_updown", "--spec", str(softmax), "--from", START.isoformat(), "--to",
                              END.isoformat()], capture_output=True, text=True, env=env, timeout=300)
    assert printed.returncode == 0, printed.stderr
    assert "largest movers" in printed.stdout and "share before" in printed.stdout and "->" in printed.stdout
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"emision": {}}))
    refused = subprocess.run([CLI, "whatif", "btc_updown", "--spec", str(typo), "--from", START.isoformat(), "--to",
                              END.isoformat()], capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 1 and "emision" in refused.stderr and "emission" in refused.stderr

    candidate = subprocess.run([CLI, "shadow", "btc_updown", "--model", str(QUICKSTARTERS / "mean_reversion.py"),
                                "--replaces", "mean_reversion", "--from", START.isoformat(), "--to",
                                (START + timedelta(hours=3)).isoformat(), "--json"],
                               capture_output=True, text=True, env=env, timeout=300)
    assert candidate.returncode == 0, candidate.stderr
    report = json.loads(candidate.stdout)
    mine = stored[PERIODS[0]]["mean_reversion"]
    assert report["periods"][0]["candidate"]["reward_pct"] == mine["reward_pct"]
    assert report["periods"][0]["candidate"]["rank"] == mine["rank"]
    assert table_state(replayed) == before


def test_shadow_entry_over_http_behind_the_token_with_limits(replayed):
    import httpx

    from crunch_assets.api import create_app
    from crunch_assets.whatif import ShadowLimits
    from tests.api.conftest import ACTOR, TOKEN, LiveServer, auth

    c = _competition(replayed)
    stored = _stored(replayed)
    before = table_state(replayed)
    # a real model file, padded past the 16 KB every other mutation may carry
    source = (QUICKSTARTERS / "trend_following.py").read_text() + "\n" + "# padding\n" * 2000
    body = {"model_source": source, "start": START.isoformat(), "end": END.isoformat(), "replaces": "trend_following"}

    def serve(limits):
        return LiveServer(create_app([c], api_token=TOKEN, actor=ACTOR, read_env=False, shadow=limits))

    with serve(ShadowLimits(max_hours=6, max_runtime_seconds=300)) as server, \
            httpx.Client(base_url=server.url, timeout=300) as client:
        assert client.post("/reports/shadow", json=body).status_code == 401
        assert client.post("/reports/shadow", json=body, headers=auth("wrong")).status_code == 403
        answered = client.post("/reports/shadow", json=body, headers=auth())
        assert answered.status_code == 200, answered.text
        report = answered.json()
        assert report["requested_by"] == ACTOR and report["limits"]["max_hours"] == 6
        for period, (start, end) in zip(report["periods"], PERIODS):
            mine = stored[(start, end)]["trend_following"]
            assert (period["candidate"]["rank"], period["candidate"]["reward_pct"]) == (mine["rank"], mine["reward_pct"])
        naive = client.post("/reports/shadow", json={**body, "start": "2025-01-07T03:00:00"}, headers=auth())
        assert naive.status_code == 422
        unknown = client.post("/reports/shadow", json={**body, "replaces": "nobody"}, headers=auth())
        assert unknown.status_code == 422 and "no model 'nobody'" in unknown.text
    with serve(ShadowLimits(max_hours=3, max_runtime_seconds=300)) as server, \
            httpx.Client(base_url=server.url, timeout=300) as client:
        too_long = client.post("/reports/shadow", json=body, headers=auth())
        assert too_long.status_code == 422 and "over the limit of 3 h" in too_long.text
    with serve(ShadowLimits(max_hours=6, max_runtime_seconds=0.001)) as server, \
            httpx.Client(base_url=server.url, timeout=300) as client:
        too_slow = client.post("/reports/shadow", json=body, headers=auth())
        assert too_slow.status_code == 422 and "passed its runtime limit" in too_slow.text
    with serve(None) as server, httpx.Client(base_url=server.url, timeout=300) as client:
        assert client.post("/reports/shadow", json=body, headers=auth()).status_code == 413  # not enabled: 16 KB
        small = {**body, "model_source": "pass"}
        disabled = client.post("/reports/shadow", json=small, headers=auth())
        assert disabled.status_code == 404 and "CRUNCH_API_SHADOW=on" in disabled.text
    assert table_state(replayed) == before


def test_shadow_settings_are_refused_by_name_when_wrong():
    from crunch_assets.api.app import shadow_limits_from_env
    from crunch_assets.settings import SettingsError
    from crunch_assets.whatif import ShadowLimits

    assert shadow_limits_from_env({}) is None
    assert shadow_limits_from_env({"CRUNCH_API_SHADOW": "off"}) is None
    assert shadow_limits_from_env({"CRUNCH_API_SHADOW": "on"}) == ShadowLimits()
    assert shadow_limits_from_env({"CRUNCH_API_SHADOW": "on", "CRUNCH_API_SHADOW_MAX_HOURS": "24"}).max_hours == 24
    with pytest.raises(SettingsError, match="CRUNCH_API_SHADOW='maybe'"):
        shadow_limits_from_env({"CRUNCH_API_SHADOW": "maybe"})
    with pytest.raises(SettingsError, match="CRUNCH_API_SHADOW_MAX_SECONDS='-5'"):
        shadow_limits_from_env({"CRUNCH_API_SHADOW": "on", "CRUNCH_API_SHADOW_MAX_SECONDS": "-5"})


# A candidate that looks for what the API process holds: its environment (the operator token, the
# database URLs), any process's environment it can read, the database's socket and port, the
# checkout. It answers only if it finds none of them, and raises naming them otherwise.
PROBE = '''import glob
import os
import socket

from competitions.btc_updown.model_base import UpDownModel

TOKEN = {token!r}
SOCKET_DIR = {socket_dir!r}
TCP = {tcp!r}
CHECKOUT_FILE = {checkout_file!r}


def _leaks():
    found = [f"environment {{key}}" for key, value in os.environ.items()
             if key.startswith("CRUNCH") or TOKEN in value or "postgres" in value or "://" in value]
    for path in glob.glob("/proc/[0-9]*/environ"):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        if TOKEN.encode() in data or b"postgres" in data:
            found.append(path)
    if SOCKET_DIR and (os.path.exists(SOCKET_DIR) or glob.glob(os.path.join(SOCKET_DIR, ".s.PGSQL.*"))):
        found.append(f"the database socket directory {{SOCKET_DIR}}")
    if TCP:
        connection = socket.socket()
        connection.settimeout(2)
        try:
            connection.connect(tuple(TCP))
            found.append(f"the database at {{TCP}}")
        except OSError:
            pass
        finally:
            connection.close()
    if os.path.exists(CHECKOUT_FILE):
        found.append("the checkout")
    return found


LEAKS = _leaks()


class Model(UpDownModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        if LEAKS:
            raise RuntimeError("readable: " + "; ".join(LEAKS))
        return {{"p_up": 0.5}}
'''


def _probe(token: str) -> str:
    url = make_url(os.environ["CRUNCH_API_DATABASE_URL"])
    socket_dir = url.query.get("host")
    tcp = None if socket_dir else [url.host or "127.0.0.1", url.port or 5432]
    return PROBE.format(token=token, socket_dir=socket_dir, tcp=tcp,
                        checkout_file=str(Path(__file__).resolve().parents[1] / "README.md"))


def test_the_shadow_entry_runs_the_candidate_in_the_sandbox_with_nothing_of_the_api_process(replayed, monkeypatch,
                                                                                            tmp_path):
    """The API process holds the operator token and the database URLs in its environment, and its
    host's loopback reaches the database: a candidate posted to the shadow entry runs in the model
    sandbox and finds none of it (nor the checkout). The process's own environment is left as it
    was. A deployment whose local models run without the sandbox refuses the entry (409)."""
    import httpx

    from crunch_assets.api import create_app
    from crunch_assets.whatif import ShadowLimits, ShadowRefused, shadow
    from tests.api.conftest import LiveServer, auth

    token = "a-token-no-model-may-read-123"
    monkeypatch.setenv("CRUNCH_API_TOKEN", token)
    monkeypatch.setenv("CRUNCH_API_SHADOW", "on")
    app = create_app([_competition(replayed)])
    assert os.environ["CRUNCH_API_TOKEN"] == token  # nothing of the process's environment is changed
    before = table_state(replayed)
    body = {"model_source": _probe(token), "start": START.isoformat(), "end": (START + timedelta(hours=3)).isoformat()}
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=300) as client:
        report = client.post("/reports/shadow", json=body, headers=auth(token))
        assert report.status_code == 200, report.text
        assert report.json()["statuses"] == {"scored": 180}
        assert token not in report.text and "postgres" not in report.text
    assert table_state(replayed) == before

    # the same probe without the sandbox finds what it looks for (the check above can fail)
    unsandboxed = _competition(replayed, sandbox="off")
    candidate = tmp_path / "probe.py"
    candidate.write_text(_probe(token))
    found = shadow(unsandboxed.spec, unsandboxed.rules, unsandboxed.ground_truth, unsandboxed.store,
                   unsandboxed.accounts, candidate, START, START + timedelta(hours=3),
                   configured_runner=unsandboxed.model_runner)
    assert found.statuses == {"failed": 180}
    reason = found.per_cycle[0]["reason"]
    assert "readable: " in reason and "the checkout" in reason and "the database" in reason, reason
    with pytest.raises(ShadowRefused, match="sandbox='off'"):
        shadow(unsandboxed.spec, unsandboxed.rules, unsandboxed.ground_truth, unsandboxed.store, unsandboxed.accounts,
               candidate, START, START + timedelta(hours=3), configured_runner=unsandboxed.model_runner,
               require_sandbox=True)
    refusing = create_app([unsandboxed], api_token=token, read_env=False,
                          shadow=ShadowLimits(max_hours=6, max_runtime_seconds=300))
    with LiveServer(refusing) as server, httpx.Client(base_url=server.url, timeout=300) as client:
        refused = client.post("/reports/shadow", json=body, headers=auth(token))
        assert refused.status_code == 409 and "sandbox='off'" in refused.text


def test_a_candidate_runs_under_the_competitions_sandbox_and_limits():
    from crunch_assets.whatif import LOCAL_RUNNER_SETTINGS, _runner_for, candidate_sandboxed
    from resources.model_runners.local import LocalModelRunner
    from resources.model_runners.orchestrator import OrchestratorModelRunner

    configured = LocalModelRunner(models_dir=str(QUICKSTARTERS), call_timeout_seconds=3.0, memory_limit_mb=300,
                                  max_processes=9, max_open_files=40, sandbox_tmp_mb=5, startup_attempts=2,
                                  sandbox_read_only_paths=["/usr/share"], sandbox_first_uid=2_000_000)
    runner = _runner_for(Path("/nonexistent"), configured)
    assert runner.models_dir == "/nonexistent" and runner.call_timeout_seconds == 3.0
    assert {name: getattr(runner, name) for name in LOCAL_RUNNER_SETTINGS} == \
        {name: getattr(configured, name) for name in LOCAL_RUNNER_SETTINGS}
    assert candidate_sandboxed(configured) and not candidate_sandboxed(configured.model_copy(update={"sandbox": "off"}))
    assert _runner_for(Path("/nonexistent"), None).sandbox == "on"
    assert candidate_sandboxed(OrchestratorModelRunner.model_construct())

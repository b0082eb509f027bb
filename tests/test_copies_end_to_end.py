"""Copy detection over real BTC/USD candles, through the real assets: btc_updown's quickstarters,
plus a model file that is trend_following verbatim and one that repeats trend_following's forecast
of the cycle before, both joining an hour after the quickstarters. The checkpoint pays each copy 0
and trend_following keeps the share of a three-model field (issue: the copy was paid like the
original); under the "flag" policy the gate refuses the checkpoint until the operator resolves the
cluster through the audited API call over real HTTP; the page explains it.

The replay: 02:00-03:00 the quickstarters alone (so the registry saw trend_following first), then
03:00-06:00 with the two copies; checkpoints of 00:00-03:00 and 03:00-06:00."""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.api.conftest import ACTOR, TOKEN, LiveServer, accounts, auth, database_named, role_env
from tests.rewards_fixtures import hour_key, materialize_hours, materialize_one

QUICKSTARTERS = Path(__file__).resolve().parents[1] / "competitions" / "btc_updown" / "models"
FIRST_HOUR = datetime(2025, 1, 7, 2, tzinfo=timezone.utc)  # the quickstarters alone
PERIOD_START = datetime(2025, 1, 7, 3, tzinfo=timezone.utc)  # the copies join: a 3-hour checkpoint period
PERIOD_END = PERIOD_START + timedelta(hours=3)
H = timedelta(hours=1)
TEMPLATE_DB = "crunch_copies_template"
TX = "5" * 20 + "CopyClusterResolvedTx"

# Returns trend_following's forecast of the cycle before: trend_following over the candles it saw
# then (the last candle left out), i.e. its published forecast, one cycle late.
LAGGED_MODEL = '''from competitions.btc_updown.model_base import UpDownModel


class Model(UpDownModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        import math

        closes = self.closes()[:-1][-8:]
        if len(closes) < 3:
            return {"p_up": 0.5}
        signal = 0.6 * (closes[-1] - closes[0]) / closes[0]
        return {"p_up": 0.5 + 0.5 * math.tanh(signal * 400.0)}
'''


def _spec(policy: str = "pay_first"):
    from competitions.btc_updown.definitions import SPEC

    return replace(SPEC, start=FIRST_HOUR, checkpoint_interval_seconds=3 * 3600,
                   copy_detection=replace(SPEC.copy_detection, policy=policy))


def _definitions(spec, models_dir: Path, url: str, btc_csv: Path):
    from competitions.btc_updown.definitions import build_definitions
    from resources.feeds.csv_replay import CsvReplayFeed
    from resources.model_runners.local import LocalModelRunner
    from resources.store.database import CrunchDatabase

    return build_definitions(spec=spec, feed=CsvReplayFeed(path=str(btc_csv), source="csv"), automation_running=False,
                             model_runner=LocalModelRunner(models_dir=str(models_dir), call_timeout_seconds=10.0),
                             database=CrunchDatabase(url=url), payout_accounts=accounts())


@pytest.fixture(scope="module")
def template_url(database_url, btc_csv, tmp_path_factory):
    """A database holding hour 02:00 with the quickstarters and 03:00-06:00 with the copies, its
    checkpoint built under the default policy; copied for each test."""
    from resources.store.database import dispose_engines

    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {TEMPLATE_DB}"))
    url = database_named(database_url, TEMPLATE_DB)
    alone = tmp_path_factory.mktemp("quickstarters")
    shutil.copytree(QUICKSTARTERS, alone, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    joined = tmp_path_factory.mktemp("with_copies")
    shutil.copytree(QUICKSTARTERS, joined, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(QUICKSTARTERS / "trend_following.py", joined / "trend_copy.py")  # the model file, verbatim
    (joined / "trend_lagged.py").write_text(LAGGED_MODEL)
    spec = _spec()
    first = _definitions(spec, alone, url, btc_csv)
    materialize_hours(first, spec, ["feed_records"], FIRST_HOUR, PERIOD_END)  # up to the last resolutions
    materialize_hours(first, spec, ["predictions", "scores"], FIRST_HOUR, FIRST_HOUR)
    later = _definitions(spec, joined, url, btc_csv)
    materialize_hours(later, spec, ["predictions", "scores"], PERIOD_START, PERIOD_END - H)
    materialize_one(later, spec, "snapshots", "2025-01-07")
    for period in (PERIOD_START - 3 * H, PERIOD_START):  # the period before (quickstarters only), then this one
        assert materialize_one(later, spec, "emission_checkpoints", hour_key(period)).success
    dispose_engines()
    yield {"url": url, "models": joined}
    dispose_engines()
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)"))
    admin.dispose()


_copies = iter(range(10**6))


@contextlib.contextmanager
def _fresh(database_url: str):
    from resources.store.database import dispose_engines

    name = f"crunch_copies_{next(_copies)}"
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


@pytest.fixture
def replayed(database_url, template_url):
    with _fresh(database_url) as url:
        yield {"url": url, "models": template_url["models"]}


def _store(url: str):
    from resources.store.competition import CompetitionStore
    from resources.store.database import engine_for

    return CompetitionStore(engine_for(url), "btc_updown")


def _ranking(url: str) -> dict[str, dict]:
    checkpoint = _store(url).checkpoint(PERIOD_START, PERIOD_END)
    assert checkpoint is not None
    return {r["model_id"]: r for r in checkpoint.entries["ranking"]}


def _trend_outputs(url: str) -> dict[datetime, float]:
    with sa.create_engine(url).connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT cycle_at, (inference_output->>'p_up')::float FROM crunch.predictions "
            "WHERE model_id = 'trend_following' AND status = 'PENDING' AND cycle_at >= :start AND cycle_at < :end"),
            {"start": PERIOD_START, "end": PERIOD_END}).fetchall()
    return dict(rows)


def test_a_copy_of_trend_following_is_paid_nothing_and_the_original_keeps_its_share(replayed, btc_csv):
    url = replayed["url"]
    ranking = _ranking(url)
    checkpoint = _store(url).checkpoint(PERIOD_START, PERIOD_END)
    [cluster] = checkpoint.entries["copy_clusters"]
    assert [m["model_id"] for m in cluster["members"]] == ["trend_copy", "trend_following", "trend_lagged"]
    assert cluster["original"] == "trend_following" and cluster["status"] == "resolved"
    assert cluster["paid"] == ["trend_following"] and cluster["resolved_by"] == "policy"
    roles = {m["model_id"]: m for m in cluster["members"]}
    answered = sum(1 for p in _trend_outputs(url).values() if round(p, 6) != 0.5)  # the neutral answer never counts
    assert answered > 170
    assert roles["trend_copy"]["evidence"] == f"identical to trend_following on 100 % of {answered} cycles"
    assert re.fullmatch(r"repeats trend_following's output of 1 cycle\(s\) earlier on (9\d|100) % of \d+ cycles",
                        roles["trend_lagged"]["evidence"]), roles["trend_lagged"]["evidence"]
    assert roles["trend_lagged"]["role"] == "copy" and roles["trend_following"]["role"] == "original"
    # the copies are ranked and shown, paid nothing, with the reason
    for copy in ("trend_copy", "trend_lagged"):
        row = ranking[copy]
        assert row["reward_pct"] == 0 and not row["eligible"]
        assert row["breakdown"]["unpaid_reason"].startswith("copy: ")
        assert "paid once, to trend_following" in row["breakdown"]["unpaid_reason"]
        assert row["breakdown"]["copy_cluster"]["cluster"] == cluster["cluster"]
    assert ranking["trend_copy"]["score"] == ranking["trend_following"]["score"]
    # the three quickstarters share the pool as a field of three (tiered: 500M / 250M / 250M)
    paid = sorted(((r["rank"], m, r["reward_pct"]) for m, r in ranking.items() if r["reward_pct"]))
    assert [m for _, m, _ in paid] == sorted(["trend_following", "mean_reversion", "gaussian_density"],
                                             key=lambda m: ranking[m]["rank"])
    assert [reward for _, _, reward in paid] == [500_000_000, 250_000_000, 250_000_000]
    assert "copy" in checkpoint.entries["policies"]["copy_detection"]
    # stored per checkpoint period, the same as the checkpoint shows
    assert _store(url).copies.clusters(PERIOD_START, PERIOD_END) == checkpoint.entries["copy_clusters"]

    assert [(m, r["rank"], r["reward_pct"]) for m, r in sorted(ranking.items(), key=lambda i: i[1]["rank"])] == [
        ("mean_reversion", 1, 500_000_000), ("gaussian_density", 2, 250_000_000), ("trend_following", 3, 250_000_000),
        ("trend_lagged", 4, 0), ("trend_copy", 5, 0)]

    # the outcome, with detection off: the copy is paid 150,000,000, the same as the original
    off = _definitions(_spec("off"), replayed["models"], url, btc_csv)
    assert materialize_one(off, _spec("off"), "emission_checkpoints", hour_key(PERIOD_START)).success
    unguarded = _ranking(url)
    assert unguarded["trend_copy"]["reward_pct"] == unguarded["trend_following"]["reward_pct"] == 150_000_000
    assert unguarded["trend_lagged"]["reward_pct"] == 150_000_000
    assert _store(url).checkpoint(PERIOD_START, PERIOD_END).entries["copy_clusters"] == []
    assert _store(url).copies.clusters(PERIOD_START, PERIOD_END) == []


def test_the_same_clusters_when_the_gate_recomputes_them(replayed, btc_csv):
    """The checkpoint's clusters are a function of the stored data: rebuilding gives the same
    entries, and the stored checkpoint is untouched (no new row version)."""
    from crunch_assets.defs.checkpoints.assets import build_checkpoint
    from crunch_assets.copies import period_report

    url = replayed["url"]
    spec = _spec()
    stored = _store(url).checkpoint(PERIOD_START, PERIOD_END)
    defs = _definitions(spec, replayed["models"], url, btc_csv)
    rebuilt = build_checkpoint(spec, defs.resources["rules"], _store(url), accounts(), PERIOD_START, PERIOD_END)
    assert rebuilt.entries == stored.entries
    again = period_report(spec, _store(url), PERIOD_START, PERIOD_END)
    assert again.entries() == stored.entries["copy_clusters"]
    result = materialize_one(defs, spec, "emission_checkpoints", hour_key(PERIOD_START))
    assert _store(url).checkpoint(PERIOD_START, PERIOD_END).updated_at == stored.updated_at
    [materialization] = result.asset_materializations_for_node("btc_updown__emission_checkpoints")
    key = stored.entries["copy_clusters"][0]["cluster"]
    assert materialization.metadata["copy_clusters"].value == [
        f"{key}: trend_copy, trend_following, trend_lagged; pays trend_following (resolved)"]


def _serve(url: str, spec):
    """The report API as `crunch-dagster api` builds it: connected as the api role (reads, and the
    database's checkpoint and resolution functions), with the rules the gate recomputes with."""
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.api import ReportCompetition, create_app
    from resources.store.database import CrunchDatabase

    competition = ReportCompetition(spec, accounts(), CrunchDatabase(role="api", database=make_url(url).database), RULES)
    return LiveServer(create_app([competition], api_token=TOKEN, actor=ACTOR, read_env=False))


def test_flag_only_blocks_the_gate_until_the_operator_resolves_the_cluster(replayed, btc_csv):
    url = replayed["url"]
    spec = _spec("flag")
    defs = _definitions(spec, replayed["models"], url, btc_csv)
    # both periods built under the policy the gate recomputes them with (their entries name it)
    for period in (PERIOD_START - 3 * H, PERIOD_START):
        assert materialize_one(defs, spec, "emission_checkpoints", hour_key(period)).success
    flagged = _ranking(url)
    assert flagged["trend_copy"]["reward_pct"] > 0  # flag only: nobody is excluded before the operator decides
    checkpoint_id = _store(url).checkpoint(PERIOD_START, PERIOD_END).id
    previous = _store(url).previous_checkpoint(PERIOD_START)
    with _serve(url, spec) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        # the period before has no copy (the copies joined at its end): it passes the gate, in order
        first = client.post(f"/competitions/btc_updown/checkpoints/{previous.id}/confirm", json={"tx_hash": TX + "0"}, headers=auth())
        assert first.status_code == 200, first.text
        refused = client.post(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/confirm", json={"tx_hash": TX}, headers=auth())
        assert refused.status_code == 409, refused.text
        reasons = refused.json()["detail"]["reasons"]
        [reason] = [r for r in reasons if r.startswith("no_unresolved_copy_cluster")]
        listed = client.get(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/copy-clusters").json()
        [cluster] = listed["copy_clusters"]
        key = cluster["cluster"]
        assert cluster["status"] == "unresolved" and key in reason and "resolve-copy" in reason
        assert "p_up" not in str(listed["copy_clusters"])  # ids, counts and fractions: never an output

        path = f"/competitions/btc_updown/checkpoints/{checkpoint_id}/copy-clusters/{key}/resolve"
        assert client.post(path, json={"pay": "trend_following"}).status_code == 401
        assert client.post(path, json={"pay": "trend_following"}, headers=auth("wrong")).status_code == 403
        both = client.post(path, json={"pay": "trend_following", "pay_all": True}, headers=auth())
        assert both.status_code == 422 and "either" in both.text
        stranger = client.post(path, json={"pay": "mean_reversion"}, headers=auth())
        assert stranger.status_code == 422 and "not a member" in stranger.text
        unknown = client.post(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/copy-clusters/{'0' * 16}/resolve",
                              json={"pay_all": True}, headers=auth())
        assert unknown.status_code == 404 and key in unknown.text
        extra = client.post(path, json={"pay": "trend_following", "paid": "x"}, headers=auth())
        assert extra.status_code == 422

        resolved = client.post(path, json={"pay": "trend_following", "note": "verbatim copy"}, headers=auth())
        assert resolved.status_code == 200, resolved.text
        resolution = resolved.json()["resolution"]
        assert (resolution["decision"], resolution["paid_model_id"], resolution["actor"]) == \
            ("pay_one", "trend_following", ACTOR)
        # recorded, not applied yet: the stored checkpoint still pays the copy, and the gate says so
        stale = client.post(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/confirm", json={"tx_hash": TX}, headers=auth())
        assert stale.status_code == 409 and f"was resolved (#{resolution['id']}) after the checkpoint was built" \
            in stale.text

        # the checkpoint sensor sees the period's data change and asks for a rebuild
        sensor = next(s for s in defs.sensors if s.name == "btc_updown__checkpoint_sensor")
        tick = sensor.evaluate_tick(dg.build_sensor_context(resources=defs.resources, definitions=defs))
        assert [r.partition_key for r in tick.run_requests] == [hour_key(PERIOD_START)]
        assert str(resolution["id"]) in tick.run_requests[0].run_key
        assert materialize_one(defs, spec, "emission_checkpoints", hour_key(PERIOD_START)).success
        applied = _ranking(url)
        assert applied["trend_copy"]["reward_pct"] == 0 and applied["trend_lagged"]["reward_pct"] == 0
        assert "the operator's resolution" in applied["trend_copy"]["breakdown"]["unpaid_reason"]

        submitted = client.post(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/confirm", json={"tx_hash": TX}, headers=auth())
        assert submitted.status_code == 200, submitted.text
        gate = {c["name"]: c for c in client.get(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/gate").json()["gate"]["checks"]}
        assert gate["no_unresolved_copy_cluster"]["passed"]
        # paid money does not move: no resolution past PENDING
        late = client.post(path, json={"pay_all": True}, headers=auth())
        assert late.status_code == 409 and "SUBMITTED" in late.text
        history = client.get(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/copy-clusters").json()["resolutions"]
        assert [(r["decision"], r["note"]) for r in history] == [("pay_one", "verbatim copy")]
    # the audit is append-only, even for a database console
    with sa.create_engine(url).connect() as connection:
        with pytest.raises(sa.exc.InternalError, match="append-only"):
            connection.execute(sa.text("UPDATE crunch.copy_resolutions SET paid_model_id = 'trend_copy'"))


def test_a_resolution_recorded_while_the_gate_runs_stops_the_submission(replayed):
    """The gate passes the checkpoint as the policy resolved it; before the submission lands, the
    operator records another decision. Submitting with the gate result from before must be refused
    (it was a payout the operator had just overruled); run again, the gate says to rebuild."""
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.payouts import GateFailed, advance, run_gate
    from resources.store.database import CrunchDatabase
    from resources.store.payouts import PayoutStore, TransitionConflict

    api = CrunchDatabase(role="api", database=make_url(replayed["url"]).database)
    spec, store, payouts = _spec(), api.competition("btc_updown"), PayoutStore(api.engine, "btc_updown")
    previous = store.previous_checkpoint(PERIOD_START)
    advance(spec, store, payouts, accounts(), previous.id, "SUBMITTED", actor=ACTOR, tx_hash=TX + "0", rules=RULES)
    checkpoint = store.checkpoint(PERIOD_START, PERIOD_END)
    gate = run_gate(spec, store, checkpoint, accounts(), rules=RULES, payouts=payouts)
    assert gate["passed"], [c for c in gate["checks"] if not c["passed"]]
    [cluster] = store.copies.clusters(PERIOD_START, PERIOD_END)
    assert cluster["paid"] == ["trend_following"]
    store.copies.record_resolution(checkpoint.id, cluster["cluster"], "pay_all", None, actor=ACTOR,
                                   note="two honest models")
    with pytest.raises(TransitionConflict, match="run the transition again"):
        payouts.transition(checkpoint.id, "SUBMITTED", actor=ACTOR, tx_hash=TX, gate=gate)
    assert store.checkpoint_by_id(checkpoint.id).status == "PENDING"
    with pytest.raises(GateFailed, match="after the checkpoint was built"):
        advance(spec, store, payouts, accounts(), checkpoint.id, "SUBMITTED", actor=ACTOR, tx_hash=TX, rules=RULES)


def test_the_cli_resolves_a_cluster_and_refuses_a_bad_request(replayed, btc_csv, monkeypatch):
    from click.testing import CliRunner

    from crunch_assets.cli import main

    url = replayed["url"]
    for name, value in role_env(url).items():  # every role's URL on the test's database, as a deployment sets them
        monkeypatch.setenv(name, value)
    checkpoint_id = _store(url).checkpoint(PERIOD_START, PERIOD_END).id
    key = _store(url).copies.clusters(PERIOD_START, PERIOD_END)[0]["cluster"]
    runner = CliRunner()
    bad = runner.invoke(main, ["checkpoints", "resolve-copy", "btc_updown", str(checkpoint_id), key])
    assert bad.exit_code == 1 and "either the one model" in bad.output
    ok = runner.invoke(main, ["checkpoints", "resolve-copy", "btc_updown", str(checkpoint_id), key, "--pay-all",
                              "--actor", "alice", "--note", "same team, two honest models"])
    assert ok.exit_code == 0, ok.output
    assert f"cluster {key} (trend_copy, trend_following, trend_lagged)" in ok.output and "pay every member" in ok.output
    [row] = _store(url).copies.resolution_history(checkpoint_id)
    assert (row.decision, row.actor, row.note) == ("pay_all", "alice", "same team, two honest models")


@pytest.fixture(scope="module")
def browser():
    from tests.api.test_participant_page import CHROMIUM, LAUNCH_ARGS

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: scripts/test installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield instance
        instance.close()


def test_the_page_says_which_model_a_copy_is_identical_to(replayed, browser, tmp_path):
    url = replayed["url"]
    checkpoint_id = _store(url).checkpoint(PERIOD_START, PERIOD_END).id
    context = browser.new_context(viewport={"width": 1100, "height": 1400})
    page = context.new_page()
    try:
        with _serve(url, _spec()) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            assert page.goto(server.url + "/page/btc_updown/models/trend_copy").status == 200
            explained = page.locator(f'section.explain[data-checkpoint="{checkpoint_id}"]')
            copy = explained.locator("li.copy")
            assert copy.get_attribute("data-role") == "copy"
            assert re.search(r"identical to trend_following on 100 % of \d+ cycles", copy.inner_text())
            assert "the cluster pays trend_following" in copy.inner_text()
            assert explained.locator(".reward").get_attribute("data-reward-pct") == "0"
            assert "not paid: copy: identical to trend_following" in explained.inner_text()
            assert page.goto(server.url + "/").status == 200
            split = page.locator(f'section.checkpoint[data-checkpoint="{checkpoint_id}"]')
            row = split.locator('tr[data-model="trend_lagged"]')
            assert re.fullmatch(r"repeats trend_following's output of 1 cycle\(s\) earlier on \d+ % of \d+ cycles",
                                row.locator(".copy").inner_text())
            assert split.locator('tr[data-model="mean_reversion"] .copy').count() == 0
            page.screenshot(path=str(tmp_path / "copies_front_page.png"), full_page=True)
            breakdown = client.get(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/models/trend_lagged/breakdown").json()
            assert breakdown["reward_pct"] == 0 and breakdown["breakdown"]["copy_cluster"]["role"] == "copy"
    finally:
        context.close()

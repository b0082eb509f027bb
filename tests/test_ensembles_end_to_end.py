"""btc_updown with an ensemble, its metrics and the contribution-weighted emission, replayed over real
BTC/USD candles through the real assets, the real database, the report API over real HTTP and the
page in a real browser.

The field, 03:00-06:00 UTC on 2025-01-07 (a 3-hour checkpoint period, 180 cycles): trend_following
(a quickstarter), `leader` (confident, right on about 65 % of the cycles), `leader_copy` (the
leader's answer plus 0.001: not caught by copy detection, which rounds to 6 decimals), `independent`
(as confident, right on about 60 % of other cycles: worse alone than the leader), and `coin` (0.5).
The leader and its copy embed which cycles they get right, computed here from the candles.

What is checked:
- every stored ensemble output is the mean of that cycle's stored member outputs, bit for bit; its
  score is the Brier skill of that output against the truth recomputed from the CSV; every model's
  contribution is recomputed from the stored outputs and the CSV the same way (exactly);
- a replay in another order (hours backwards, predictions before their feed) stores the same bits;
- the copy of the leader is paid less than the uncorrelated, worse-alone model (the issue's case),
  and the tiered emission pays it more (today's outcome); the ensemble is ranked, never paid, never
  in a copy cluster;
- the gate recomputes the payout and the metric statistics, and names tampered statistics;
- the API serves the metrics, diversity and guidance, the ensemble's outputs under the embargo, and
  the page shows them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import shutil
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.api.conftest import ACTOR, TOKEN, LiveServer, accounts, database_named
from tests.rewards_fixtures import hour_key, materialize_hours, materialize_one

QUICKSTARTERS = Path(__file__).resolve().parents[1] / "competitions" / "btc_updown" / "models"
PERIOD_START = datetime(2025, 1, 7, 3, tzinfo=timezone.utc)
PERIOD_END = PERIOD_START + timedelta(hours=3)
H = timedelta(hours=1)
TEMPLATE_DB = "crunch_ensembles_template"
ENSEMBLE = "__ensemble_main__"
MODELS = ("coin", "independent", "leader", "leader_copy", "trend_following")

MODEL = '''from competitions.btc_updown.model_base import UpDownModel

RIGHT = {right!r}  # cycle time -> the direction it calls right (the others: wrong, as confidently)
UP = {up!r}


class Model(UpDownModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        asof = self.latest.get("asof_ts")
        if asof not in UP:
            return {{"p_up": 0.5}}
        up = UP[asof] if RIGHT.get(asof) else not UP[asof]
        p = {confidence} if up else 1 - {confidence}
        return {{"p_up": min(1.0, p + {shift})}}
'''


def _closes(btc_csv: Path) -> dict[int, float]:
    """Close of each 1-minute candle by its open time (the CSV as the feed reads it)."""
    with btc_csv.open() as handle:
        return {int(row["timestamp"]): float(row["close"]) for row in csv.DictReader(handle)}


def truths(btc_csv: Path) -> dict[int, bool | None]:
    """Cycle time -> whether BTC went up over the next minute, recomputed from the CSV: the close
    observed at the cycle (the candle opened a minute before) against the close a minute later;
    None where a candle is missing (the cycle cannot resolve)."""
    closes = _closes(btc_csv)
    result = {}
    for t in range(int(PERIOD_START.timestamp()), int(PERIOD_END.timestamp()), 60):
        entry, resolved = closes.get(t - 60), closes.get(t)
        result[t] = None if entry is None or resolved is None else resolved > entry
    return result


def _right(salt: str, t: int, accuracy: float) -> bool:
    return int(hashlib.sha256(f"{salt}{t}".encode()).hexdigest()[:8], 16) / 2**32 < accuracy


def write_models(directory: Path, btc_csv: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(QUICKSTARTERS / "trend_following.py", directory / "trend_following.py")
    up = {t: bool(u) for t, u in truths(btc_csv).items() if u is not None}
    for name, salt, accuracy, confidence, shift in (("leader", "A", 0.65, 0.7, 0.0), ("leader_copy", "A", 0.65, 0.7, 0.001),
                                                    ("independent", "D", 0.6, 0.85, 0.0)):
        right = {t: _right(salt, t, accuracy) for t in up}
        (directory / f"{name}.py").write_text(MODEL.format(right=right, up=up, confidence=confidence, shift=shift))
    (directory / "coin.py").write_text("from competitions.btc_updown.model_base import UpDownModel\n\n\n"
                                       "class Model(UpDownModel):\n    def predict(self, subject, resolve_horizon_seconds, "
                                       "step_seconds):\n        return {'p_up': 0.5}\n")
    return directory


def spec_of(emission=None):
    from competitions.btc_updown.definitions import ENSEMBLES, METRICS, SPEC
    from crunch_assets.spec import EmissionPolicy

    return replace(SPEC, start=PERIOD_START - H, checkpoint_interval_seconds=3 * 3600, ensembles=ENSEMBLES,
                   metrics=METRICS, emission=emission or EmissionPolicy.contribution())


def definitions(spec, models_dir: Path, url: str, btc_csv: Path):
    from competitions.btc_updown.definitions import build_definitions
    from resources.feeds.csv_replay import CsvReplayFeed
    from resources.model_runners.local import LocalModelRunner
    from resources.store.database import CrunchDatabase

    return build_definitions(spec=spec, feed=CsvReplayFeed(path=str(btc_csv), source="csv"), automation_running=False,
                             model_runner=LocalModelRunner(models_dir=str(models_dir), call_timeout_seconds=10.0),
                             database=CrunchDatabase(url=url), payout_accounts=accounts())


def _create(admin, name: str, template: str | None = None) -> None:
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else "")))


def _drop(admin, name: str) -> None:
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="module")
def template(database_url, btc_csv, tmp_path_factory):
    """03:00-06:00 replayed in order: feed, predictions, scores, the day's rollups, the checkpoint."""
    from resources.store.database import dispose_engines

    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    _create(admin, TEMPLATE_DB)
    url = database_named(database_url, TEMPLATE_DB)
    models = write_models(tmp_path_factory.mktemp("ensemble_models"), btc_csv)
    spec = spec_of()
    defs = definitions(spec, models, url, btc_csv)
    assert materialize_hours(defs, spec, ["feed_records"], PERIOD_START - H, PERIOD_END).success
    assert materialize_hours(defs, spec, ["predictions", "scores"], PERIOD_START, PERIOD_END - H).success
    assert materialize_one(defs, spec, "snapshots", "2025-01-07").success
    assert materialize_one(defs, spec, "emission_checkpoints", hour_key(PERIOD_START)).success
    dispose_engines()
    yield {"url": url, "models": models, "admin": admin}
    dispose_engines()
    _drop(admin, TEMPLATE_DB)
    admin.dispose()


_copies = iter(range(10**6))


@contextlib.contextmanager
def fresh(database_url: str, template_name: str | None = TEMPLATE_DB):
    from resources.store.database import dispose_engines

    name = f"crunch_ensembles_{next(_copies)}"
    dispose_engines()  # no pooled connection to the template is left open
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    _create(admin, name, template_name)
    try:
        yield database_named(database_url, name)
    finally:
        dispose_engines()
        _drop(admin, name)
        admin.dispose()


def store_of(url: str):
    from resources.store.competition import CompetitionStore
    from resources.store.database import engine_for

    return CompetitionStore(engine_for(url), "btc_updown")


def checkpoint_of(url: str):
    checkpoints = [c for c in store_of(url).checkpoints() if c.period_start == PERIOD_START]
    assert len(checkpoints) == 1
    return checkpoints[0]


def stored_cycles(url: str) -> dict[datetime, dict[str, tuple]]:
    """cycle -> model -> (status, output, meta, score value) of the period's predictions."""
    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT p.cycle_at, p.model_id, p.status, p.inference_output, p.meta, s.value, i.status AS cycle_status "
            "FROM crunch.predictions p JOIN crunch.inputs i ON i.id = p.input_id "
            "LEFT JOIN crunch.scores s ON s.prediction_id = p.id "
            "WHERE p.cycle_at >= :start AND p.cycle_at < :end ORDER BY p.cycle_at, p.model_id"),
            {"start": PERIOD_START, "end": PERIOD_END}).fetchall()
    cycles: dict[datetime, dict[str, tuple]] = defaultdict(dict)
    for row in rows:
        cycles[row.cycle_at][row.model_id] = (row.status, row.inference_output, row.meta, row.value, row.cycle_status)
    return dict(cycles)


def brier(p: float, up: bool) -> float:
    return 1.0 - (p - (1.0 if up else 0.0)) ** 2


def test_the_ensemble_and_every_contribution_equal_an_independent_recomputation(template, btc_csv):
    url = template["url"]
    cycles = stored_cycles(url)
    up = truths(btc_csv)
    assert len(cycles) == 180
    hour_sums: dict[str, dict[datetime, list[float]]] = defaultdict(lambda: defaultdict(list))
    resolved = 0
    for cycle_at, rows in cycles.items():
        assert set(rows) == {*MODELS, ENSEMBLE}
        members = sorted(m for m, r in rows.items() if m != ENSEMBLE and r[0] == "PENDING")
        status, output, meta, ensemble_score, cycle_status = rows[ENSEMBLE]
        assert status == "PENDING" and meta["members"] == members and meta["weights"] == [1.0] * len(members)
        outputs = [rows[m][1]["p_up"] for m in members]
        assert output == {"p_up": math.fsum(outputs) / len(outputs), "form": "p_up"}  # bit for bit
        truth = up[int(cycle_at.timestamp())]
        if truth is None:
            assert cycle_status == "VOIDED" and ensemble_score is None
            continue
        resolved += 1
        assert cycle_status == "RESOLVED"
        assert ensemble_score == brier(output["p_up"], truth)
        for model in MODELS:
            assert rows[model][3] == brier(rows[model][1]["p_up"], truth)  # the models' scores are unchanged by it
        for k, model in enumerate(members):
            others = outputs[:k] + outputs[k + 1:]
            without = math.fsum(others) / len(others)
            hour_sums[model][cycle_at.replace(minute=0)].append(brier(output["p_up"], truth) - brier(without, truth))
    assert resolved > 170
    ranking = {r["model_id"]: r for r in checkpoint_of(url).entries["ranking"]}
    for model in MODELS:
        hourly = [math.fsum(values) for _, values in sorted(hour_sums[model].items())]
        expected = math.fsum(hourly) / resolved
        assert ranking[model]["breakdown"]["contribution"]["contribution"] == expected, model
    # the ensemble is ranked and shown, never paid, and no copy cluster holds it
    row = ranking[ENSEMBLE]
    assert row["reward_pct"] == 0 and not row["eligible"] and row["breakdown"]["ensemble"] is True
    assert row["breakdown"]["unpaid_reason"].startswith("ensemble: ")
    assert all(ENSEMBLE not in [m["model_id"] for m in c["members"]] for c in checkpoint_of(url).entries["copy_clusters"])
    assert checkpoint_of(url).entries["copy_clusters"] == []  # the near-copy is not caught at 6 decimals
    # copy detection never reads an ensemble's output (a one-member ensemble would equal its member)
    compared = {model for _, model, _ in store_of(url).copies.outputs("BTC-60-60", PERIOD_START, PERIOD_END)}
    assert compared == set(MODELS)


def test_a_replay_in_another_order_stores_the_same_bits(template, database_url, btc_csv):
    """Hours backwards; predictions asked before their feed is fetched (they wait); scores before the
    later hours' predictions exist."""
    spec = spec_of()
    with fresh(database_url, None) as url:
        defs = definitions(spec, template["models"], url, btc_csv)
        for hour in (PERIOD_START + 2 * H, PERIOD_START + H):  # no feed yet: the cycles wait (the check says so)
            assert not materialize_hours(defs, spec, ["predictions"], hour, hour, raise_on_error=False).success
        assert stored_cycles(url) == {}
        assert materialize_hours(defs, spec, ["feed_records"], PERIOD_START - H, PERIOD_END).success
        for hour in (PERIOD_START + 2 * H, PERIOD_START + H, PERIOD_START):
            assert materialize_hours(defs, spec, ["predictions"], hour, hour).success
            assert materialize_hours(defs, spec, ["scores"], hour, hour).success
        assert materialize_one(defs, spec, "snapshots", "2025-01-07").success
        assert materialize_one(defs, spec, "emission_checkpoints", hour_key(PERIOD_START)).success
        assert stored_cycles(url) == stored_cycles(template["url"])
        replayed, original = checkpoint_of(url).entries, checkpoint_of(template["url"]).entries
        assert replayed["ranking"] == original["ranking"]  # every reward, contribution and component, bit for bit
        mine = {(s.model_id, s.period_start): s.meta for s in store_of(url).snapshots(PERIOD_START, PERIOD_END)}
        theirs = {(s.model_id, s.period_start): s.meta for s in store_of(template["url"]).snapshots(PERIOD_START, PERIOD_END)}
        assert mine == theirs


def test_the_copy_of_the_leader_earns_less_than_the_uncorrelated_model(template, database_url, btc_csv):
    from crunch_assets.spec import EmissionPolicy

    ranking = {r["model_id"]: r for r in checkpoint_of(template["url"]).entries["ranking"]}
    copy, independent = ranking["leader_copy"], ranking["independent"]
    assert copy["score"] > independent["score"]  # worse alone
    assert independent["breakdown"]["contribution"]["contribution"] > copy["breakdown"]["contribution"]["contribution"]
    assert independent["breakdown"]["contribution"]["diversity"] > copy["breakdown"]["contribution"]["diversity"]
    assert independent["reward_pct"] > copy["reward_pct"] > 0
    parts = independent["breakdown"]["reward_components"]
    assert set(parts) >= {"rank_part", "contribution_part", "diversity_part", "composite", "field"}
    assert parts["composite"] > copy["breakdown"]["reward_components"]["composite"]
    assert sum(r["reward_pct"] for r in ranking.values()) == 1_000_000_000
    assert "contribution-weighted" in checkpoint_of(template["url"]).entries["policies"]["emission"]
    # today's outcome, on the same stored data: by rank, the copy is paid at least as much (tiered:
    # ranks 2-5 hold equal tiers) or more (proportional to the score)
    for emission, outcome in ((EmissionPolicy.tiered(), lambda copy, other: copy >= other),
                              (EmissionPolicy.proportional(), lambda copy, other: copy > other)):
        by_rank_spec = spec_of(emission)
        with fresh(database_url) as url:
            defs = definitions(by_rank_spec, template["models"], url, btc_csv)
            assert materialize_one(defs, by_rank_spec, "emission_checkpoints", hour_key(PERIOD_START)).success
            by_rank = {r["model_id"]: r for r in checkpoint_of(url).entries["ranking"]}
            assert outcome(by_rank["leader_copy"]["reward_pct"], by_rank["independent"]["reward_pct"]), emission.kind


def test_the_gate_recomputes_the_payout_and_names_tampered_statistics(template, database_url):
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.payouts import run_gate

    spec = spec_of()
    with fresh(database_url) as url:
        store = store_of(url)
        gate = run_gate(spec, store, checkpoint_of(url), accounts(), rules=RULES)
        checks = {c["name"]: c for c in gate["checks"]}
        # the ensemble is never an eligible participant of the field the gate counts
        paid_field = {r["participant"] for r in checkpoint_of(url).entries["ranking"] if r["eligible"]}
        assert ENSEMBLE not in paid_field and paid_field <= set(MODELS)
        assert checks["minimum_field_size"]["detail"].startswith(f"{len(paid_field)} eligible participant(s)")
        for name in ("payout_recomputes", "snapshots_match_scores", "rewards_follow_stored_ranking",
                     "paid_models_are_eligible"):
            if name in checks:
                assert checks[name]["passed"], checks[name]
        # an operator with a database console raises the copy's stored contribution
        with sa.create_engine(url, poolclass=sa.pool.NullPool).begin() as connection:
            changed = connection.execute(sa.text(
                "UPDATE crunch.snapshots SET meta = jsonb_set(meta, '{metrics,c:main,0}', '0.5') "
                "WHERE model_id = 'leader_copy' AND period_start = :hour"), {"hour": PERIOD_START}).rowcount
        assert changed == 1
        gate = run_gate(spec, store, checkpoint_of(url), accounts(), rules=RULES)
        tampered = {c["name"]: c for c in gate["checks"]}["snapshots_match_scores"]
        assert not tampered["passed"] and "leader_copy" in tampered["detail"] and "metric statistics" in tampered["detail"]
        assert not gate["passed"]


def _serve(url: str, spec):
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.api import ReportCompetition, create_app
    from resources.store.database import CrunchDatabase
    from sqlalchemy.engine import make_url

    competition = ReportCompetition(spec, accounts(), CrunchDatabase(role="api", database=make_url(url).database), RULES)
    return LiveServer(create_app([competition], api_token=TOKEN, actor=ACTOR, read_env=False))


def test_the_api_serves_metrics_diversity_and_the_embargoed_ensemble(template, database_url, btc_csv):
    spec = spec_of()
    with fresh(database_url) as url:
        defs = definitions(spec, template["models"], url, btc_csv)
        # the next hour's cycles are predicted, not resolved: their ensemble outputs are embargoed
        assert materialize_hours(defs, spec, ["feed_records", "predictions"], PERIOD_END, PERIOD_END).success
        assert materialize_one(defs, spec, "leaderboard", "2025-01-07").success
        with _serve(url, spec) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            everything = client.get("/reports/models/metrics").json()
            assert everything["metrics"] == list(spec.metrics.names) and everything["window"] == spec.ranking_key
            leader = everything["models"]["leader"]
            assert leader["contribution"] is not None and -1 <= leader["model_correlation"] <= 1
            assert everything["models"][ENSEMBLE]["ensemble"] is True
            one = client.get("/reports/models/leader_copy/metrics").json()
            assert one["values"]["contribution"] == everything["models"]["leader_copy"]["contribution"]
            assert one["checkpoints"][0]["contribution"]["contribution"] == \
                {r["model_id"]: r for r in checkpoint_of(url).entries["ranking"]}["leader_copy"]["breakdown"]["contribution"]["contribution"]
            diversity = client.get("/reports/models/leader_copy/diversity").json()
            assert diversity["guidance"] == one["diversity"]["guidance"] and diversity["guidance"].endswith(".")
            field = client.get("/reports/diversity").json()["models"]
            assert {d["model_id"] for d in field} == set(MODELS)
            assert client.get("/reports/models/nobody/metrics").status_code == 404
            assert client.get("/reports/models/metrics?window=nope").status_code == 422
            history = client.get("/reports/ensembles/main/history?limit=120").json()["history"]
            unresolved = [h for h in history if h["cycle_at"] >= PERIOD_END.isoformat().replace("+00:00", "Z")
                          or datetime.fromisoformat(h["cycle_at"].replace("Z", "+00:00")) >= PERIOD_END]
            assert unresolved and all(h["embargoed"] and h["output"] is None for h in unresolved)
            resolved = [h for h in history if h not in unresolved]
            assert resolved and all(h["output"]["p_up"] is not None and h["score"] is not None for h in resolved)
            operator = client.get("/reports/ensembles/main/history?limit=120",
                                  headers={"Authorization": f"Bearer {TOKEN}"}).json()["history"]
            assert all(h["output"] is not None for h in operator)
            assert client.get("/reports/ensembles/other/history").status_code == 404
            assert client.get("/reports/ensemble/history?limit=120").json()["history"] == history  # the reference's path
            # the reference's leaderboard shape hides the ensembles unless asked; ours marks them
            reference = client.get("/reports/leaderboard").json()
            assert reference and ENSEMBLE not in {r["model_id"] for r in reference}
            asked = {r["model_id"]: r for r in client.get("/reports/leaderboard?include_ensembles=true").json()}
            assert ENSEMBLE in asked and asked[ENSEMBLE]["eligible"] is not True
            ours = client.get("/competitions/btc_updown/leaderboard").json()["entries"]
            assert {e["model_id"]: e for e in ours}[ENSEMBLE]["ensemble"] is True


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


def test_the_page_shows_what_a_model_adds_with_one_line_of_guidance(template, database_url, btc_csv, browser, tmp_path):
    spec = spec_of()
    with fresh(database_url) as url:
        defs = definitions(spec, template["models"], url, btc_csv)
        assert materialize_one(defs, spec, "leaderboard", "2025-01-07").success
        context = browser.new_context(viewport={"width": 1100, "height": 1600})
        page = context.new_page()
        try:
            with _serve(url, spec) as server, httpx.Client(base_url=server.url, timeout=60) as client:
                api = client.get("/reports/models/leader_copy/metrics").json()
                assert page.goto(server.url + "/page/btc_updown/models/leader_copy").status == 200
                assert page.locator("#guidance").inner_text() == api["diversity"]["guidance"]
                shown = {row.get_attribute("data-metric") for row in page.locator("#model-metrics tr[data-metric]").all()}
                assert shown == set(spec.metrics.names)
                cell = page.locator('#model-metrics tr[data-metric="contribution"] .metric').inner_text()
                assert float(cell) == pytest.approx(api["values"]["contribution"], abs=5e-5)
                period = page.locator(f'#contribution-per-period tr[data-checkpoint="{checkpoint_of(url).id}"]')
                assert "rank" in period.inner_text() and "diversity" in period.inner_text()
                field = next(r for r in checkpoint_of(url).entries["ranking"]
                             if r["model_id"] == "leader_copy")["breakdown"]["reward_components"]["field"]
                shown_field = period.locator(".field-range").inner_text()  # its contribution against the field's
                assert f"{field['contribution_min']:.5f} to {field['contribution_max']:.5f}" in shown_field
                assert f"over {field['models']} paid models" in shown_field
                page.screenshot(path=str(tmp_path / "what_it_adds.png"), full_page=True)
                assert page.goto(server.url + "/").status == 200
                marked = page.locator(f'#leaderboard tr[data-model="{ENSEMBLE}"] .ensemble')
                assert "never paid" in marked.inner_text()
        finally:
            context.close()

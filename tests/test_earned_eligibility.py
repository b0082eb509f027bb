"""Pay only for work done, over real BTC/USD candles: six hours replayed through the real assets
with btc_updown's three quickstarters in their own processes, beside a model that raises on every
call, and two models that answer differently but score exactly alike (a tie).

Then the same rollups are paid under each case's field and policy by `payout_entries`, the function
the checkpoint and the leaderboard call, and a materialized checkpoint is checked end to end."""

import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from crunch_assets import payouts
from crunch_assets.defs.checkpoints.assets import payout_entries
from crunch_assets.partitions import build_partitions
from crunch_assets.replay import replay
from crunch_assets.spec import DAY_SECONDS, Eligibility, PayoutPolicy
from resources.feeds.csv_replay import CsvReplayFeed
from resources.store.competition import CompetitionStore
from tests.rewards_fixtures import materialize_one

START = datetime(2025, 1, 7, 1, tzinfo=timezone.utc)  # the file's first candle opens at 00:01
END = START + timedelta(hours=6)
H = timedelta(hours=1)
QUICKSTARTERS = ("gaussian_density", "mean_reversion", "trend_following")
HEADER = "from competitions.btc_updown.model_base import UpDownModel\n\n\nclass Model(UpDownModel):\n" \
         "    def predict(self, subject, resolve_horizon_seconds, step_seconds):\n"
EXTRA_MODELS = {
    "dead": "        raise RuntimeError('this model never answers')\n",
    # the same forecast (P(up) = 0.5) in two different outputs: not a copy, an exact tie of scores
    "coin_a": "        return {'p_up': 0.5}\n",
    "coin_b": "        return {'type': 'builtin', 'name': 'norm', 'params': {'loc': 0.0, 'scale': 1.0}}\n",
    # answers the minute scope only; joins after the six-hour scope's cycle
    "skipper": "        if resolve_horizon_seconds != 60 or step_seconds != 60:\n"
               "            raise RuntimeError('only the minute scope')\n"
               "        return {'p_up': 0.5}\n",
}


def write_models(directory, quickstarters, extra):
    from competitions.btc_updown.definitions import MODELS_DIR

    directory.mkdir(parents=True, exist_ok=True)
    for name in quickstarters:
        shutil.copy(MODELS_DIR / f"{name}.py", directory / f"{name}.py")
    for name in extra:
        (directory / f"{name}.py").write_text(HEADER + EXTRA_MODELS[name])
    return directory


def _reset(database_url):
    from resources.store.database import dispose_engines

    dispose_engines()
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS crunch CASCADE"))
    return engine


@pytest.fixture(scope="module")
def field(database_url, btc_csv, tmp_path_factory):
    """Six hours, daily checkpoint: 3 quickstarters, a dead model, two tied coins."""
    from competitions.btc_updown.definitions import SPEC, build_definitions
    from resources.model_runners.local import LocalModelRunner

    engine = _reset(database_url)
    spec = replace(SPEC, start=START, checkpoint_interval_seconds=DAY_SECONDS)
    models = write_models(tmp_path_factory.mktemp("field"), QUICKSTARTERS, ["dead", "coin_a", "coin_b"])
    defs = build_definitions(spec=spec, feed=CsvReplayFeed(path=str(btc_csv), source="csv"), automation_running=False,
                             model_runner=LocalModelRunner(models_dir=str(models), call_timeout_seconds=5.0))
    replay(defs, spec, START, END)
    store = CompetitionStore(engine, spec.slug)
    period_key, period_start, period_end = build_partitions(spec).checkpoint.periods_between(START, START + timedelta(days=1))[0]
    yield {"engine": engine, "defs": defs, "spec": spec, "store": store, "key": period_key,
           "period": (period_start, period_end)}
    engine.dispose()


def _pay(field, spec, models, **kwargs):
    """What the period pays `models` (a field drawn from the replayed rollups) under `spec`."""
    store, (start, end) = field["store"], field["period"]
    snapshots = [s for s in store.snapshots(start, end) if s.model_id in models]
    from competitions.btc_updown.definitions import RULES

    return payout_entries(spec, RULES, store, snapshots, store.stored_rollups(start, end), start, end, **kwargs)


def test_the_dead_model_really_failed_every_cycle(field):
    store, (start, end) = field["store"], field["period"]
    counts = {}
    for s in store.snapshots(start, end):
        if s.model_id == "dead":
            for key, n in s.status_counts.items():
                counts[key] = counts.get(key, 0) + n
    # 360 rows, all FAILED: rows in every cycle, which is what used to count as its coverage
    assert counts == {"scored": 0, "failed": 360, "absent": 0, "rejected": 0}


def test_a_model_that_never_answers_is_not_paid(field):
    """Issue: beside the three quickstarters, a model raising on every call (360 FAILED) was paid
    like a real one: its rows counted as coverage and it took its share of the unclaimed tiers
    (187,500,000 of a four-model split here). Now it is ranked and shown, paid 0, and the three
    real models share the pool as three: 500,000,000 / 250,000,000 / 250,000,000."""
    paid = _pay(field, field["spec"], set(QUICKSTARTERS) | {"dead"})
    dead = paid["dead"]
    assert dead["reward_pct"] == 0 and not dead["eligible"] and dead["rank"] == 4
    assert dead["score"] == 0.0 and dead["prediction_count"] == 360 and dead["coverage"] == 0.0
    assert dead["breakdown"]["unpaid_reason"] == "no scored answer in the period"
    assert (dead["breakdown"]["failed"], dead["breakdown"]["scored"]) == (360, 0)
    real = sorted((p["reward_pct"] for m, p in paid.items() if m != "dead"), reverse=True)
    assert real == [500_000_000, 250_000_000, 250_000_000]


def test_failed_rows_are_not_coverage_under_a_minimum_coverage(field):
    """Issue: with minimum_coverage(0.9), beside two real models the dead one took 25 %: its 360
    FAILED rows covered 100 % of the cycles. Coverage now counts scored answers: it has 0 %."""
    strict = replace(field["spec"], eligibility=Eligibility.minimum_coverage(0.9))
    paid = _pay(field, strict, {"mean_reversion", "trend_following", "dead"})
    assert paid["dead"]["reward_pct"] == 0 and paid["dead"]["coverage"] == 0.0
    assert paid["dead"]["breakdown"]["unpaid_reason"] == "no scored answer in the period"
    assert sorted(p["reward_pct"] for p in paid.values()) == [0, 375_000_000, 625_000_000]
    assert {m: p["coverage"] for m, p in paid.items() if m != "dead"} == {"mean_reversion": 1.0, "trend_following": 1.0}


def test_equal_scores_share_their_tiers_whatever_the_models_are_called(field):
    """Issue: two models with exactly equal scores were split by model id. coin_a and coin_b answer
    P(up) = 0.5 in two different outputs and score exactly alike; by id the first takes a whole
    tier more than the second. Shared (the default), each gets the mean of the two ranks' rewards."""
    models = set(QUICKSTARTERS) | {"coin_a", "coin_b"}
    shared = _pay(field, field["spec"], models)
    assert shared["coin_a"]["score"] == shared["coin_b"]["score"] == pytest.approx(0.75, abs=1e-12)
    by_id = _pay(field, replace(field["spec"], payout=PayoutPolicy(ties="by_model_id")), models)
    a, b = by_id["coin_a"]["reward_pct"], by_id["coin_b"]["reward_pct"]
    assert by_id["coin_a"]["rank"] + 1 == by_id["coin_b"]["rank"]  # by id: coin_a first
    # on these six hours the coins lead the field of five: by id, 40 % against 15 % for the same score
    assert (a, b) == (400_000_000, 150_000_000)
    assert shared["coin_a"]["reward_pct"] == shared["coin_b"]["reward_pct"] == 275_000_000
    pooled = a + b
    assert {shared["coin_a"]["reward_pct"], shared["coin_b"]["reward_pct"]} == {pooled // 2, pooled - pooled // 2}
    assert shared["coin_a"]["breakdown"]["tied_with"] == ["coin_b"]
    assert sum(p["reward_pct"] for p in shared.values()) == 1_000_000_000
    # the other models are paid exactly what they were: a tie only moves money inside itself
    assert {m: p["reward_pct"] for m, p in shared.items() if not m.startswith("coin")} == \
        {m: p["reward_pct"] for m, p in by_id.items() if not m.startswith("coin")}


def test_the_materialized_checkpoint_pays_only_work_done_and_the_gate_agrees(field):
    materialize_one(field["defs"], field["spec"], "emission_checkpoints", field["key"])
    store = field["store"]
    checkpoint = store.checkpoint(*field["period"])
    ranking = {r["model_id"]: r for r in checkpoint.entries["ranking"]}
    assert ranking["dead"]["reward_pct"] == 0 and ranking["dead"]["breakdown"]["unpaid_reason"]
    assert ranking["coin_a"]["reward_pct"] - ranking["coin_b"]["reward_pct"] in (0, 1)
    assert sum(r["reward_pct"] for r in ranking.values()) == 1_000_000_000
    assert "one paid model per participant" in checkpoint.entries["policies"]["payout"]
    scored = payouts.scored_answers(store, checkpoint)
    assert scored["dead"] == 0 and payouts.check_paid_models_answered(checkpoint.entries, scored).passed
    # a checkpoint edited to pay the dead model is refused by the gate
    forged = {**checkpoint.entries, "ranking": [{**r, "reward_pct": 1} if r["model_id"] == "dead" else r
                                                 for r in checkpoint.entries["ranking"]]}
    refused = payouts.check_paid_models_answered(forged, scored)
    assert not refused.passed and "dead is paid with 0 scored answer(s)" in refused.detail


def test_a_benchmark_model_is_shown_marked_and_unpaid_over_http(field, database_url):
    """Declared as a benchmark, coin_a stays on the leaderboard and the page at its place, marked,
    and is never paid; its breakdown says why, over the real report API."""
    import httpx

    from crunch_assets.api import ReportCompetition, create_app
    from resources.payout_accounts import PayoutAccounts
    from resources.store.database import CrunchDatabase
    from tests.api.conftest import LiveServer

    spec = replace(field["spec"], payout=PayoutPolicy(benchmark_models=("coin_a",)))
    from competitions.btc_updown.definitions import build_definitions
    from resources.model_runners.local import LocalModelRunner

    defs = build_definitions(spec=spec, feed=field["defs"].resources["feed"], automation_running=False,
                             model_runner=LocalModelRunner(models_dir=field["defs"].resources["model_runner"].models_dir))
    materialize_one(defs, spec, "leaderboard", "2025-01-07")  # the day's leaderboard again, with the benchmark
    materialize_one(defs, spec, "emission_checkpoints", field["key"])
    app = create_app([ReportCompetition(spec, PayoutAccounts(), CrunchDatabase(url=database_url))], api_token=None,
                     actor="test", read_env=False)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        board = client.get("/competitions/btc_updown/leaderboard").json()
        entries = {e["model_id"]: e for e in board["entries"]}
        assert entries["coin_a"]["benchmark"] and entries["coin_a"]["rank"] <= 2  # at its place by score
        assert not entries["coin_b"]["benchmark"]
        assert entries["coin_a"]["payout"]["reward_pct"] == 0 and not entries["coin_a"]["payout"]["eligible"]
        assert entries["coin_a"]["payout"]["unpaid_reason"] == "benchmark model: scored and ranked, never paid"
        checkpoint_id = client.get("/competitions/btc_updown/checkpoints").json()["checkpoints"][0]["id"]
        explained = client.get(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/models/coin_a/breakdown").json()
        assert explained["reward_pct"] == 0 and explained["breakdown"]["benchmark"]
        dead = client.get(f"/competitions/btc_updown/checkpoints/{checkpoint_id}/models/dead/breakdown").json()
        assert dead["breakdown"]["unpaid_reason"] == "no scored answer in the period"
        page = client.get("/page/btc_updown").text
        assert 'benchmark, not paid' in page and "ranked, not paid: each model's page explains" in page
        # the competition page lists the paid; the dead model's own page says why it is not
        assert "Not paid: no scored answer in the period." in client.get("/page/btc_updown/models/dead").text
        model_page = client.get("/page/btc_updown/models/coin_a").text
        assert "benchmark model: scored and ranked, never paid" in model_page

"""crypto_density replayed through the whole chain (5-minute candles of three subjects, a 5-minute
and a 2-hour scope per subject, CRPS, relative failure values, weighted scopes, softmax), then every
number recomputed independently: the models called in-process on candles built from the synthetic
price, the truth from the same prices, the CRPS by numerical integration instead of its closed form.
The competition's ensemble (the mixture of the answering models' densities) is scored by CRPS like a
model, recomputed the same way, ranked and never paid, and never moves the relative failure value."""

import importlib
import math
import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from crunch_assets.emission import FRAC64_ONE
from resources.feeds.synthetic import synthetic_candle

START = datetime(2026, 11, 14, tzinfo=timezone.utc)
HOURS = 6
END = START + timedelta(hours=HOURS)
QUICKSTARTERS = {"random_walk": "RandomWalk", "momentum": "Momentum", "regime_mixture": "RegimeMixture"}
ENSEMBLE = "__ensemble_mixture__"
FLAKY = """from competitions.crypto_density.model_base import DensityModel


class Flaky(DensityModel):
    def predict(self, subject, resolve_horizon_seconds, step_seconds):
        # short horizons fail one cycle in three (never five failures in a row: no quarantine)
        if resolve_horizon_seconds == 300 and (self.latest["asof_ts"] // 300) % 3 == 0:
            raise RuntimeError("flaky")
        return self.normal(0.0, 50.0)
"""


@pytest.fixture(scope="module")
def replayed(database_url, tmp_path_factory):
    from competitions.crypto_density.definitions import MODELS_DIR, SPEC, build_definitions
    from crunch_assets.replay import replay
    from resources.feeds.synthetic import SyntheticFeed
    from resources.model_runners.local import LocalModelRunner
    from resources.store.database import dispose_engines, engine_for

    dispose_engines()
    with engine_for().begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS crunch CASCADE"))
    dispose_engines()
    models = tmp_path_factory.mktemp("density") / "models"
    shutil.copytree(MODELS_DIR, models, ignore=shutil.ignore_patterns("__pycache__"))
    (models / "flaky.py").write_text(FLAKY)
    spec = replace(SPEC, start=START, checkpoint_interval_seconds=HOURS * 3600)
    defs = build_definitions(spec=spec, feed=SyntheticFeed(granularity_seconds=300), automation_running=False,
                             model_runner=LocalModelRunner(models_dir=str(models), call_timeout_seconds=10))
    timings = replay(defs, spec, START, END)
    assert timings.checkpoints == ["2026-11-14-00:00"]
    return spec, engine_for()


def _candles(subject, cycle_at, history_seconds):
    """The 5-minute candles closed in (cycle_at - history, cycle_at], as the synthetic feed makes them."""
    first_open = int((cycle_at - timedelta(seconds=history_seconds)).timestamp())
    return [synthetic_candle(subject, open_ts, 300) for open_ts in range(first_open, int(cycle_at.timestamp()), 300)]


def _close_at(subject, instant):
    return synthetic_candle(subject, int(instant.timestamp()) - 300, 300).close


def _crps_by_integration(components, outcome):
    """∫ (F(x) - 1[x >= outcome])^2 dx by Simpson's rule, F the mixture's CDF."""
    def cdf(x):
        return sum(w * 0.5 * (1 + math.erf((x - m) / (s * math.sqrt(2)))) for w, m, s in components)

    lo = min([outcome] + [m - 14 * s for _, m, s in components])
    hi = max([outcome] + [m + 14 * s for _, m, s in components])
    total = 0.0
    for a, b in ((lo, outcome), (outcome, hi)):  # split at the outcome: the integrand jumps there
        n = 4000
        h = (b - a) / n
        if h == 0:
            continue
        step = 1.0 if a >= outcome else 0.0
        values = [(cdf(a + i * h) - step) ** 2 for i in range(n + 1)]
        total += h / 3 * (values[0] + values[-1] + 4 * sum(values[1:-1:2]) + 2 * sum(values[2:-1:2]))
    return total


def _expected(spec):
    """(cycle_at, scope_key, model_id) -> score, recomputed without the engine."""
    from competitions.crypto_density.logic import mix_densities, validate_output

    namespace = {}
    exec(FLAKY, namespace)  # noqa: S102 - the test's own model source
    models = {name: getattr(importlib.import_module(f"competitions.crypto_density.models.{name}"), cls)()
              for name, cls in QUICKSTARTERS.items()}
    models["flaky"] = namespace["Flaky"]()
    expected = {}
    for cycle_at, scope in spec.cycle_times(START, END):
        data = {"asof_ts": int(cycle_at.timestamp()), "candles_5m": {
            subject: [{"ts": int(c.ts_event.timestamp()), "open": c.open, "high": c.high, "low": c.low,
                       "close": c.close, "volume": c.volume} for c in _candles(subject, cycle_at, spec.history_seconds)]
            for subject in ("BTC", "ETH", "SOL")}}
        entry, resolved = _close_at(scope.subject, cycle_at), _close_at(scope.subject, cycle_at + scope.horizon)
        outcome = 10_000 * (resolved - entry) / entry
        answered, outputs = {}, {}
        for name, model in models.items():
            model.feed_update(data)
            try:
                output = model.predict(scope.subject, scope.resolve_horizon_seconds, scope.effective_step_seconds)
            except RuntimeError:
                continue
            outputs[name] = validate_output(scope, output)
            answered[name] = _crps_by_integration(outputs[name]["components"], outcome)
        worst = max(answered.values())  # the relative failure value: the worst answer of the cycle's models
        for name in models:
            expected[(cycle_at, scope.key, name)] = answered.get(name, worst)
        members = sorted(outputs)  # the ensemble: every model that answered, equal weights, by model id
        mixture = mix_densities(scope, [outputs[m] for m in members], [1.0] * len(members))
        expected[(cycle_at, scope.key, ENSEMBLE)] = _crps_by_integration(mixture["components"], outcome)
    return expected


@pytest.fixture(scope="module")
def expected(replayed):
    return _expected(replayed[0])


def test_every_score_equals_the_independent_recomputation(replayed, expected):
    spec, engine = replayed
    with engine.connect() as connection:
        stored = connection.execute(sa.text(
            "SELECT cycle_at, scope_key, model_id, value, success FROM crunch.scores WHERE competition = 'crypto_density'"
        )).fetchall()
    assert len(stored) == len(expected) == (72 + 24) * 3 * (4 + 1)  # four models and the ensemble
    for cycle_at, scope_key, model_id, value, success in stored:
        assert value == pytest.approx(expected[(cycle_at, scope_key, model_id)], rel=1e-6, abs=1e-9), (cycle_at, scope_key, model_id)
        fails = model_id == "flaky" and scope_key.endswith("-300-300") and (int(cycle_at.timestamp()) // 300) % 3 == 0
        assert success == (not fails)


def test_inputs_are_cross_asset_five_minute_candles(replayed):
    _, engine = replayed
    with engine.connect() as connection:
        raw = connection.execute(sa.text(
            "SELECT raw_data FROM crunch.inputs WHERE competition = 'crypto_density' AND cycle_at = :t "
            "AND scope_key = 'ETH-300-300'"), {"t": START + timedelta(hours=3)}).scalar_one()
    assert set(raw["candles_5m"]) == {"BTC", "ETH", "SOL"}
    assert all(len(candles) == 72 for candles in raw["candles_5m"].values())  # 6 hours of 5-minute bars
    times = [c["ts"] for c in raw["candles_5m"]["SOL"]]
    assert times[-1] + 300 == int((START + timedelta(hours=3)).timestamp())  # nothing after the cycle


def _standings(spec, expected):
    """Per model: each scope's mean, and the weighted combination."""
    by_scope = {}
    for (_cycle_at, scope_key, model), value in expected.items():
        by_scope.setdefault(model, {}).setdefault(scope_key, []).append(value)
    weights = {scope.key: scope.weight for scope in spec.scopes}
    result = {}
    for model, scopes in by_scope.items():
        means = {key: sum(values) / len(values) for key, values in scopes.items()}
        result[model] = (means, sum(weights[k] * v for k, v in means.items()) / sum(weights[k] for k in means))
    return result


def test_the_checkpoint_ranks_weighted_scope_means_and_pays_by_softmax(replayed, expected):
    spec, engine = replayed
    standings = _standings(spec, expected)
    with engine.connect() as connection:
        checkpoint = connection.execute(sa.text(
            "SELECT entries FROM crunch.checkpoints WHERE competition = 'crypto_density'")).scalar_one()
    ranking = checkpoint["ranking"]
    models = [m for m in standings if m != ENSEMBLE]
    # the paid models, lower CRPS first, then the ensemble: ranked by its score, never paid
    assert [r["model_id"] for r in ranking] == sorted(models, key=lambda m: (standings[m][1], m)) + [ENSEMBLE]
    ensemble = ranking[-1]
    assert ensemble["reward_pct"] == 0 and ensemble["breakdown"]["unpaid_reason"].startswith("ensemble: ")
    assert ensemble["breakdown"]["rank_by_score"] == 1 + sum(standings[m][1] < standings[ENSEMBLE][1] for m in models)
    contributions = {r["model_id"]: r["breakdown"]["contribution"]["contribution"] for r in ranking[:-1]}
    assert all(c is not None and math.isfinite(c) for c in contributions.values())
    ranking = ranking[:-1]
    for row in ranking:
        means, combined = standings[row["model_id"]]
        assert row["score"] == pytest.approx(combined, rel=1e-6)
        for key, mean in means.items():
            assert row["breakdown"]["scopes"][key]["value"] == pytest.approx(mean, rel=1e-6)
    values = [standings[r["model_id"]][1] for r in ranking]  # softmax over the paid models only
    weights = [math.exp(-(v - min(values)) / spec.emission.temperature) for v in values]
    assert sum(r["reward_pct"] for r in ranking) == FRAC64_ONE
    for row, weight in zip(ranking, weights):
        assert row["reward_pct"] == pytest.approx(weight / sum(weights) * FRAC64_ONE, abs=1)


def test_the_leaderboard_has_per_scope_columns_and_the_combined_ranking(replayed, expected):
    spec, engine = replayed
    standings = _standings(spec, expected)
    with engine.connect() as connection:
        entries = connection.execute(sa.text(
            "SELECT entries FROM crunch.leaderboards WHERE competition = 'crypto_density' AND as_of = :t"),
            {"t": START + timedelta(days=1)}).scalar_one()  # the day's leaderboard: its 24 h window is the replay
    assert [e["model_id"] for e in entries] == sorted(standings, key=lambda m: (standings[m][1], m))
    for entry in entries:
        means, combined = standings[entry["model_id"]]
        assert entry["crps_24h"] == pytest.approx(combined, rel=1e-6)
        assert {k: v["crps_24h"] for k, v in entry["scopes"].items()} == pytest.approx(means, rel=1e-6)
        assert entry["crps_6h"] is None  # nothing was scored in the day's last 6 hours


def test_whatif_reproduces_the_checkpoint_and_a_shadow_of_a_model_in_its_place_equals_it(replayed, tmp_path):
    """What-if with the spec as it is (from the stored rollups, and rescored from the stored outputs and
    truth under relative failure values and six weighted scopes), and the shadow entry of a
    quickstarter's own file in its place, give the stored checkpoint to the frac64 unit."""
    from competitions.crypto_density.definitions import MODELS_DIR, RULES
    from resources.payout_accounts import PayoutAccounts
    from crunch_assets.whatif import Proposal, shadow, whatif
    from resources.model_runners.local import LocalModelRunner
    from resources.store.competition import CompetitionStore

    spec, engine = replayed
    store = CompetitionStore(engine, spec.slug)
    stored = {r["model_id"]: r for r in store.checkpoint(START, END).entries["ranking"]}
    for rescore in (False, True):
        (period,) = whatif(spec, RULES, None, store, PayoutAccounts(), Proposal(), START, END, rescore=rescore)
        assert {m: (a["rank"], a["reward_pct"]) for m, a in period.after.items()} == \
            {m: (r["rank"], r["reward_pct"]) for m, r in stored.items()}
    report = shadow(spec, RULES, None, store, PayoutAccounts(), MODELS_DIR / "momentum.py", START, END,
                    replaces="momentum", configured_runner=LocalModelRunner(models_dir=str(MODELS_DIR)))
    (period,) = report.periods
    assert (period.candidate["rank"], period.candidate["reward_pct"]) == (stored["momentum"]["rank"],
                                                                          stored["momentum"]["reward_pct"])

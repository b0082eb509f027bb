"""crypto_density: density forecasts of BTC, ETH and SOL returns, scored by CRPS (lower is better).

Two scopes per subject: 5 minutes ahead every 5 minutes, and 2 hours ahead every 15 minutes
(weighted twice in the combined standing). 5-minute candles of all three subjects are every
model's input. A FAILED or ABSENT prediction scores the worst CRPS among the models that answered
in that cycle (CRPS has no worst value of its own). Daily checkpoints pay by softmax over the day's
standing. Feed, model runner and automation come from the environment (CRUNCH_CRYPTO_DENSITY_FEED,
_RUNNER, _AUTOMATION, ...; see crunch_assets/settings.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from crunch_assets.definitions import build_competition_definitions
from crunch_assets.rules import CallableRules
from crunch_assets.settings import CompetitionSettings, FeedDefaults
from crunch_assets.spec import CompetitionSpec, EmissionPolicy, FailurePolicy, GatePolicy, LeaderboardWindow, Scope

MODELS_DIR = Path(__file__).with_name("models")
LOGIC = "competitions.crypto_density.logic"
SETTINGS = CompetitionSettings("crypto_density")
SUBJECTS = ("BTC", "ETH", "SOL")
FEED = FeedDefaults(kind="candle", granularity_seconds=300)

SPEC = CompetitionSpec(
    slug="crypto_density",
    start=SETTINGS.instant("START", datetime(2026, 11, 1, tzinfo=timezone.utc)),
    scopes=tuple(
        scope
        for subject in SUBJECTS
        for scope in (
            Scope(subject, resolve_horizon_seconds=300, prediction_interval_seconds=300, weight=1.0, name="short"),
            Scope(subject, resolve_horizon_seconds=7200, prediction_interval_seconds=900, weight=2.0, name="long"),
        )
    ),
    failure_policy=FailurePolicy.relative(100),  # the worst answer of the cycle
    ranking_descending=False,  # CRPS: lower is better
    leaderboard_windows=(LeaderboardWindow("crps_6h", 6 * 3600), LeaderboardWindow("crps_24h", 86400),
                         LeaderboardWindow("crps_7d", 7 * 86400)),
    ranking_key="crps_24h",
    emission=EmissionPolicy.softmax(temperature=2.0),  # shares ~ exp(-CRPS / 2 bp)
    # softmax pays the clear leader most of the pool by design: declared, so the gate allows it
    gate=GatePolicy(max_participant_share_pct=100.0),
    checkpoint_interval_seconds=SETTINGS.integer("CHECKPOINT_INTERVAL_SECONDS", 86400),
    history_seconds=6 * 3600,
    max_price_staleness_seconds=60,
    description="Density forecasts of BTC, ETH and SOL returns over 5 minutes and 2 hours, scored by CRPS.",
    score_name="CRPS of the predicted return density, in basis points",
)

RULES = CallableRules(
    model_base_class="competitions.crypto_density.model_base:DensityModel",
    input_builder=f"{LOGIC}:build_inference_input",
    call_builder=f"{LOGIC}:build_model_calls",
    output_validator=f"{LOGIC}:validate_output",
    ground_truth_resolver=f"{LOGIC}:resolve_ground_truth",
    scoring_function=f"{LOGIC}:crps_score",
)


def build_definitions(spec: CompetitionSpec = SPEC, **overrides) -> dg.Definitions:
    return build_competition_definitions(spec, RULES, models_dir=MODELS_DIR, feed_defaults=FEED, settings=SETTINGS,
                                         **overrides)


defs = build_definitions()

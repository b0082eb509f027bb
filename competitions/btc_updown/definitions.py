"""BTC up/down: will BTC be higher 60 s from now? A prediction every 60 s, Brier skill scoring,
tiered frac64 emission. The reference coordinator's starter competition, as a code location."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from crunch_assets.definitions import build_competition_definitions
from crunch_assets.rules import CallableRules
from crunch_assets.spec import CompetitionSpec, Scope
from resources.feeds.base import FeedResource
from resources.feeds.csv_replay import CsvReplayFeed
from resources.feeds.synthetic import SyntheticFeed
from resources.model_runners.base import ModelRunnerResource
from resources.model_runners.local import LocalModelRunner

MODELS_DIR = Path(__file__).with_name("models")
LOGIC = "competitions.btc_updown.logic"

SPEC = CompetitionSpec(
    slug="btc_updown",
    start=datetime(2026, 11, 1, tzinfo=timezone.utc),
    scopes=(Scope(subject="BTC", resolve_horizon_seconds=60, prediction_interval_seconds=60),),
    description="Will BTC/USD be higher one minute from now?",
)

RULES = CallableRules(
    failure_score=0.0,  # the worst Brier skill: failing or staying silent never beats answering
    model_base_class="competitions.btc_updown.model_base:UpDownModel",
    input_builder=f"{LOGIC}:build_inference_input",
    call_builder=f"{LOGIC}:build_model_calls",
    output_validator=f"{LOGIC}:validate_output",
    ground_truth_resolver=f"{LOGIC}:resolve_ground_truth",
    scoring_function=f"{LOGIC}:brier_skill",
    emission_builder=f"{LOGIC}:build_emission",
)


def feed_from_environment() -> FeedResource:
    """CRUNCH_BTC_UPDOWN_FEED = synthetic (default, offline) | csv (CRUNCH_BTC_UPDOWN_CSV = path)."""
    choice = os.environ.get("CRUNCH_BTC_UPDOWN_FEED", "synthetic")
    if choice == "synthetic":
        return SyntheticFeed()
    if choice == "csv":
        return CsvReplayFeed(path=os.environ["CRUNCH_BTC_UPDOWN_CSV"], source="csv")
    raise ValueError(f"CRUNCH_BTC_UPDOWN_FEED={choice!r}: expected 'synthetic' or 'csv'")


def build_definitions(
    spec: CompetitionSpec = SPEC,
    feed: FeedResource | None = None,
    model_runner: ModelRunnerResource | None = None,
    automation_running: bool = True,
) -> dg.Definitions:
    return build_competition_definitions(
        spec=spec,
        rules=RULES,
        feed=feed or feed_from_environment(),
        model_runner=model_runner or LocalModelRunner(models_dir=str(MODELS_DIR), call_timeout_seconds=5.0),
        automation_running=automation_running,
    )


defs = build_definitions()

"""BTC up/down: will BTC be higher 60 s from now? A prediction every 60 s, Brier skill scoring,
tiered frac64 emission. The reference coordinator's starter competition, as a code location."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import dagster as dg

from crunch_assets.definitions import build_competition_definitions
from crunch_assets.rules import CallableRules
from crunch_assets.spec import CompetitionSpec, Scope
from resources.feeds.base import FeedResource
from resources.feeds.binance import BinanceFeed
from resources.feeds.csv_replay import CsvReplayFeed
from resources.feeds.pyth import PythFeed
from resources.feeds.synthetic import SyntheticFeed
from resources.model_runners.base import ModelRunnerResource
from resources.model_runners.local import LocalModelRunner

MODELS_DIR = Path(__file__).with_name("models")
LOGIC = "competitions.btc_updown.logic"

SPEC = CompetitionSpec(
    slug="btc_updown",
    # Overridable so that a past range (e.g. the CSV replay data from 2025-01-07T01:00Z) can be
    # backfilled from the UI.
    start=datetime.fromisoformat(os.environ.get("CRUNCH_BTC_UPDOWN_START", "2026-11-01T00:00:00+00:00")),
    scopes=(Scope(subject="BTC", resolve_horizon_seconds=60, prediction_interval_seconds=60),),
    checkpoint_interval_seconds=int(os.environ.get("CRUNCH_BTC_UPDOWN_CHECKPOINT_INTERVAL_SECONDS", "604800")),
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
    """CRUNCH_BTC_UPDOWN_FEED: synthetic (default: offline, deterministic) | csv (path in
    CRUNCH_BTC_UPDOWN_CSV) | binance (CRUNCH_BINANCE_BASE_URL) | pyth (CRUNCH_PYTH_HISTORY_URL,
    CRUNCH_PYTH_HERMES_URL, API key from CRUNCH_PYTH_API_KEY)."""
    choice = os.environ.get("CRUNCH_BTC_UPDOWN_FEED", "synthetic")
    if choice == "synthetic":
        return SyntheticFeed()
    if choice == "csv":
        return CsvReplayFeed(path=os.environ["CRUNCH_BTC_UPDOWN_CSV"], source="csv")
    if choice == "binance":
        return BinanceFeed(base_url=os.environ.get("CRUNCH_BINANCE_BASE_URL", "https://api.binance.com"))
    if choice == "pyth":
        return PythFeed(
            history_base_url=os.environ.get("CRUNCH_PYTH_HISTORY_URL", "https://benchmarks.pyth.network"),
            hermes_base_url=os.environ.get("CRUNCH_PYTH_HERMES_URL", "https://hermes.pyth.network"),
            api_key=dg.EnvVar("CRUNCH_PYTH_API_KEY") if os.environ.get("CRUNCH_PYTH_API_KEY") else None,
        )
    raise ValueError(f"CRUNCH_BTC_UPDOWN_FEED={choice!r}: expected synthetic, csv, binance or pyth")


def model_runner_from_environment() -> ModelRunnerResource:
    """CRUNCH_BTC_UPDOWN_RUNNER: local (default: the models in ./models, each in its own process) |
    orchestrator (CRUNCH_ORCHESTRATOR_HOST, CRUNCH_ORCHESTRATOR_PORT, CRUNCH_ORCHESTRATOR_CRUNCH_ID)."""
    choice = os.environ.get("CRUNCH_BTC_UPDOWN_RUNNER", "local")
    if choice == "local":
        return LocalModelRunner(models_dir=str(MODELS_DIR), call_timeout_seconds=5.0)
    if choice == "orchestrator":
        # imported here: model-runner-client brings pandas and grpc (~0.5 s in every run process)
        from resources.model_runners.orchestrator import OrchestratorModelRunner

        return OrchestratorModelRunner(
            host=os.environ["CRUNCH_ORCHESTRATOR_HOST"],
            port=int(os.environ["CRUNCH_ORCHESTRATOR_PORT"]),
            crunch_id=os.environ["CRUNCH_ORCHESTRATOR_CRUNCH_ID"],
            call_timeout_seconds=5.0,
            connect_timeout_seconds=5.0,  # a cycle must not wait long for an unreachable node
        )
    raise ValueError(f"CRUNCH_BTC_UPDOWN_RUNNER={choice!r}: expected local or orchestrator")


def build_definitions(
    spec: CompetitionSpec = SPEC,
    feed: FeedResource | None = None,
    model_runner: ModelRunnerResource | None = None,
    automation_running: bool | None = None,
) -> dg.Definitions:
    if automation_running is None:  # CRUNCH_AUTOMATION=off starts sensors and schedules STOPPED
        automation_running = os.environ.get("CRUNCH_AUTOMATION", "on") != "off"
    return build_competition_definitions(
        spec=spec,
        rules=RULES,
        feed=feed or feed_from_environment(),
        model_runner=model_runner or model_runner_from_environment(),
        automation_running=automation_running,
    )


defs = build_definitions()

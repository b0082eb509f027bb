"""BTC up/down: will BTC be higher 60 s from now? A prediction every 60 s, Brier skill scoring,
the reference's tiered frac64 emission. The reference coordinator's starter competition, as a
code location. Feed, model runner, automation and emission accounts come from the environment
(see crunch_assets/settings.py: CRUNCH_BTC_UPDOWN_FEED, _RUNNER, _AUTOMATION, ...)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from crunch_assets.definitions import build_competition_definitions
from crunch_assets.rules import CallableRules
from crunch_assets.settings import CompetitionSettings
from crunch_assets.spec import CompetitionSpec, CopyDetection, EmissionPolicy, FailurePolicy, Scope

MODELS_DIR = Path(__file__).with_name("models")
LOGIC = "competitions.btc_updown.logic"
SETTINGS = CompetitionSettings("btc_updown")

SPEC = CompetitionSpec(
    slug="btc_updown",
    # Overridable so that a past range (e.g. the CSV replay data from 2025-01-07T01:00Z) can be
    # backfilled from the UI.
    start=SETTINGS.instant("START", datetime(2026, 11, 1, tzinfo=timezone.utc)),
    scopes=(Scope(subject="BTC", resolve_horizon_seconds=60, prediction_interval_seconds=60),),
    # The worst Brier skill: failing, staying silent or joining late never beats answering.
    failure_policy=FailurePolicy.constant(0.0),
    emission=EmissionPolicy.tiered(),
    # The neutral answer is what a model says when it knows nothing: two models agreeing on it are
    # not copying each other, so it never counts as a match (nor as a common cycle). Compared with
    # the stored output, as validate_output normalised it.
    copy_detection=CopyDetection.pay_first(never_match=({"p_up": 0.5, "form": "p_up"},)),
    checkpoint_interval_seconds=SETTINGS.integer("CHECKPOINT_INTERVAL_SECONDS", 604800),
    description="Will BTC/USD be higher one minute from now?",
    score_name="Brier skill, 1 - (p_up - outcome)^2, from 0 to 1 (0.75 for a coin flip)",
)

RULES = CallableRules(
    model_base_class="competitions.btc_updown.model_base:UpDownModel",
    input_builder=f"{LOGIC}:build_inference_input",
    call_builder=f"{LOGIC}:build_model_calls",
    output_validator=f"{LOGIC}:validate_output",
    ground_truth_resolver=f"{LOGIC}:resolve_ground_truth",
    scoring_function=f"{LOGIC}:brier_skill",
)


def build_definitions(spec: CompetitionSpec = SPEC, **overrides) -> dg.Definitions:
    """The code location; tests and benchmarks override the spec, feed, runner or automation."""
    return build_competition_definitions(spec, RULES, models_dir=MODELS_DIR, settings=SETTINGS, **overrides)


defs = build_definitions()

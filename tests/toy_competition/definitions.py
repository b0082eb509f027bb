"""The toy competition's code location (tests only)."""

from datetime import datetime, timezone
from pathlib import Path

from crunch_assets.definitions import build_competition_definitions
from crunch_assets.rules import CallableRules
from crunch_assets.spec import CompetitionSpec, EmissionPolicy, FailurePolicy, Scope
from tests.toy_competition.logic import OutcomeLedger, StationFeed

LOGIC = "tests.toy_competition.logic"
SPEC = CompetitionSpec(
    slug="toy_weather",
    start=datetime(2026, 11, 16, tzinfo=timezone.utc),
    scopes=(Scope("station_a", resolve_horizon_seconds=1800, prediction_interval_seconds=600),),
    failure_policy=FailurePolicy.constant(0.0),
    emission=EmissionPolicy.proportional(floor_pct=20.0),
    checkpoint_interval_seconds=3 * 3600,
    history_seconds=3600,
    max_price_staleness_seconds=60,
)
RULES = CallableRules(
    model_base_class="tests.toy_competition.model_base:ToyModel",
    input_builder=f"{LOGIC}:build_input",
    call_builder=f"{LOGIC}:build_calls",
    output_validator=f"{LOGIC}:validate",
    ground_truth_resolver=f"{LOGIC}:resolve",
    scoring_function=f"{LOGIC}:log_score",
    cross_sectional=f"{LOGIC}:relative_to_field",
    input_schema=f"{LOGIC}:ToyInput",
    output_schema=f"{LOGIC}:ToyOutput",
    score_schema=f"{LOGIC}:ToyScore",
)


def build_definitions(spec=SPEC, models_dir=Path(__file__).with_name("models"), ledger=None):
    return build_competition_definitions(spec, RULES, models_dir=models_dir, feed=StationFeed(),
                                         ground_truth=ledger or OutcomeLedger(), automation_running=False)


defs = build_definitions()

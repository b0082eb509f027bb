"""One call turns a competition (spec + rules) into a Dagster code location."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from crunch_assets import ensembles
from crunch_assets.defs.checkpoints.definitions import build_checkpoints_definitions
from crunch_assets.defs.feed.definitions import build_feed_definitions
from crunch_assets.defs.feed_maintenance.definitions import build_feed_maintenance_definitions
from crunch_assets.defs.housekeeping.definitions import build_housekeeping_definitions
from crunch_assets.defs.live_window.definitions import build_live_window_definitions
from crunch_assets.defs.predictions.definitions import build_predictions_definitions
from crunch_assets.defs.registry.definitions import build_registry_definitions
from crunch_assets.defs.rollups.definitions import build_rollups_definitions
from crunch_assets.defs.scores.definitions import build_scores_definitions
from crunch_assets.defs.stage import StageContext
from crunch_assets.fingerprint import ENGINE_VERSION, rules_book
from crunch_assets.jobs import build_jobs
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import build_partitions
from crunch_assets.rules import CallableRules, CompetitionRules, FeedGroundTruth, GroundTruthResource
from crunch_assets.settings import CompetitionSettings, FeedDefaults
from crunch_assets.spec import CompetitionSpec, check_feed_cadence
from resources.payout_accounts import PayoutAccounts
from resources.feeds.base import FeedResource
from resources.model_runners.base import ModelRunnerResource
from resources.store.database import CrunchDatabase

# Each stage's own Definitions (crunch_assets/defs/<stage>/definitions.py), merged into the code location.
STAGES = (
    build_feed_definitions, build_predictions_definitions, build_scores_definitions, build_rollups_definitions,
    build_checkpoints_definitions, build_registry_definitions, build_feed_maintenance_definitions,
    build_live_window_definitions, build_housekeeping_definitions,
)


def build_competition_definitions(
    spec: CompetitionSpec,
    rules: CompetitionRules,
    *,
    models_dir: str | Path | None = None,
    feed_defaults: FeedDefaults = FeedDefaults(),
    feed: FeedResource | None = None,
    model_runner: ModelRunnerResource | None = None,
    ground_truth: GroundTruthResource | None = None,
    database: CrunchDatabase | None = None,
    payout_accounts: PayoutAccounts | None = None,
    automation_running: bool | None = None,
    settings: CompetitionSettings | None = None,
) -> dg.Definitions:
    """Assets (keys prefixed with the slug), their checks, jobs, sensors and schedules, and the
    resources `database`, `rules`, `feed`, `model_runner`, `ground_truth`, `payout_accounts`.

    Whatever is not passed comes from the environment (crunch_assets.settings), identically for
    every competition: the feed source (with this competition's kind and granularity), the model
    runner (local models from `models_dir`, or the orchestrator), the automation switch and the
    emission accounts. The wiring is checked here, when the code location loads: a bad callable
    path, a subject the feed cannot serve, a bad setting, or scopes whose cycles the feed cannot
    price within max_price_staleness_seconds fail with a message naming it. The rules fingerprint
    is computed here too (crunch_assets/fingerprint.py): the Definitions' metadata
    `rules_fingerprint` (in force now) and `rules_versions` (every declared version), and the
    scores and checkpoint assets' metadata.
    """
    settings = settings or CompetitionSettings(spec.slug)
    if isinstance(rules, CallableRules):
        rules.check_wiring()
    ensembles.check_declarations(spec)  # ensembles' and metrics' callables: a bad path fails the load
    feed = feed or settings.feed(feed_defaults, csv_subjects=spec.subjects)
    feed.validate_stream()
    feed.validate_subjects(spec.subjects)
    ground_truth = ground_truth or FeedGroundTruth()
    if ground_truth.reads_feed:
        check_feed_cadence(spec, feed.kind, observation_interval_seconds(feed))
    if model_runner is None:
        if models_dir is None:
            raise ValueError(f"{spec.slug}: pass models_dir (the local models) or a model_runner")
        model_runner = settings.model_runner(str(models_dir))
    # The rules fingerprint, computed at load: a declared rules change that cannot apply fails here.
    book = rules_book(spec, rules, ground_truth)
    running = settings.automation if automation_running is None else automation_running
    partitions = build_partitions(spec)
    keys = ChainKeys.for_slug(spec.slug)
    # Shown on the assets written under the rules (each run records the version in force at its cycles).
    fingerprinted = {"rules_fingerprint": book.current.fingerprint, "rules_engine_version": ENGINE_VERSION,
                     "rules_versions": len(book.versions)}
    stage = StageContext(spec, partitions, keys, build_jobs(spec, partitions, keys), running, fingerprinted)
    competition = dg.Definitions(
        resources={
            "database": database or CrunchDatabase(),
            "rules": rules,
            "feed": feed,
            "model_runner": model_runner,
            "ground_truth": ground_truth,
            "payout_accounts": payout_accounts or settings.payout_accounts(),
        },
        executor=dg.in_process_executor,
        metadata={"rules_fingerprint": book.current.fingerprint, "rules_versions": book.schedule()},
    )
    return dg.Definitions.merge(competition, *(build_stage(stage) for build_stage in STAGES))


def observation_interval_seconds(feed: FeedResource) -> int | None:
    """How often the feed observes a price: a candle's (or any barred record's) length, a tick
    feed's declared interval (the synthetic feed's), None when not known (a live tick source)."""
    if feed.granularity_seconds > 0:
        return feed.granularity_seconds
    return getattr(feed, "tick_interval_seconds", None)

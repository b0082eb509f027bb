"""One call turns a competition (spec + plug-ins) into a Dagster code location."""

from __future__ import annotations

import dagster as dg

from crunch_assets.assets import ChainKeys, build_chain_assets
from crunch_assets.automation import build_automation, build_jobs
from crunch_assets.feed_maintenance import build_feed_maintenance
from crunch_assets.partitions import build_partitions
from crunch_assets.rules import CallableRules, CompetitionRules
from crunch_assets.spec import CompetitionSpec
from resources.feeds.base import FeedResource
from resources.model_runners.base import ModelRunnerResource
from resources.store.database import CrunchDatabase


def build_competition_definitions(
    spec: CompetitionSpec,
    rules: CompetitionRules,
    feed: FeedResource,
    model_runner: ModelRunnerResource,
    database: CrunchDatabase | None = None,
    automation_running: bool = False,
) -> dg.Definitions:
    """Assets (keys prefixed with the slug), their checks, jobs, sensors and schedules.

    The wiring is checked here, when the code location loads: a bad callable path or a subject
    the feed cannot serve fails with a message naming it.
    """
    if isinstance(rules, CallableRules):
        rules.check_wiring()
    feed.validate_subjects(spec.subjects)
    partitions = build_partitions(spec)
    keys = ChainKeys.for_slug(spec.slug)
    jobs = build_jobs(spec, partitions, keys)
    sensors, schedules = build_automation(spec, partitions, keys, jobs, running=automation_running)
    archive_assets, maintenance_jobs, maintenance_schedules = build_feed_maintenance(
        spec, partitions, keys, retention_days=spec.feed_retention_days, running=automation_running
    )
    return dg.Definitions(
        assets=build_chain_assets(spec, partitions, keys) + archive_assets,
        jobs=jobs.all() + maintenance_jobs,
        sensors=sensors,
        schedules=schedules + maintenance_schedules,
        resources={
            "database": database or CrunchDatabase(),
            "rules": rules,
            "feed": feed,
            "model_runner": model_runner,
        },
        executor=dg.in_process_executor,
    )

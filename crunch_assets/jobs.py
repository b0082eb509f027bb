"""The jobs a competition's automation launches (each on the in-process executor: small steps,
one process per run)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import dagster as dg

from crunch_assets.keys import ChainKeys
from crunch_assets.defs.live_window.window import build_live_job
from crunch_assets.defs.housekeeping.observability import LAG_CHECKS
from crunch_assets.partitions import CompetitionPartitions
from crunch_assets.spec import CompetitionSpec


@dataclass(frozen=True)
class CompetitionJobs:
    feed: dg.UnresolvedAssetJobDefinition
    cycle: dg.UnresolvedAssetJobDefinition
    scores: dg.UnresolvedAssetJobDefinition
    rollup: dg.UnresolvedAssetJobDefinition
    checkpoint: dg.UnresolvedAssetJobDefinition
    registry: dg.UnresolvedAssetJobDefinition
    live: dg.JobDefinition

    def all(self) -> list[dg.UnresolvedAssetJobDefinition]:
        return [getattr(self, f.name) for f in fields(self)]


def build_jobs(spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys) -> CompetitionJobs:
    # The lag checks judge the whole competition, not the partition a job materializes: their
    # sensor evaluates them, not every cycle or backfill run.
    lag_checks = dg.AssetSelection.checks(*(dg.AssetCheckKey(getattr(keys, asset), name) for asset, name in LAG_CHECKS.items()))

    def job(name: str, selection: list[dg.AssetKey], partitions_def, description: str):
        return dg.define_asset_job(
            f"{spec.slug}__{name}",
            selection=dg.AssetSelection.assets(*selection) - lag_checks,
            partitions_def=partitions_def,
            executor_def=dg.in_process_executor,
            description=description,
            tags={"crunch/competition": spec.slug},
        )

    return CompetitionJobs(
        feed=job("feed_job", [keys.feed_records], partitions.hourly, "Ingest the feed of an hour."),
        cycle=job("cycle_job", [keys.feed_records, keys.predictions], partitions.hourly,
                  "Ingest the feed and run the due prediction cycles of an hour."),
        scores=job("score_job", [keys.scores], partitions.hourly, "Resolve and score the settled cycles of an hour."),
        rollup=job("rollup_job", [keys.snapshots, keys.leaderboard], partitions.daily,
                   "Refresh a day's snapshots and the leaderboard."),
        checkpoint=job("checkpoint_job", [keys.emission_checkpoints], partitions.checkpoint.definition,
                       "Build a period's emission checkpoint."),
        registry=job("model_registry_job", [keys.model_registry], None, "Sync the model registry from the model runner."),
        live=build_live_job(spec, partitions, keys),
    )

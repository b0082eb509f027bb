"""What every stage's `build_*_definitions` receives: the competition's spec, partitions, asset
keys and jobs (crunch_assets/jobs.py, shared: a job's selection excludes the lag checks of
another stage), and whether its sensors and schedules start running."""

from __future__ import annotations

from dataclasses import dataclass, field

from crunch_assets.jobs import CompetitionJobs
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions
from crunch_assets.spec import CompetitionSpec


@dataclass(frozen=True)
class StageContext:
    spec: CompetitionSpec
    partitions: CompetitionPartitions
    keys: ChainKeys
    jobs: CompetitionJobs
    running: bool
    # shown on the assets written under the rules (the scores' and the checkpoints')
    rules_metadata: dict = field(default_factory=dict)

"""The model registry sensor: the runner's models differ from the registry (or the registry asset
was never materialized while the store holds models) -> a registry run.

`decide_registry` is the decision over `RegistryFacts`; `build_registry_sensor` the wrapper."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import dagster as dg

from crunch_assets.decisions import Decision, floor_to
from crunch_assets.defs.registry.assets import registry_changes
from crunch_assets.keys import ChainKeys
from crunch_assets.spec import CompetitionSpec
from resources import clock
from resources.model_runners.base import ModelRunnerResource
from resources.store.database import CrunchDatabase


@dataclass(frozen=True)
class RegistryFacts:
    now: datetime
    stored: dict[str, str] = field(default_factory=dict)  # model id -> state, as the registry holds them
    served: list = field(default_factory=list)  # the runner's models (model_runner.list_models())
    ever_materialized: bool = True  # the registry asset has a materialization in Dagster


def decide_registry(spec: CompetitionSpec, facts: RegistryFacts) -> Decision:
    changes = registry_changes(facts.stored, facts.served)
    if not changes and facts.stored and not facts.ever_materialized:
        changes = ["never materialized"]  # the store holds models the UI has never shown
    if not changes:
        return Decision.skip(f"{len(facts.stored)} model(s), no change")
    request = dg.RunRequest(run_key=f"{spec.slug}:registry:{'|'.join(changes)}:{floor_to(facts.now, 60).isoformat()}",
                            tags={"crunch/registry_changes": "; ".join(changes)[:200]})
    return Decision.of([(request, "; ".join(changes))], otherwise="")


def build_registry_sensor(spec: CompetitionSpec, keys: ChainKeys, registry_job,
                          status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.slug}__model_registry_sensor", job=registry_job, default_status=status,
        minimum_interval_seconds=spec.registry_sensor_interval_seconds,
        description="Requests a model registry sync when the runner's models differ from the registry.",
    )
    def model_registry_sensor(context: dg.SensorEvaluationContext, database: CrunchDatabase,
                              model_runner: ModelRunnerResource):
        stored = {m.model_id: m.state for m in database.competition(spec.slug).models()}
        served = model_runner.list_models()
        materialized = context.instance.get_latest_materialization_event(keys.model_registry) is not None \
            if stored else True
        return decide_registry(spec, RegistryFacts(clock.now(), stored, served, materialized)).sensor_result()

    return model_registry_sensor

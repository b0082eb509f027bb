"""The model registry: the models table kept current from the model runner, written by this asset
(and by the predictions stage's sightings, through the same store method)."""


import dagster as dg

from crunch_assets.keys import ChainKeys
from crunch_assets.spec import CompetitionSpec
from crunch_assets.stages import table_metadata
from resources import clock
from resources.model_runners.base import ModelRunnerResource
from resources.store.competition import CompetitionStore
from resources.store.database import CrunchDatabase


def registry_changes(stored_states: dict[str, str], listed: list) -> list[str]:
    """What syncing `listed` would change: joins, state changes, leaves (for the sensor)."""
    changes = []
    listed_ids = set()
    for info in listed:
        listed_ids.add(info.model_id)
        if info.model_id not in stored_states:
            changes.append(f"JOINED {info.model_id}")
        elif stored_states[info.model_id] != info.state:
            changes.append(f"STATE_CHANGED {info.model_id}: {stored_states[info.model_id]} -> {info.state}")
    changes += [f"LEFT {m}" for m, state in sorted(stored_states.items()) if m not in listed_ids and state != "GONE"]
    return changes


def registry_metadata(store: CompetitionStore, changes: list[str], refused: dict[str, str]) -> dict:
    """What every materialization of the registry shows: the models as stored, what this sync
    changed, and the models the runner refused to register (with the reason)."""
    models = store.models()
    return {
        "models": len(models),
        "changes": changes,
        "registry": table_metadata(
            [("model_id", "string"), ("name", "string"), ("participant", "string"), ("cruncher_index", "int"),
             ("state", "string")],
            [{"model_id": m.model_id, "name": m.name, "participant": m.player_id or m.model_id,
              "cruncher_index": m.cruncher_index, "state": m.state} for m in models],
        ),
        "refused_models": table_metadata([("name", "string"), ("reason", "string")],
                                         [{"name": name, "reason": reason} for name, reason in sorted(refused.items())]),
    }


def report_registry_sync(context, keys: ChainKeys, store: CompetitionStore, changes: list[str],
                         model_runner: ModelRunnerResource) -> None:
    """A run that synced the registry on the way (the models a session sees: predictions, the live
    run) materializes it, so the UI shows the registry the store holds."""
    context.log_event(dg.AssetMaterialization(keys.model_registry, metadata={
        **registry_metadata(store, changes, model_runner.refused_models()), "synced_by": "the models a session saw"}))


def build_registry_asset(spec: CompetitionSpec, keys: ChainKeys) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.model_registry,
        group_name=spec.slug,
        description="The competition's models (names, participants, state, cruncher_index), synced from the model "
                    "runner (a local models directory declares participants in participants.json / .toml); "
                    "joins, leaves and state changes are model_events. Models whose id the runner refused are listed "
                    "with the reason.",
        kinds={"postgres"},
    )
    def model_registry(database: CrunchDatabase, model_runner: ModelRunnerResource) -> dg.MaterializeResult:
        store = database.competition(spec.slug)
        events = store.sync_models(model_runner.list_models(), clock.now(), complete=True)
        return dg.MaterializeResult(metadata=registry_metadata(
            store, [f"{e.event} {e.model_id}" for e in events], model_runner.refused_models()))

    return model_registry

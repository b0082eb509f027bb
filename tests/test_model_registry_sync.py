"""The live run syncs its models into the registry before every cycle (a partial sync). At 1,000
models that was an upsert of 1,000 rows a cycle for nothing but last_seen_at; a partial sync of the
list it wrote last, within PARTIAL_RESYNC_SECONDS, now writes nothing. Whatever changes is still
written at once."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from resources.model_runners.base import ModelInfo
from resources.store.competition import PARTIAL_RESYNC_SECONDS, CompetitionStore
from resources.store.database import engine_for

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 10, tzinfo=timezone.utc)


def seen(store: CompetitionStore) -> dict[str, tuple]:
    return {m.model_id: (m.first_seen_at, m.last_seen_at, m.name, m.state) for m in store.models()}


def test_a_repeated_partial_sync_writes_nothing_until_the_list_changes_or_time_passes(clean_database):
    store = CompetitionStore(engine_for(), "btc_updown")
    listed = [ModelInfo(f"m-{k}", f"model {k}", meta={"path": f"/models/m-{k}.py"}) for k in range(3)]
    joined = store.sync_models(listed, START, complete=False)
    assert [e.event for e in joined] == ["JOINED"] * 3
    first = seen(store)

    # the same list a cycle later: nothing written (last_seen_at stays), nothing reported
    assert store.sync_models(listed, START + timedelta(seconds=60), complete=False) == []
    assert seen(store) == first

    # ... but a renamed model, or a new one, is written at once (and moves last_seen_at)
    renamed = [replace(listed[0], name="renamed"), *listed[1:]]
    assert store.sync_models(renamed, START + timedelta(seconds=120), complete=False) == []
    after_rename = seen(store)
    assert after_rename["m-0"][2] == "renamed" and after_rename["m-1"][1] == START + timedelta(seconds=120)
    grown = [*renamed, ModelInfo("m-new", "newcomer")]
    assert [(e.event, e.model_id) for e in store.sync_models(grown, START + timedelta(seconds=180), complete=False)] == [
        ("JOINED", "m-new")]

    # the same list again, once the resync interval has passed: last_seen_at moves
    later = START + timedelta(seconds=180 + PARTIAL_RESYNC_SECONDS)
    store.sync_models(grown, later, complete=False)
    assert {model_id: row[1] for model_id, row in seen(store).items()} == dict.fromkeys(["m-0", "m-1", "m-2", "m-new"], later)

    # time going backwards (a backfill of earlier cycles in the same store) is synced, never skipped
    earlier = START - timedelta(hours=1)
    store.sync_models(grown, earlier, complete=False)
    assert seen(store)["m-1"][0] == earlier  # first_seen_at widened back


def test_a_complete_sync_is_never_skipped_and_a_partial_one_after_it_is_written(clean_database):
    store = CompetitionStore(engine_for(), "btc_updown")
    listed = [ModelInfo("m-a", "a"), ModelInfo("m-b", "b")]
    store.sync_models(listed, START, complete=True)
    store.sync_models(listed[:1], START + timedelta(seconds=30), complete=True)  # m-b no longer listed
    assert seen(store)["m-b"][3] == "GONE"
    # a partial sync right after lists m-b again: written (identity refreshed, last seen moved)
    store.sync_models(listed, START + timedelta(seconds=60), complete=False)
    assert seen(store)["m-b"][1] == START + timedelta(seconds=60)

"""Competitions for the participant page's tests (and scripts/screenshots), each in the store the
way the engine leaves it:

- crypto_density (three subjects, two horizons: six scopes, CRPS: lower is better), replayed from
  the synthetic feed for 24 hours with a 6-hour hole in the middle (nothing ran in it, as between a
  replay and a live start);
- "crowd": 200 models, among them one with a 180-character id and one with a non-ASCII id, one
  quarantined, one failing every cycle with a public reason and one whose failure is not resolved
  yet; hourly snapshots and leaderboards, and 29 hourly checkpoints (the 30th hour is the period in
  progress) built by the engine's own functions
  (leaderboard_entries, build_checkpoint) from stored snapshots and rollups, the two oldest PAID;
- "empty": a competition with nothing stored.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from tests.api.conftest import accounts

DENSITY_START = datetime(2025, 1, 7, 0, tzinfo=timezone.utc)
DENSITY_HOLE = (DENSITY_START + timedelta(hours=10), DENSITY_START + timedelta(hours=16))
DENSITY_END = DENSITY_START + timedelta(hours=24)
CROWD_START = datetime(2025, 1, 7, 0, tzinfo=timezone.utc)
CROWD_HOURS = 30
CROWD_MODELS = 200
LONG_ID = ("a_model_whose_participant_chose_a_very_long_identifier_" + "_".join(f"part{i:02d}" for i in range(30)))[:180]
# Model ids are ASCII (resources/model_ids.py: the registry refuses others); the name a participant
# shows is not: this model has an ASCII id and a non-ASCII name.
NON_ASCII_ID = "model-zurich-accented"
QUARANTINED_ID = "model_003"
FAILING_ID = "flaky"  # fails 10 of 60 cycles an hour; its last failure is resolved (reason public)
EMBARGOED_ID = "secretive"  # its last failure is in a cycle not resolved yet (reason withheld)
FAILING_REASON = "error: ValueError: bad window (at model.py:12 in predict)"
PUBLIC_FAILING_REASON = "error: model raised ValueError"
PAID_CHECKPOINTS = 2
TX_HASH = "5" + "Kx9" * 21 + "q"


def density_spec():
    from competitions.crypto_density.definitions import SPEC

    return replace(SPEC, start=DENSITY_START, checkpoint_interval_seconds=6 * 3600)


def replay_density(url: str) -> None:
    """crypto_density's 24 hours from the synthetic feed, less the hole."""
    from competitions.crypto_density.definitions import build_definitions
    from crunch_assets.replay import replay
    from resources.feeds.synthetic import SyntheticFeed
    from resources.store.database import CrunchDatabase

    spec = density_spec()
    defs = build_definitions(spec=spec, feed=SyntheticFeed(kind="candle", granularity_seconds=60),
                             automation_running=False, database=CrunchDatabase(url=url), payout_accounts=accounts())
    replay(defs, spec, DENSITY_START, DENSITY_HOLE[0])
    replay(defs, spec, DENSITY_HOLE[1], DENSITY_END)


def crowd_spec():
    from competitions.btc_updown.definitions import SPEC

    return replace(SPEC, slug="crowd", start=CROWD_START, checkpoint_interval_seconds=3600,
                   description="Two hundred models (test data written through the store).")


def empty_spec():
    from competitions.btc_updown.definitions import SPEC

    return replace(SPEC, slug="empty", start=CROWD_START, description="Nothing has run yet.")


def crowd_ids() -> list[str]:
    special = [LONG_ID, NON_ASCII_ID, FAILING_ID, EMBARGOED_ID]
    return special + [f"model_{i:03d}" for i in range(CROWD_MODELS - len(special))]


@dataclass(frozen=True)
class Listed:
    """A model as a runner lists it (what sync_models reads)."""

    model_id: str
    name: str
    player_id: str | None
    player_name: str | None
    deployment_id: str | None = None
    state: str = "RUNNING"
    meta: dict | None = None


def write_crowd(url: str) -> None:
    from competitions.btc_updown.definitions import RULES
    from crunch_assets.defs.checkpoints.assets import build_checkpoint
    from crunch_assets.publication import RootSink, publish
    from crunch_assets.model_health import QUARANTINE_META_KEY, QUARANTINED
    from crunch_assets.defs.rollups.assets import leaderboard_entries
    from crunch_assets.settings import CompetitionSettings
    from resources.store.database import CrunchDatabase
    from resources.store.rows import (
        CycleRollupRow, CycleWrite, InputRow, ModelEventRow, PredictionRow, Resolution, ScoreRow, SnapshotRow,
    )

    spec = crowd_spec()
    store = CrunchDatabase(url=url).competition(spec.slug)
    scope = spec.scopes[0]
    rng = random.Random(7)
    ids = crowd_ids()
    listed = [Listed(m, "Модель αβγ (Zürich)" if m == NON_ASCII_ID else m, f"player_{m}", f"Player {m[:12]}")
              for m in ids]
    listed.append(Listed("model_000_b", "model_000_b", "player_model_000", "Player model_000"))  # a second model
    rng.shuffle(listed)  # cruncher indexes follow the registration order, not the ranking
    store.sync_models(listed, CROWD_START, complete=True)
    skill = {m.model_id: 0.55 + 0.4 * rng.random() for m in listed}
    hour = timedelta(hours=1)
    snapshots, rollups = [], []
    for h in range(CROWD_HOURS):
        start = CROWD_START + h * hour
        rollups.append(CycleRollupRow(scope.key, start, start + hour, 60, 0, 0.0, 60 * len(listed)))
        for m in listed:
            value = min(1.0, max(0.0, skill[m.model_id] + rng.gauss(0, 0.03)))
            scored, failed = (50, 10) if m.model_id == FAILING_ID else (60, 0)
            snapshots.append(SnapshotRow(m.model_id, scope.key, start, start + hour, 60, scored * value, 0.0,
                                         {"value": value}, {"scored": scored, "failed": failed}))
    store.write_rollups(snapshots, rollups)
    for h in range(1, CROWD_HOURS + 1):
        as_of = CROWD_START + h * hour
        period = (as_of - hour, as_of)
        store.write_leaderboard(as_of, leaderboard_entries(spec, RULES, store, as_of - timedelta(microseconds=1), period),
                                {"period_start": period[0].isoformat(), "period_end": period[1].isoformat()})
        if h == CROWD_HOURS:
            break  # the last hour is the checkpoint period in progress
        built = build_checkpoint(spec, RULES, store, accounts(), period[0], period[1])
        store.rules.record([built.rules_document])  # as the checkpoint asset does
        stored = store.write_pending_checkpoint(period[0], period[1], built.entries, built.merkle_root,
                                                built.chained_root, built.meta, built.commitment_scheme)
        publish(RootSink.from_settings(CompetitionSettings(spec.slug)), stored)  # as the checkpoint asset does
    # The crowd is synthetic (snapshots with no scores behind them): the real gate refuses it, as it must.
    # The page only shows paid checkpoints, so they move through the database's own function with a gate
    # result that says what it is.
    payout_store = _payout_store(url, spec.slug)
    for checkpoint in store.checkpoints()[:PAID_CHECKPOINTS]:
        gate = {"passed": True, "checks": [{"name": "synthetic_page_data", "passed": True, "detail": "page test data"}],
                "checkpoint_updated_at": checkpoint.updated_at.isoformat(), "merkle_root": checkpoint.merkle_root,
                "chained_root": checkpoint.chained_root}
        for status in ("SUBMITTED", "CLAIMABLE", "PAID"):
            payout_store.transition(checkpoint.id, status, actor="page-tests",
                                    tx_hash=TX_HASH if status == "SUBMITTED" else None,
                                    gate=gate if status == "SUBMITTED" else None)
    # two failures in the last hour: one resolved (scored as failed: its reason is public), one not
    last = CROWD_START + CROWD_HOURS * hour
    now = datetime.now(timezone.utc)
    quarantine = ModelEventRow(QUARANTINED_ID, QUARANTINED, now - timedelta(minutes=5), "5 consecutive failed cycles",
                               {QUARANTINE_META_KEY: (now + timedelta(days=3650)).isoformat(), "cooldown_seconds": 600})
    failing = [(last - timedelta(minutes=3), FAILING_ID), (last - timedelta(minutes=2), EMBARGOED_ID)]
    store.write_cycles([CycleWrite(InputRow(scope.key, at, at + timedelta(minutes=1), {}, scope.as_dict()),
                                   [PredictionRow(model_id, "FAILED", FAILING_REASON)]) for at, model_id in failing], [quarantine])
    resolved = store.cycles_to_settle(failing[0][0], failing[0][0] + timedelta(minutes=1), last, None)
    store.write_settlement(
        [ScoreRow(p.id, p.model_id, c.scope_key, c.cycle_at, 0.0, False, p.status_reason, {}) for c in resolved
         for p in c.predictions],
        [Resolution(c.input_id, {"y_up": True}, 0.0) for c in resolved], [])


def _payout_store(url: str, slug: str):
    from resources.store.database import CrunchDatabase
    from resources.store.payouts import PayoutStore

    return PayoutStore(CrunchDatabase(url=url).engine, slug)

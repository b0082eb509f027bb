"""The asset keys of a competition's chain, prefixed with its slug (keys are global across code
locations), and the op names Dagster derives from them."""

from __future__ import annotations

from dataclasses import dataclass, fields

import dagster as dg


@dataclass(frozen=True)
class ChainKeys:
    feed_records: dg.AssetKey
    predictions: dg.AssetKey
    scores: dg.AssetKey
    snapshots: dg.AssetKey
    leaderboard: dg.AssetKey
    emission_checkpoints: dg.AssetKey
    feed_archive: dg.AssetKey
    model_registry: dg.AssetKey

    @classmethod
    def for_slug(cls, slug: str) -> "ChainKeys":
        return cls(**{f.name: dg.AssetKey([slug, f.name]) for f in fields(cls)})

    @staticmethod
    def op_name(key: dg.AssetKey) -> str:
        return "__".join(key.path)

    def op(self, name: str) -> str:
        return self.op_name(getattr(self, name))

"""The rollups stage's asset check, evaluated inside the leaderboard asset it guards."""

from __future__ import annotations

import dagster as dg

from crunch_assets.spec import CompetitionSpec

LEADERBOARD_RANKED = "leaderboard_follows_ranking_key"


def check_leaderboard_ranked(spec: CompetitionSpec, key: dg.AssetKey, entries: list[dict]) -> dg.AssetCheckResult:
    values = [e.get(spec.ranking_key) for e in entries]
    valued = [v for v in values if v is not None]
    ordered = valued == sorted(valued, reverse=spec.ranking_descending)
    none_last = values[: len(valued)] == valued
    ranks_ok = [e["rank"] for e in entries] == list(range(1, len(entries) + 1))
    return dg.AssetCheckResult(
        asset_key=key, check_name=LEADERBOARD_RANKED, passed=ordered and none_last and ranks_ok,
        metadata={"models": len(entries), "ranking_key": spec.ranking_key},
    )

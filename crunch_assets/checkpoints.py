"""Stage 5, emission checkpoints: a period's reward split in frac64, each model's breakdown, and
the Merkle commitment to the scores it paid for.

The standing that is paid is computed by `payout_entries`, which the leaderboard calls too: the
period's standings under the eligibility policy, ranked by the declared checkpoint ranking
("period": the period's value; or a leaderboard window's value as of the period's end), eligible
models first; the emission (the spec's policy, or the competition's own builder) shares 1e9 over
the eligible ones; ineligible models are listed with 0. A checkpoint past PENDING is never
rewritten; a recomputation that disagrees is reported, not written.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from crunch_assets import checks, emission, merkle
from crunch_assets.emission import FRAC64_ONE, RankedEntry
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions, checkpoint_snapshots_mapping
from crunch_assets.rules import CompetitionRules
from crunch_assets.spec import CompetitionSpec
from crunch_assets.stages import readable, table_metadata
from crunch_assets.standings import Standing, payout_order, standings
from resources.store.competition import CompetitionStore
from resources.store.database import CrunchDatabase
from resources.store.rows import CycleRollupRow, SnapshotRow


class PayoutAccounts(dg.ConfigurableResource):
    """The on-chain accounts of a competition's emission (public keys, not secrets)."""

    crunch_pubkey: str | None = None
    compute_provider_pubkey: str | None = None
    data_provider_pubkey: str | None = None


def eligibility_rule(spec: CompetitionSpec) -> str:
    if spec.eligibility.pads_missing_cycles:
        return ("every model with a prediction in the period is ranked over every counted cycle; cycles it missed "
                f"count at the cycle's failure value ({spec.failure_policy.describe()})")
    return (f"ranked over its own scored cycles; paid only with predictions in at least "
            f"{spec.eligibility.min_coverage:.0%} of the period's counted cycles")


def _ranking_standings(
    spec: CompetitionSpec, snapshots: list[SnapshotRow], rollups: list[CycleRollupRow], start: datetime, end: datetime
) -> tuple[dict[str, Standing], dict[str, Standing]]:
    """(the period's standings: field, coverage and eligibility; the standings ranked by)."""
    period = standings(snapshots, rollups, spec.scopes, spec.eligibility, start, end)
    if spec.checkpoint_ranking == "period":
        return period, period
    window = next(w for w in spec.leaderboard_windows if w.name == spec.checkpoint_ranking)
    by_window = standings(snapshots, rollups, spec.scopes, spec.eligibility, end - timedelta(seconds=window.seconds), end)
    return period, by_window


def payout_entries(
    spec: CompetitionSpec, rules: CompetitionRules, store: CompetitionStore | None,
    snapshots: list[SnapshotRow], rollups: list[CycleRollupRow], start: datetime, end: datetime,
) -> dict[str, dict]:
    """model_id -> what the period [start, end) pays it (rank, score, eligibility, reward, and the
    breakdown of how), from the hourly rollups."""
    period, ranked_by = _ranking_standings(spec, snapshots, rollups, start, end)
    if not period:
        return {}
    merged = {m: Standing(m, ranked_by[m].value if m in ranked_by else None, s.scopes, s.cycles, s.predictions,
                          s.eligible and m in ranked_by and ranked_by[m].value is not None, s.voided_cycles, s.status_counts)
              for m, s in period.items()}
    order = payout_order(merged, spec.ranking_descending)
    paid = [m for m in order if merged[m].eligible]
    entries = [RankedEntry(m, rank, merged[m].value, merged[m].predictions, merged[m].cycles, merged[m].coverage)
               for rank, m in enumerate(paid, start=1)]
    custom = rules.build_emission(entries) if entries else None
    rewards = [int(r) for r in custom] if custom is not None else emission.build(spec.emission, entries, spec.higher_is_better)
    if entries:
        emission.check_rewards(rewards, len(entries))
    reward_of = dict(zip(paid, rewards))
    rule = "the competition's own emission builder" if custom is not None else emission.describe(spec.emission)
    result = {}
    for rank, model_id in enumerate(order, start=1):
        s = merged[model_id]
        better = order[rank - 2] if rank > 1 else None
        gap = None
        if better is not None and merged[better].value is not None and s.value is not None:
            gap = abs(merged[better].value - s.value)
        result[model_id] = {
            "rank": rank,
            "score": s.value,
            "eligible": s.eligible,
            "reward_pct": reward_of.get(model_id, 0),
            "reward_percent": reward_of.get(model_id, 0) * 100 / FRAC64_ONE,
            "cycles": s.cycles,
            "prediction_count": s.predictions,
            "coverage": round(s.coverage, 6),
            "breakdown": {
                "cycles_in_period": s.cycles,
                "scored": s.status_counts.get("scored", 0),
                "failed": s.status_counts.get("failed", 0),
                "absent": s.status_counts.get("absent", 0),
                "rejected": s.status_counts.get("rejected", 0),
                "missed_cycles": max(0, s.cycles - s.predictions),
                "voided_cycles": s.voided_cycles,
                "mean": s.value,
                "coverage": round(s.coverage, 6),
                "eligible": s.eligible,
                "eligibility_rule": eligibility_rule(spec),
                "ranked_by": spec.checkpoint_ranking,
                "rank": rank,
                "rule": rule if s.eligible else "not eligible: no reward",
                "reward_pct": reward_of.get(model_id, 0),
                "gap_to_next_rank": gap,
                "scopes": {key: {"value": sc.value, "cycles": sc.cycles, "predictions": sc.predictions,
                                 "coverage": round(sc.coverage, 6)} for key, sc in s.scopes.items()},
            },
        }
    return result


@dataclass(frozen=True)
class CheckpointBuild:
    entries: dict
    merkle_root: str
    chained_root: str
    meta: dict


def emission_payload(ranking: list[dict], accounts: PayoutAccounts) -> dict:
    """The on-chain emission shape; a cruncher with several paid models appears once, with the sum."""
    by_cruncher: dict[int, int] = defaultdict(int)
    for row in ranking:
        if row["reward_pct"]:
            if row["cruncher_index"] is None:
                raise ValueError(f"model {row['model_id']} has no cruncher_index in the model registry")
            by_cruncher[row["cruncher_index"]] += row["reward_pct"]
    return {
        "crunch": accounts.crunch_pubkey,
        "cruncher_rewards": [{"cruncher_index": i, "reward_pct": r} for i, r in sorted(by_cruncher.items())],
        "compute_provider_rewards": [{"provider": accounts.compute_provider_pubkey, "reward_pct": FRAC64_ONE}]
        if accounts.compute_provider_pubkey else [],
        "data_provider_rewards": [{"provider": accounts.data_provider_pubkey, "reward_pct": FRAC64_ONE}]
        if accounts.data_provider_pubkey else [],
    }


def build_checkpoint(
    spec: CompetitionSpec, rules: CompetitionRules, store: CompetitionStore, accounts: PayoutAccounts,
    start: datetime, end: datetime,
) -> CheckpointBuild | None:
    """The checkpoint of [start, end), or None when nothing in it was scored."""
    window_reach = max([w.seconds for w in spec.leaderboard_windows if w.name == spec.checkpoint_ranking] or [0])
    since = min(start, end - timedelta(seconds=window_reach))
    snapshots = store.snapshots(since, end)
    rollups = store.stored_rollups(since, end)
    payouts = payout_entries(spec, rules, store, snapshots, rollups, start, end)
    if not payouts:
        return None
    cruncher = {m.model_id: m.cruncher_index for m in store.models()}
    ranking = [{"model_id": model_id, "cruncher_index": cruncher.get(model_id), **payout}
               for model_id, payout in sorted(payouts.items(), key=lambda item: item[1]["rank"])]
    payload = emission_payload(ranking, accounts)
    payload["ranking"] = ranking
    payload["policies"] = {
        "failure": spec.failure_policy.describe(),
        "eligibility": eligibility_rule(spec),
        "checkpoint_ranking": spec.checkpoint_ranking,
        "emission": emission.describe(spec.emission),
        "ranking_descending": spec.ranking_descending,
        "scope_weights": {scope.key: scope.weight for scope in spec.scopes},
    }
    leaves = [merkle.leaf_hash(leaf) for leaf in store.score_leaves(start, end)]
    root = merkle.merkle_root(leaves)
    previous = store.previous_checkpoint(start)
    chained = merkle.chain(previous.chained_root if previous else None, root)
    meta = {
        "fingerprint": store.period_fingerprint(start, end),
        "leaf_count": len(leaves),
        "previous_checkpoint_id": previous.id if previous else None,
        "previous_chained_root": previous.chained_root if previous else None,
    }
    return CheckpointBuild(payload, root, chained, meta)


def build_checkpoint_asset(
    spec: CompetitionSpec, partitions: CompetitionPartitions, keys: ChainKeys
) -> dg.AssetsDefinition:
    periods = partitions.checkpoint

    @dg.asset(
        key=keys.emission_checkpoints,
        group_name=spec.slug,
        partitions_def=periods.definition,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[dg.AssetDep(keys.snapshots, partition_mapping=checkpoint_snapshots_mapping(periods))],
        description="The period's reward split in frac64 (1,000,000,000 = 100 %), each model's breakdown and the "
                    "Merkle root of the scores it pays for; stored PENDING for payment.",
        kinds={"postgres"},
        check_specs=[dg.AssetCheckSpec(checks.REWARDS_EXACT, asset=keys.emission_checkpoints, blocking=True)],
    )
    def emission_checkpoints(
        context: dg.AssetExecutionContext, database: CrunchDatabase, rules: CompetitionRules, payout_accounts: PayoutAccounts
    ) -> dg.MaterializeResult:
        store = database.competition(spec.slug)
        results = []
        for key in sorted(context.partition_keys, key=lambda k: periods.window(k)[0]):
            start, end = periods.window(key)
            built = build_checkpoint(spec, rules, store, payout_accounts, start, end)
            if built is None:
                context.log.info(f"{key}: nothing scored in the period: no checkpoint")
                context.add_asset_metadata({"checkpoint": "none: nothing scored in the period"}, partition_key=key)
                continue
            stored = store.write_pending_checkpoint(start, end, built.entries, built.merkle_root, built.chained_root, built.meta)
            if stored.status != "PENDING" and (stored.entries != built.entries or stored.merkle_root != built.merkle_root):
                # Paid money does not move: the disagreement is reported, the stored checkpoint stands.
                context.log.warning(f"{key}: checkpoint already {stored.status}; the recomputation differs and was not written")
            results.append(stored)
            # rounded for reading: the exact split is reward_frac64 (and the stored checkpoint)
            rows = [{"rank": r["rank"], "model": r["model_id"], "cruncher_index": r["cruncher_index"],
                     "score": readable(r["score"]), "coverage": round(r["coverage"], 4), "eligible": r["eligible"],
                     "predictions": r["prediction_count"], "reward_frac64": r["reward_pct"],
                     "reward_percent": readable(r["reward_pct"] * 100 / FRAC64_ONE)}
                    for r in stored.entries["ranking"]]
            context.add_asset_metadata({
                "checkpoint_id": stored.id,
                "status": stored.status,
                "period": f"{start.isoformat()} .. {end.isoformat()}",
                "models": len(rows),
                "reward_sum": sum(r["reward_frac64"] for r in rows),
                "merkle_root": stored.merkle_root,
                "chained_root": stored.chained_root,
                "reward_split": table_metadata(
                    [("rank", "int"), ("model", "string"), ("cruncher_index", "int"), ("score", "float"),
                     ("coverage", "float"), ("eligible", "bool"), ("predictions", "int"), ("reward_frac64", "int"),
                     ("reward_percent", "float")], rows),
                "breakdown": {r["model_id"]: r["breakdown"] for r in stored.entries["ranking"]},
            }, partition_key=key)
        check = checks.check_rewards(keys.emission_checkpoints, None)
        for stored in results:
            check = checks.check_rewards(keys.emission_checkpoints, stored.entries)
            if not check.passed:
                break
        return dg.MaterializeResult(metadata={"checkpoints": len(results)}, check_results=[check])

    return emission_checkpoints

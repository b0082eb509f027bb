"""Stage 5, emission checkpoints: a period's reward split in frac64, each model's breakdown, and
the Merkle commitment to the scores it paid for (crunch_assets/merkle.py), whose chained root is
published outside the database as the checkpoint is stored (crunch_assets/publication.py).

The standing that is paid is computed by `payout_entries`, which the leaderboard calls too: the
period's standings under the eligibility policy, ranked by the declared checkpoint ranking
("period": the period's value; or a leaderboard window's value as of the period's end). Who is
paid follows the declared payout policy (participants, benchmark models, exclusions such as
copies); paid models come first, and the emission (the spec's policy, or the competition's own
builder) shares 1e9 over them; every other model is listed with 0 and its reason in words
(`breakdown["unpaid_reason"]`). A checkpoint past PENDING is never rewritten; a recomputation that
disagrees is reported, not written.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Mapping, Sequence

import dagster as dg

from crunch_assets.defs.checkpoints import checks
from crunch_assets import contribution, copies, emission, merkle, money
from crunch_assets.emission import FRAC64_ONE, RankedEntry
from crunch_assets.keys import ChainKeys
from crunch_assets.partitions import CompetitionPartitions, checkpoint_snapshots_mapping
from crunch_assets.fingerprint import CycleLabel, RulesVersion, check_period, rules_book
from crunch_assets.rules import CompetitionRules, GroundTruthResource
from crunch_assets.spec import CompetitionSpec
from crunch_assets.stages import readable, table_metadata
from crunch_assets.standings import Standing, rank_models, standings
from resources.model_ids import is_virtual_model_id
from resources.payout_accounts import PayoutAccounts
from resources.store.competition import CompetitionStore
from resources.store.database import CrunchDatabase
from resources.store.rows import CycleRollupRow, ModelRow, RulesDocument, SnapshotRow
from resources.store.lifecycles import CheckpointStatus


def eligibility_rule(spec: CompetitionSpec) -> str:
    e = spec.eligibility
    answers = ("at least one scored answer" if e.min_scored_answers == 1
               else f"at least {e.min_scored_answers} scored answers")
    scope = ("; a scored answer in every scope" if e.require_every_scope
             else "; a scope it never answered counts at its failure value")
    if e.pads_missing_cycles:
        return ("every model with a prediction in the period is ranked over every counted cycle; cycles it missed "
                f"count at the cycle's failure value ({spec.failure_policy.describe()}); paid only with {answers} "
                f"in the period{scope}")
    return (f"ranked over its own cycles; paid only with {answers} and scored answers in at least "
            f"{e.min_coverage:.0%} of the period's counted cycles, combined and in every scope "
            f"(FAILED, ABSENT and rejected cycles are not coverage){scope}")


def payout_rule(spec: CompetitionSpec) -> str:
    """Who among the eligible models is paid, in words (stored with the checkpoint)."""
    p = spec.payout
    parts = ["one paid model per participant (its best)" if p.pay_best_model_per_participant
             else "every eligible model of a participant can be paid"]
    if p.max_models_per_participant is not None:
        parts.append(f"only a participant's first {p.max_models_per_participant} model(s) by registration can be paid")
    if p.benchmark_models:
        parts.append(f"benchmark model(s) {', '.join(p.benchmark_models)} are ranked, never paid")
        if p.benchmark_cutoff:
            parts.append("a model is paid only with a score strictly better than the best benchmark's")
    parts.append("equal scores share their ranks' rewards equally" if p.ties == "share"
                 else "equal scores are ranked by model id")
    parts.append("an unpaid model's share goes to the paid models by the emission's rule")
    return "; ".join(parts)


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


NO_EXCLUSIONS: Mapping[str, str] = MappingProxyType({})


def emission_builder_name(rules: CompetitionRules) -> str | None:
    """The competition's own emission builder by its path, if it has one."""
    if "emission_builder" in getattr(type(rules), "model_fields", {}):  # CallableRules: the slot's import path
        return rules.emission_builder or None  # type: ignore[attr-defined]
    if getattr(type(rules), "build_emission", CompetitionRules.build_emission) is not CompetitionRules.build_emission:
        return f"{type(rules).__module__}:{type(rules).__qualname__}.build_emission"
    return None


def emission_rule(spec: CompetitionSpec, rules: CompetitionRules, builder_paid: bool) -> str:
    """What paid (or pays) a checkpoint, in words: the competition's builder named by its path, or
    the spec's emission policy (a builder may answer None and leave a split to the policy)."""
    builder = emission_builder_name(rules)
    if builder_paid and builder:
        return f"the competition's emission builder {builder}"
    if spec.emission.kind == "contribution":
        return contribution.describe(spec.emission, spec.contribution_ensemble.name)
    return emission.describe(spec.emission)


def participant_of(model_id: str, registered: ModelRow | None) -> str:
    """A model's participant: the registry's player (the orchestrator's cruncher, or a local
    model's declared participant); a model with none is its own participant."""
    return (registered.player_id if registered is not None and registered.player_id else None) or model_id


def _better(a: float, b: float, descending: bool) -> bool:
    return a > b if descending else a < b


def unpaid_reasons(
    spec: CompetitionSpec, period: dict[str, Standing], values: dict[str, float | None],
    participants: Mapping[str, str], registration_order: Sequence[str], exclusions: Mapping[str, str],
) -> tuple[dict[str, str], dict]:
    """model_id -> why it is not paid, for every model of the period that is not (the rest are
    paid by the emission); and facts for the breakdown (the benchmark cutoff)."""
    policy = spec.payout
    descending = spec.ranking_descending
    benchmarks = set(policy.benchmark_models)
    reasons: dict[str, str] = {}
    for model_id, standing in period.items():
        if model_id in benchmarks:
            reasons[model_id] = "benchmark model: scored and ranked, never paid"
        elif is_virtual_model_id(model_id):  # crunch_assets/ensembles.py
            reasons[model_id] = "ensemble: a virtual model built from the members' outputs, scored and ranked, never paid"
        elif model_id in exclusions:
            reasons[model_id] = str(exclusions[model_id])
        elif not standing.eligible:
            reasons[model_id] = standing.ineligible_reason or "not eligible"
        elif values.get(model_id) is None:
            reasons[model_id] = f"no value over the checkpoint ranking {spec.checkpoint_ranking!r}"
    if policy.max_models_per_participant is not None:
        position = {model_id: i for i, model_id in enumerate(registration_order)}
        by_participant: dict[str, list[str]] = defaultdict(list)
        for model_id in period:
            if model_id not in benchmarks and not is_virtual_model_id(model_id):
                by_participant[participants[model_id]].append(model_id)
        limit = policy.max_models_per_participant
        for participant, models in by_participant.items():
            models.sort(key=lambda m: (position.get(m, len(position)), m))
            for model_id in models[limit:]:
                reasons.setdefault(model_id, f"participant {participant} has more than {limit} model(s): only its "
                                             f"first {limit} by registration ({', '.join(models[:limit])}) can be paid")
    facts: dict = {}
    if policy.benchmark_cutoff:
        scored = [(values[m], m) for m in sorted(benchmarks) if values.get(m) is not None]
        if scored:
            cutoff, bench = scored[0]
            for value, model_id in scored[1:]:
                if _better(value, cutoff, descending):
                    cutoff, bench = value, model_id
            facts["benchmark_cutoff"] = {"model_id": bench, "score": cutoff}
            for model_id in period:
                if model_id not in reasons and not _better(values[model_id], cutoff, descending):
                    reasons[model_id] = (f"score {values[model_id]:.6g} is not better than benchmark {bench}'s "
                                         f"{cutoff:.6g} (the benchmark cutoff)")
        else:
            facts["benchmark_cutoff"] = {"model_id": None, "score": None,
                                         "note": "no benchmark model has a score in the period: no cutoff applied"}
    if policy.pay_best_model_per_participant:
        best: dict[str, str] = {}
        for model_id in rank_models({m: values[m] for m in period if m not in reasons}, descending):
            participant = participants[model_id]
            if participant in best:
                reasons[model_id] = (f"participant {participant}'s best model is {best[participant]}: "
                                     "one paid model per participant")
            else:
                best[participant] = model_id
    return reasons, facts


def payout_entries(
    spec: CompetitionSpec, rules: CompetitionRules, store: CompetitionStore | None,
    snapshots: list[SnapshotRow], rollups: list[CycleRollupRow], start: datetime, end: datetime,
    *, exclusions: Mapping[str, str] = NO_EXCLUSIONS, registry: Sequence[ModelRow] | None = None,
) -> dict[str, dict]:
    """model_id -> what the period [start, end) pays it (rank, score, eligibility, reward, and the
    breakdown of how), from the hourly rollups.

    `exclusions` (model_id -> reason in words, e.g. a copy of another model) are ranked and shown
    with their reason, paid 0, and their share goes to the paid models by the emission's rule, as
    for any unpaid model. `registry` (default: the store's model registry) gives each model's
    participant and registration order."""
    period, ranked_by = _ranking_standings(spec, snapshots, rollups, start, end)
    if not period:
        return {}
    if registry is None:
        registry = store.models() if store is not None else []
    registered = {m.model_id: m for m in registry}
    participants = {m: participant_of(m, registered.get(m)) for m in period}
    registration_order = [m.model_id for m in sorted(
        registry, key=lambda m: (m.first_seen_at is None, m.first_seen_at or start, m.model_id))]
    values = {m: (ranked_by[m].value if m in ranked_by else None) for m in period}
    reasons, facts = unpaid_reasons(spec, period, values, participants, registration_order, exclusions)
    paid = rank_models({m: values[m] for m in period if m not in reasons}, spec.ranking_descending)
    unpaid = rank_models({m: values[m] for m in period if m in reasons}, spec.ranking_descending)
    order = paid + unpaid
    by_score = {m: i for i, m in enumerate(rank_models(values, spec.ranking_descending), start=1)}
    entries = [RankedEntry(m, rank, values[m], period[m].predictions, period[m].cycles, period[m].coverage)
               for rank, m in enumerate(paid, start=1)]
    # hook: each model's contribution and diversity over the period, from the hourly metric
    # statistics (crunch_assets/contribution.py): what the contribution emission pays on
    contributed = contribution.period_contributions(spec, snapshots, rollups, start, end) if spec.metrics.enabled else {}
    custom = rules.build_emission(entries) if entries else None
    components: dict[str, dict] = {}
    if custom is not None:
        rewards = [int(r) for r in custom]
    elif spec.emission.kind == "contribution":
        rewards, parts = contribution.contribution_weighted(
            entries, *contribution.reward_inputs(spec, paid, contributed), spec.emission, spec.payout.ties == "share")
        components = dict(zip(paid, parts))
    else:
        rewards = emission.build(spec.emission, entries, spec.higher_is_better)
    if entries and not components:  # the contribution emission is checked against its composite instead
        emission.check_rewards(rewards, len(entries))
        if spec.payout.ties == "share":
            rewards = emission.share_ties(rewards, [values[m] for m in paid])
            emission.check_rewards(rewards, len(entries))
    reward_of = dict(zip(paid, rewards))
    rule = emission_rule(spec, rules, builder_paid=custom is not None)
    tied = _ties(paid, values) if spec.payout.ties == "share" else {}
    rules_in_words = {"eligibility_rule": eligibility_rule(spec), "payout_rule": payout_rule(spec)}
    result = {}
    for rank, model_id in enumerate(order, start=1):
        s = period[model_id]
        value = values[model_id]
        better = order[rank - 2] if rank > 1 else None
        gap = None
        if better is not None and values[better] is not None and value is not None:
            gap = abs(values[better] - value)
        reason = reasons.get(model_id)
        result[model_id] = {
            "rank": rank,
            "score": value,
            "eligible": reason is None,
            "participant": participants[model_id],
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
                "mean": value,
                "coverage": round(s.coverage, 6),
                "eligible": reason is None,
                "eligibility_rule": rules_in_words["eligibility_rule"],
                "unpaid_reason": reason,
                "participant": participants[model_id],
                "benchmark": model_id in spec.payout.benchmark_models,
                **({"ensemble": True} if is_virtual_model_id(model_id) else {}),
                "payout_rule": rules_in_words["payout_rule"],
                **facts,
                "ranked_by": spec.checkpoint_ranking,
                "rank": rank,
                "rank_by_score": by_score[model_id],
                "rule": rule if reason is None else ("not eligible: no reward" if not s.eligible
                                                     else f"not paid: {reason}"),
                "tied_with": tied.get(model_id, []),
                "reward_pct": reward_of.get(model_id, 0),
                "gap_to_next_rank": gap,
                "scopes": {key: {"value": sc.value, "cycles": sc.cycles, "predictions": sc.predictions,
                                 "scored": sc.answered, "coverage": round(sc.coverage, 6)}
                           for key, sc in s.scopes.items()},
            },
        }
        if model_id in exclusions:
            result[model_id]["breakdown"]["unpaid_reason"] = exclusions[model_id]
        if model_id in contributed:  # explain my reward: what the model adds to the ensemble
            c = contributed[model_id]
            result[model_id]["breakdown"]["contribution"] = {
                "ensemble": spec.contribution_ensemble.name if spec.contribution_ensemble else None,
                "contribution": c.contribution, "correlation_with_field": c.correlation,
                "correlation_with_ensemble": c.ensemble_correlation, "diversity": c.diversity}
        if model_id in components:
            result[model_id]["breakdown"]["reward_components"] = {
                **components[model_id], "field": _component_field(spec, paid, contributed)}
    return result


def _component_field(spec: CompetitionSpec, paid: list[str], contributed: Mapping) -> dict:
    """What the contribution emission's components were normalised over (the paid models)."""
    values = [contributed[m].contribution for m in paid if m in contributed and contributed[m].contribution is not None]
    diversities = [contributed[m].diversity if m in contributed else 0.0 for m in paid]
    return {"models": len(paid), "contribution_min": min(values, default=None), "contribution_max": max(values, default=None),
            "diversity_min": min(diversities), "diversity_max": max(diversities),
            "weights": {"rank": spec.emission.rank_weight, "contribution": spec.emission.contribution_weight,
                        "diversity": spec.emission.diversity_weight}, "floor_pct": spec.emission.floor_pct}


def _ties(paid: list[str], values: dict[str, float | None]) -> dict[str, list[str]]:
    """model_id -> the other paid models with exactly its score (they share their ranks' rewards)."""
    groups: dict[float, list[str]] = defaultdict(list)
    for model_id in paid:
        groups[values[model_id]].append(model_id)
    return {m: [o for o in group if o != m] for group in groups.values() if len(group) > 1 for m in group}


@dataclass(frozen=True)
class CheckpointBuild:
    entries: dict
    merkle_root: str
    chained_root: str
    meta: dict
    commitment_scheme: int = merkle.CURRENT_SCHEME
    rules_document: RulesDocument | None = None  # the fingerprint it was built under, to record


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


def _paying_rule(spec: CompetitionSpec, rules: CompetitionRules, payouts: dict[str, dict]) -> str:
    """The rule that paid the checkpoint, as each paid model's breakdown names it; with no eligible
    model nothing was paid, and the rule that would have is named."""
    rules_paid = {p["breakdown"]["rule"] for p in payouts.values() if p["eligible"]}
    if len(rules_paid) == 1:
        return rules_paid.pop()
    would = emission_rule(spec, rules, builder_paid=emission_builder_name(rules) is not None)
    return f"{would} (no eligible model: nothing paid)" if not rules_paid else "; ".join(sorted(rules_paid))


def ranking_reach(spec: CompetitionSpec, start: datetime, end: datetime) -> datetime:
    """The earliest hour the checkpoint of [start, end) reads snapshots from."""
    window_reach = max([w.seconds for w in spec.leaderboard_windows if w.name == spec.checkpoint_ranking] or [0])
    return min(start, end - timedelta(seconds=window_reach))


def period_rules(spec: CompetitionSpec, rules: CompetitionRules, store: CompetitionStore, start: datetime,
                 end: datetime, ground_truth: GroundTruthResource | None = None) -> tuple[dict, RulesVersion]:
    """(the checkpoint's `rules` entry: the fingerprint it is built under, the ones its cycles were
    scored under and whether they mix undeclared per-cycle rules; the version it is built under)."""
    book = rules_book(spec, rules, ground_truth)
    version = book.checkpoint_version(start, end)
    labels = [CycleLabel(*row) for row in store.rules.cycle_labels(start, end)]
    fingerprints = sorted({label.fingerprint for label in labels if label.fingerprint})
    digests = {**{v.fingerprint: v.cycle_digest for v in book.versions}, **store.rules.cycle_digests(fingerprints)}
    return check_period(book.schedule(), labels, digests, start, end, version.fingerprint), version


def checkpoint_entries(
    spec: CompetitionSpec, rules: CompetitionRules, store: CompetitionStore, accounts: PayoutAccounts,
    start: datetime, end: datetime, *, ground_truth: GroundTruthResource | None = None,
) -> dict | None:
    """What the checkpoint of [start, end) pays, from the stored snapshots, cycle rollups and model
    registry: the ranking with each model's reward and breakdown, the emission, the policies and the
    rules it is built under (`period_rules`; `ground_truth`: the competition's resource, default the
    stored feed's, named in the rules fingerprint). None when nothing in the period was scored. The
    checkpoint asset stores it, and the safety gate calls it again before SUBMITTED and refuses any
    difference."""
    since = ranking_reach(spec, start, end)
    snapshots = store.snapshots(since, end)
    rollups = store.stored_rollups(since, end)
    copy_report = copies.period_report(spec, store, start, end)
    payouts = payout_entries(spec, rules, store, snapshots, rollups, start, end, exclusions=copy_report.exclusions)
    if not payouts:
        return None
    cruncher = {m.model_id: m.cruncher_index for m in store.models()}
    ranking = [{"model_id": model_id, "cruncher_index": cruncher.get(model_id), **payout}
               for model_id, payout in sorted(payouts.items(), key=lambda item: item[1]["rank"])]
    copy_breakdowns = copy_report.breakdowns()
    for row in ranking:
        if row["model_id"] in copy_breakdowns:
            row["breakdown"]["copy_cluster"] = copy_breakdowns[row["model_id"]]
    payload = emission_payload(ranking, accounts)
    payload["ranking"] = ranking
    payload["copy_clusters"] = copy_report.entries()
    payload["policies"] = {
        "failure": spec.failure_policy.describe(),
        "eligibility": eligibility_rule(spec),
        "payout": payout_rule(spec),
        "checkpoint_ranking": spec.checkpoint_ranking,
        "emission": _paying_rule(spec, rules, payouts),
        "ranking_descending": spec.ranking_descending,
        "scope_weights": {scope.key: scope.weight for scope in spec.scopes},
        "copy_detection": spec.copy_detection.describe(),
    }
    payload["rules"], _ = period_rules(spec, rules, store, start, end, ground_truth)
    # Top level too, where a participant's receipt and its verifiers (verify_receipt.py, receipt.js)
    # read it: the entries hash, so the chained root, commits to it.
    payload["rules_fingerprint"] = payload["rules"]["fingerprint"]
    return payload


def build_checkpoint(
    spec: CompetitionSpec, rules: CompetitionRules, store: CompetitionStore, accounts: PayoutAccounts,
    start: datetime, end: datetime, *, ground_truth: GroundTruthResource | None = None,
) -> CheckpointBuild | None:
    """The checkpoint of [start, end), or None when nothing in it was scored: its entries, the
    Merkle root of the period's scores (scheme 3: RFC 8785 leaves), the chained root (which also
    commits to the entries' hash) and the document of the rules fingerprint it is built under."""
    payload = checkpoint_entries(spec, rules, store, accounts, start, end, ground_truth=ground_truth)
    if payload is None:
        return None
    book = rules_book(spec, rules, ground_truth)
    version = book.checkpoint_version(start, end)
    leaves = merkle.leaf_hashes(store.score_leaves(start, end), merkle.CURRENT_SCHEME)
    root = merkle.merkle_root(leaves)
    previous = store.previous_checkpoint(start)
    entries_hash = merkle.entries_sha256(payload)
    chained = merkle.chain_with_entries(previous.chained_root if previous else None, root, entries_hash,
                                        merkle.CURRENT_SCHEME)
    meta = {
        "fingerprint": store.period_fingerprint(start, end),
        "leaf_count": len(leaves),
        "previous_checkpoint_id": previous.id if previous else None,
        "previous_chained_root": previous.chained_root if previous else None,
        "entries_sha256": entries_hash,
        "rules_fingerprint": version.fingerprint,
        "rules_schedule": book.period_schedule_digest(start, end),
    }
    return CheckpointBuild(payload, root, chained, meta, merkle.CURRENT_SCHEME,
                           RulesDocument(version.fingerprint, version.cycle_digest, version.document))


def publish_root(context: dg.AssetExecutionContext, spec: CompetitionSpec, stored, built: CheckpointBuild) -> str:
    """Publish the chained root of the checkpoint just stored to the competition's sink
    (crunch_assets/publication.py). A checkpoint the store kept as it was (past PENDING) was
    published when it was built. A publication that fails does not fail the run: the checkpoint is
    stored, and the gate refuses it until it is published (the outcome is in the metadata and log)."""
    from crunch_assets import publication
    from crunch_assets.settings import CompetitionSettings

    if stored.status != CheckpointStatus.PENDING or stored.chained_root != built.chained_root:
        return "not published again: the stored checkpoint is past PENDING"
    sink = publication.RootSink.from_settings(CompetitionSettings(spec.slug))
    try:
        done = publication.publish(sink, stored)
    except OSError as error:
        context.log.error(f"checkpoint #{stored.id}: its chained root could not be published to {sink.path}: {error}; "
                          f"the gate refuses it until `crunch-dagster checkpoints publish {spec.slug} {stored.id}`")
        return f"failed: {type(error).__name__} writing {sink.path}"
    if done.delivered is False:
        context.log.warning(f"checkpoint #{stored.id}: the publication webhook did not take its chained root "
                            f"({done.record['webhook']}); the gate refuses it until `crunch-dagster checkpoints publish "
                            f"{spec.slug} {stored.id}`")
        return f"appended to {sink.path}; the webhook did not take it"
    return f"{'published to' if done.appended else 'already in'} {sink.describe()}"


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
        context: dg.AssetExecutionContext, database: CrunchDatabase, rules: CompetitionRules, payout_accounts: PayoutAccounts,
        ground_truth: GroundTruthResource,
    ) -> dg.MaterializeResult:
        store = database.competition(spec.slug)
        results = []
        for key in sorted(context.partition_keys, key=lambda k: periods.window(k)[0]):
            start, end = periods.window(key)
            built = build_checkpoint(spec, rules, store, payout_accounts, start, end, ground_truth=ground_truth)
            if built is None:
                context.log.info(f"{key}: nothing scored in the period: no checkpoint")
                context.add_asset_metadata({"checkpoint": "none: nothing scored in the period"}, partition_key=key)
                continue
            store.rules.record([built.rules_document])
            if built.entries["rules"]["mixed"]:
                context.log.warning(f"{key}: {built.entries['rules']['detail']}")
            stored = store.write_pending_checkpoint(start, end, built.entries, built.merkle_root, built.chained_root,
                                                    built.meta, built.commitment_scheme)
            if stored.status != CheckpointStatus.PENDING and (stored.entries != built.entries or stored.merkle_root != built.merkle_root):
                # Paid money does not move: the disagreement is reported, the stored checkpoint stands.
                context.log.warning(f"{key}: checkpoint already {stored.status}; the recomputation differs and was not written")
            unpayable = money.unpayable_reasons(stored.entries, spec.gate) if stored.status == CheckpointStatus.PENDING else []
            if unpayable:
                context.log.warning(f"{key}: checkpoint #{stored.id} can never be submitted as built ({'; '.join(unpayable)}); "
                                    "later periods wait for it until an operator skips it: crunch-dagster checkpoints skip "
                                    f"{spec.slug} {stored.id} --reason '<why>'")
            results.append(stored)
            published = publish_root(context, spec, stored, built)
            # rounded for reading: the exact split is reward_frac64 (and the stored checkpoint)
            rows = [{"rank": r["rank"], "model": r["model_id"], "cruncher_index": r["cruncher_index"],
                     "score": readable(r["score"]), "coverage": round(r["coverage"], 4), "eligible": r["eligible"],
                     "predictions": r["prediction_count"], "reward_frac64": r["reward_pct"],
                     "reward_percent": readable(r["reward_pct"] * 100 / FRAC64_ONE)}
                    for r in stored.entries["ranking"]]
            context.add_asset_metadata({
                "checkpoint_id": stored.id,
                "status": stored.status,
                "cannot_be_submitted": "; ".join(unpayable) or "nothing in its entries (the gate decides at submission)",
                "period": f"{start.isoformat()} .. {end.isoformat()}",
                "models": len(rows),
                "reward_sum": sum(r["reward_frac64"] for r in rows),
                "merkle_root": stored.merkle_root,
                "chained_root": stored.chained_root,
                "rules_fingerprint": (stored.entries.get("rules") or {}).get("fingerprint"),
                "rules_mixed": bool((stored.entries.get("rules") or {}).get("mixed")),
                "rules": (stored.entries.get("rules") or {}).get("detail"),
                "root_publication": published,
                "reward_split": table_metadata(
                    [("rank", "int"), ("model", "string"), ("cruncher_index", "int"), ("score", "float"),
                     ("coverage", "float"), ("eligible", "bool"), ("predictions", "int"), ("reward_frac64", "int"),
                     ("reward_percent", "float")], rows),
                "breakdown": {r["model_id"]: r["breakdown"] for r in stored.entries["ranking"]},
                "copy_clusters": [f"{c['cluster']}: {', '.join(m['model_id'] for m in c['members'])}; pays "
                                  f"{', '.join(c['paid'])} ({c['status']})" for c in stored.entries.get("copy_clusters", [])],
            }, partition_key=key)
        # one result per run: the first error, else the first warning (a period with nothing to pay)
        check = checks.check_rewards(keys.emission_checkpoints, None, spec)
        for stored in results:
            found = checks.check_rewards(keys.emission_checkpoints, stored.entries, spec)
            if not found.passed and (check.passed or found.severity == dg.AssetCheckSeverity.ERROR):
                check = found
                if found.severity == dg.AssetCheckSeverity.ERROR:
                    break
        return dg.MaterializeResult(metadata={"checkpoints": len(results)}, check_results=[check])

    return emission_checkpoints

"""From checkpoint to payment: the lifecycle PENDING -> SUBMITTED -> CLAIMABLE -> PAID (forward,
one step at a time), or PENDING -> SKIPPED (final) for a period nobody can be paid for, the
emission safety gate that must pass before SUBMITTED (and refuse, for a reason that makes the
period unpayable, before SKIPPED), and the CLI / prize formats of an emission.

The gate is a list of checks over the stored checkpoint and the store; its results are stored
with the checkpoint (passing or not) and a failing gate refuses the transition with every reason.
Beyond the stored ranking's own consistency, it recomputes the payout: the same function that
built the checkpoint (`checkpoints.checkpoint_entries`) over the stored snapshots, and those
snapshots from the stored scores (`rollups.summarise`), and refuses any difference, by model and
field. Each transition is one call of the database's crunch.advance_checkpoint
(resources/store/payouts.py), which also checks that the passing gate result it is given is for
the row as it is, and writes the audit row.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from crunch_assets import merkle, money
from crunch_assets.defs.checkpoints.assets import checkpoint_entries, ranking_reach
from crunch_assets.money import (
    GateCheck, check_concentration, check_field_size, check_some_model_is_paid, frac64_to_percent,
    unpayable_reasons,
)
from resources.payout_accounts import PayoutAccounts
from crunch_assets.emission import FRAC64_ONE, largest_remainder
from crunch_assets.fingerprint import CycleLabel, RulesBook, check_period, rules_book
from crunch_assets.rules import CompetitionRules, GroundTruthResource
from crunch_assets.settings import CompetitionSettings
from crunch_assets.spec import CompetitionSpec, GatePolicy
from crunch_assets.verification import CHAIN_PROBLEM, ROOT_PROBLEM, audit_checkpoints, lifecycle_problems
from resources import clock
from resources.store.competition import CompetitionStore
from resources.store.copies import CopyResolutionRefused
from resources.store.disputes import DisputeRefused
from resources.store.payouts import AuditRow, CheckpointNotFound, PayoutStore, TransitionConflict, TransitionOutcome
from resources.store.rows import CheckpointRow, CopyResolutionRow, CycleRollupRow, DisputeRow, SnapshotRow
from resources.store.lifecycles import CheckpointStatus, PredictionReportStatus

STATUSES = tuple(CheckpointStatus)
# target -> the one status it can be reached from; SKIPPED is final (it pays nothing, ever)
PREVIOUS_STATUS = {CheckpointStatus.SUBMITTED: CheckpointStatus.PENDING, CheckpointStatus.CLAIMABLE: CheckpointStatus.SUBMITTED,
                   CheckpointStatus.PAID: CheckpointStatus.CLAIMABLE, CheckpointStatus.SKIPPED: CheckpointStatus.PENDING}
# The gate checks that say a genuine checkpoint cannot be paid as the declared policies stand:
# nothing to pay, or the gate's policy refuses the field. Each is a reason to skip the period.
UNPAYABLE_CHECKS = ("some_model_is_paid", "minimum_field_size", "participant_share_within_cap")
# The gate checks a skip needs passing: the checkpoint is what the store gives (a tampered one is
# rebuilt, not skipped), settled (late scores could make it payable), in order, built under the
# rules in force (other rules could make it payable), and past its disputes and dispute window (a
# skip is final: a dispute could never be answered after it; the database refuses it too).
SKIP_NEEDS = ("payout_recomputes", "snapshots_match_scores", "entries_committed", "merkle_root_verifies",
              "nothing_in_period_pending", "period_starts_where_previous_ended", "rules_fingerprint_consistent",
              "dispute_window_elapsed", "no_open_dispute")
# A transaction hash or signature: hex (0x...) or base58, no spaces.
TX_HASH_PATTERN = re.compile(r"^(0x)?[0-9A-Za-z]{16,128}$")
NOTE_MAX_CHARS = 1000
ACTOR_MAX_CHARS = 200

__all__ = [
    "CheckpointNotFound", "CopyResolutionRefused", "DisputeRefused", "GateFailed", "InvalidRequest", "SkipRefused",
    "TransitionConflict", "TransitionOutcome", "advance", "cli_format", "open_dispute", "resolve_copy",
    "resolve_dispute", "run_gate", "unpayable_reasons",
]


class InvalidRequest(ValueError):
    """The request itself is wrong (unknown status, missing or malformed tx_hash, a bad pool):
    nothing was tried."""


class GateFailed(Exception):
    """The emission safety gate refused SUBMITTED; `gate` holds every check and its reason."""

    def __init__(self, gate: dict):
        self.gate = gate
        super().__init__("the emission safety gate refused the submission: " + "; ".join(self.reasons))

    @property
    def reasons(self) -> list[str]:
        return [f"{c['name']}: {c['detail']}" for c in self.gate["checks"] if not c["passed"]]


class SkipRefused(Exception):
    """A skip was refused: the checkpoint can be paid (submit it), or it is not yet what a skip
    decides on (tampered, unsettled, out of order: rebuild it or wait). `reasons` say which;
    `gate` is the gate's run (stored with the checkpoint)."""

    def __init__(self, gate: dict, reasons: list[str]):
        self.gate = gate
        self.reasons = reasons
        super().__init__("the checkpoint cannot be skipped: " + "; ".join(reasons))


# --- the gate's checks: pure functions -----------------------------------------------------------

def check_reward_sum(entries: dict) -> GateCheck:
    problems = money.reward_sum_problems(entries)
    return GateCheck("rewards_sum_to_one_billion", not problems,
                     "; ".join(problems) or f"{len(entries.get('ranking', []))} model(s), "
                     f"{len(entries.get('cruncher_rewards', []))} cruncher reward(s), sum {FRAC64_ONE:,}")


def check_follows_ranking(entries: dict, descending: bool, by_rank: bool = True) -> GateCheck:
    """Ranks 1..n, eligible first, scores in order; rewards never increase with rank, or, under the
    contribution emission (`by_rank` False), never with the stored composite (reward_components)."""
    problems = money.ranking_problems(entries, descending, by_rank)
    return GateCheck("rewards_follow_stored_ranking", not problems, "; ".join(problems) or "ranks, scores and rewards agree")


def check_paid_models_eligible(entries: dict, spec: CompetitionSpec) -> GateCheck:
    problems = money.paid_eligibility_problems(entries, spec.eligibility)
    rule = ("every_cycle (missed cycles count at the failure value)" if spec.eligibility.pads_missing_cycles
            else f"min_coverage {spec.eligibility.min_coverage}")
    return GateCheck("paid_models_are_eligible", not problems, "; ".join(problems) or f"every paid model is eligible under {rule}")


def check_paid_models_answered(entries: dict, scored_by_model: dict[str, int]) -> GateCheck:
    """No paid model without a scored answer in the period: in the checkpoint's own breakdown and
    in the store's hourly rollups."""
    problems = []
    for r in entries.get("ranking", []):
        if not r.get("reward_pct"):
            continue
        stored = (r.get("breakdown") or {}).get("scored", 0) or 0
        counted = scored_by_model.get(r.get("model_id"), 0)
        if stored <= 0 or counted <= 0:
            problems.append(f"{r.get('model_id')} is paid with {min(stored, counted)} scored answer(s) in the period")
    paid = sum(1 for r in entries.get("ranking", []) if r.get("reward_pct"))
    return GateCheck("no_paid_model_without_a_scored_answer", not problems,
                     "; ".join(problems) or f"each of the {paid} paid model(s) has scored answers in the period")


def check_crunchers(entries: dict, registry_index: dict[str, int | None]) -> GateCheck:
    problems = money.cruncher_reward_problems(entries)
    emitted = entries.get("cruncher_rewards", [])
    for r in entries.get("ranking", []):
        if r.get("model_id") in registry_index and r.get("cruncher_index") != registry_index[r.get("model_id")]:
            problems.append(f"{r.get('model_id')}: cruncher_index {r.get('cruncher_index')} is not the registry's "
                            f"{registry_index[r.get('model_id')]}")
        if r.get("reward_pct") and r.get("model_id") not in registry_index:
            problems.append(f"{r.get('model_id')} is paid but not in the model registry")
    return GateCheck("each_cruncher_once", not problems,
                     "; ".join(problems) or f"{len(emitted)} cruncher(s), each once, indexes from the model registry")


@dataclass(frozen=True)
class PeriodGap:
    """What the store holds between the previous checkpoint's end and this period's start: a period
    in which nothing was scored builds no checkpoint (there is nothing to pay), and the next one
    chains across it."""

    start: datetime
    end: datetime
    scores: int
    unsettled: int

    @property
    def nothing_to_pay(self) -> bool:
        return self.start < self.end and self.scores == 0 and self.unsettled == 0


def check_period_continues(checkpoint: CheckpointRow, previous: CheckpointRow | None,
                           previous_trail: list[AuditRow] | None = None, gap: PeriodGap | None = None) -> GateCheck:
    if previous is None:
        ok = checkpoint.meta.get("previous_chained_root") is None
        return GateCheck("period_starts_where_previous_ended", ok,
                         "the first checkpoint" if ok else "no earlier checkpoint, but it was chained to one")
    problems = []
    across = ""
    if previous.period_end != checkpoint.period_start:
        if gap is not None and gap.nothing_to_pay and (gap.start, gap.end) == (previous.period_end, checkpoint.period_start):
            across = (f", across [{gap.start.isoformat()}, {gap.end.isoformat()}) where nothing was scored and nothing "
                      "waits to be (no checkpoint: nothing to pay)")
        else:
            between = f" (between them: {gap.scores} score(s), {gap.unsettled} unsettled prediction(s))" if gap else ""
            problems.append(f"the previous checkpoint (#{previous.id}) ends at {previous.period_end.isoformat()}, "
                            f"this period starts at {checkpoint.period_start.isoformat()}{between}")
    if previous.status == CheckpointStatus.PENDING:
        problems.append(f"the previous checkpoint (#{previous.id}) is still PENDING: submit in order (a checkpoint "
                        "nobody can be paid for is skipped: crunch-dagster checkpoints skip)")
    if checkpoint.meta.get("previous_chained_root") != previous.chained_root:
        problems.append(f"chained to a root that is not the previous checkpoint's (#{previous.id})")
    if previous.status != CheckpointStatus.PENDING and previous_trail is not None:
        problems += [f"the previous checkpoint (#{previous.id}): {p}" for p in lifecycle_problems(previous, previous_trail)]
    skipped = " (skipped: it paid nothing)" if previous.status == CheckpointStatus.SKIPPED else ""
    return GateCheck("period_starts_where_previous_ended", not problems,
                     "; ".join(problems) or f"continues checkpoint #{previous.id} ({previous.status}){skipped}{across}")


def check_settled(unsettled: int, statuses: dict[str, int]) -> GateCheck:
    pending = statuses.get(PredictionReportStatus.PENDING, 0)
    ok = unsettled == 0 and pending == 0
    counts = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) or "no predictions"
    return GateCheck("nothing_in_period_pending", ok,
                     counts if ok else f"{unsettled} prediction(s) of the period have no score yet ({counts})")


REBUILD_HINT = "rebuild the checkpoint (materialize emission_checkpoints for its period) while it is PENDING"


def check_accounts(entries: dict, accounts: PayoutAccounts, settings: CompetitionSettings) -> GateCheck:
    """The emission pays the accounts this process is configured with. Each refusal says which
    of two causes it is: the key is not configured here (set the variable: a second shell, a
    service without the deployment's environment) or it differs from the one the checkpoint was
    built with (the configuration changed: rebuild it, or set the variable back)."""
    problems = []
    built_crunch = entries.get("crunch")
    crunch_variable = f"{settings.prefix}CRUNCH_PUBKEY (or CRUNCH_CRUNCH_PUBKEY)"
    if not accounts.crunch_pubkey:
        problems.append(f"no crunch public key is configured in this process: set {crunch_variable} to the crunch "
                        f"account the emission is submitted from (the checkpoint was built for {built_crunch!r})")
    elif built_crunch != accounts.crunch_pubkey:
        problems.append(f"the emission names crunch {built_crunch!r}, {crunch_variable} is {accounts.crunch_pubkey!r}: "
                        f"if the configured key is right, {REBUILD_HINT}; if not, set {crunch_variable} to the right one")
    for field, name, key in (("compute_provider_rewards", "COMPUTE_PROVIDER_PUBKEY", accounts.compute_provider_pubkey),
                             ("data_provider_rewards", "DATA_PROVIDER_PUBKEY", accounts.data_provider_pubkey)):
        expected = [{"provider": key, "reward_pct": FRAC64_ONE}] if key else []
        built = entries.get(field, [])
        if built == expected:
            continue
        variable = f"{settings.prefix}{name} (or CRUNCH_{name})"
        built_keys = [row.get("provider") for row in built] if isinstance(built, list) else built
        if not key:
            problems.append(f"{field} pays {built_keys!r}, and no {variable} is configured in this process: set it to "
                            f"the provider's account if that is right, or {REBUILD_HINT} if the provider was dropped")
        else:
            problems.append(f"{field} pays {built_keys!r}, {variable} is {key!r}: if the configured key is right, "
                            f"{REBUILD_HINT}; if not, set {variable} to the right one")
    return GateCheck("emission_accounts_configured", not problems,
                     "; ".join(problems) or f"crunch {accounts.crunch_pubkey}")


def check_merkle(checkpoint_id: int, audits) -> GateCheck:
    """The period's scores recompute to the stored root, and the chain of roots (and recorded
    entries hashes) from the first checkpoint leads to this one's chained root. Whether the entries
    still hash to what was recorded is entries_committed's to say."""
    audit = next((a for a in audits if a.checkpoint_id == checkpoint_id), None)
    if audit is None:
        return GateCheck("merkle_root_verifies", False, "the checkpoint is not in the audit")
    problems = ([ROOT_PROBLEM] if not audit.root_matches else []) + ([CHAIN_PROBLEM] if not audit.chain_matches else [])
    return GateCheck("merkle_root_verifies", not problems, "; ".join(problems) or
                     f"root {audit.recomputed_root[:16]}.. recomputed from {audit.leaves} stored score(s)")


# What a payout differs in, named: these fields of a ranking row pay (or decide who is paid).
PAYING_FIELDS = ("model_id", "cruncher_index", "rank", "reward_pct", "eligible")
EMISSION_FIELDS = ("crunch", "cruncher_rewards", "compute_provider_rewards", "data_provider_rewards")
_MAX_NAMED_DIFFERENCES = 12


def payout_differences(stored: dict, recomputed: dict | None) -> list[str]:
    """How the stored entries differ from the recomputed ones: every paying field of every rank and
    every emission field by name, then whatever else differs (scores, breakdowns, policies)."""
    if recomputed is None:
        return ["recomputed from the stored snapshots, the period has no scored model: nothing would be paid"]
    stored_rows, rows = stored.get("ranking", []), recomputed.get("ranking", [])
    problems = []
    if len(stored_rows) != len(rows):
        problems.append(f"{len(stored_rows)} ranked model(s) stored, {len(rows)} recomputed")
    for position, (mine, theirs) in enumerate(zip(stored_rows, rows), start=1):
        for name in PAYING_FIELDS:
            if mine.get(name) != theirs.get(name):
                problems.append(f"rank {position}: {name} {_shown(mine.get(name))} stored, {_shown(theirs.get(name))} recomputed")
    for name in EMISSION_FIELDS:
        if stored.get(name) != recomputed.get(name):
            problems.append(f"{name} {_shown(stored.get(name))} stored, {_shown(recomputed.get(name))} recomputed")
    if not problems and merkle.entries_sha256(stored) != merkle.entries_sha256(recomputed):
        other = sorted({key for key in set(stored) | set(recomputed) if key != "ranking" and stored.get(key) != recomputed.get(key)}
                       | {f"ranking[{i}].{key}" for i, (a, b) in enumerate(zip(stored_rows, rows))
                          for key in set(a) | set(b) if a.get(key) != b.get(key)})
        problems.append(f"what is paid agrees, but the entries differ in {', '.join(other[:_MAX_NAMED_DIFFERENCES])}")
    if len(problems) > _MAX_NAMED_DIFFERENCES:
        problems = problems[:_MAX_NAMED_DIFFERENCES] + [f"... {len(problems) - _MAX_NAMED_DIFFERENCES} more"]
    return problems


def _shown(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else repr(value)


def accounts_of(entries: dict) -> PayoutAccounts:
    """The accounts an emission names (a provider list other than one entry at 100 % recomputes
    differently, and is named)."""
    def provider(field: str) -> str | None:
        listed = entries.get(field) or []
        return listed[0].get("provider") if isinstance(listed, list) and listed and isinstance(listed[0], dict) else None

    crunch = entries.get("crunch")
    return PayoutAccounts(crunch_pubkey=crunch if isinstance(crunch, str) else None,
                          compute_provider_pubkey=provider("compute_provider_rewards"),
                          data_provider_pubkey=provider("data_provider_rewards"))


def check_payout_recomputes(stored: dict, recomputed: dict | None) -> GateCheck:
    problems = payout_differences(stored, recomputed)
    return GateCheck("payout_recomputes", not problems,
                     "; ".join(problems) or "the ranking, every reward and the emission recompute from the stored snapshots")


def snapshot_differences(stored: list[SnapshotRow], recomputed: list[SnapshotRow],
                         stored_rollups: list[CycleRollupRow], recomputed_rollups: dict) -> list[str]:
    """How the stored hourly snapshots and cycle rollups differ from those recomputed from the
    stored scores and cycles."""
    def key(row):
        return (row.model_id, row.scope_key, row.period_start)

    mine, theirs = {key(r): r for r in stored}, {key(r): r for r in recomputed}
    problems = []
    for k in sorted(set(mine) | set(theirs), key=lambda k: (k[2], k[1], k[0])):
        a, b = mine.get(k), theirs.get(k)
        where = f"{k[0]} {k[1]} {k[2].isoformat()}"
        if a is None or b is None:
            problems.append(f"{where}: snapshot {'missing' if a is None else 'without a score behind it'}")
        elif (a.prediction_count, a.value_sum, a.failure_value_sum, a.status_counts) != (
                b.prediction_count, b.value_sum, b.failure_value_sum, b.status_counts):
            problems.append(f"{where}: stored {a.prediction_count} score(s) summing {a.value_sum!r}, the scores give "
                            f"{b.prediction_count} summing {b.value_sum!r}")
        elif (a.meta or {}).get("metrics") != (b.meta or {}).get("metrics"):  # contribution pays: recomputed too
            problems.append(f"{where}: the stored metric statistics differ from those the stored outputs, truths and "
                            "scores give")
    rollups = {(r.scope_key, r.period_start): r for r in stored_rollups}
    for (scope_key, hour), fingerprint in sorted(recomputed_rollups.items(), key=lambda item: (item[0][1], item[0][0])):
        stored_rollup = rollups.get((scope_key, hour))
        # the database sums failure values in no set order: equal up to rounding, as rollups.roll_up compares
        if stored_rollup is None or (stored_rollup.cycle_count, stored_rollup.voided_count) != (
                fingerprint.cycle_count, fingerprint.voided_count) or not math.isclose(
                stored_rollup.failure_value_sum, fingerprint.failure_value_sum, rel_tol=0, abs_tol=1e-9):
            problems.append(f"{scope_key} {hour.isoformat()}: the counted cycles or their failure values differ from the "
                            "stored cycles")
    return problems


def check_snapshots_match_scores(spec: CompetitionSpec, rules: CompetitionRules, store: CompetitionStore,
                                 checkpoint: CheckpointRow) -> GateCheck:
    from crunch_assets.defs.rollups.assets import summarise_with_metrics

    since = ranking_reach(spec, checkpoint.period_start, checkpoint.period_end)
    fingerprints = store.hour_fingerprints(since, checkpoint.period_end)
    recomputed = summarise_with_metrics(spec, rules, store, store.scored_predictions(fingerprints), list(fingerprints))
    problems = snapshot_differences(store.snapshots(since, checkpoint.period_end), recomputed,
                                    store.stored_rollups(since, checkpoint.period_end), fingerprints)
    shown = problems[:_MAX_NAMED_DIFFERENCES] + ([f"... {len(problems) - _MAX_NAMED_DIFFERENCES} more"]
                                                 if len(problems) > _MAX_NAMED_DIFFERENCES else [])
    return GateCheck("snapshots_match_scores", not problems,
                     "; ".join(shown) or f"{len(recomputed)} snapshot(s) from {since.isoformat()} recompute from the stored scores")


def check_entries_committed(checkpoint: CheckpointRow) -> GateCheck:
    if checkpoint.commitment_scheme < merkle.ENTRIES_SCHEME:
        return GateCheck("entries_committed", False,
                         f"built under commitment scheme {checkpoint.commitment_scheme}, which does not commit to the "
                         "entries: rebuild the checkpoint (materialize emission_checkpoints for its period) while it is PENDING")
    recomputed = merkle.entries_sha256(checkpoint.entries)
    recorded = checkpoint.meta.get("entries_sha256")
    if recomputed != recorded:
        return GateCheck("entries_committed", False,
                         f"the stored entries hash to {recomputed}, the checkpoint recorded {recorded}: they were changed "
                         "after it was built")
    return GateCheck("entries_committed", True, f"entries sha256 {recomputed[:16]}.. (RFC 8785), in the chained root")


def check_leaves_portable(checkpoint: CheckpointRow) -> GateCheck:
    """Only a checkpoint whose leaves anyone can recompute (scheme 3: RFC 8785) is paid."""
    scheme = checkpoint.commitment_scheme
    if scheme < merkle.PORTABLE_SCHEME:
        return GateCheck("leaves_portable", False,
                         f"built under commitment scheme {scheme}, whose leaves only Python recomputes: rebuild the "
                         "checkpoint (materialize emission_checkpoints for its period) while it is PENDING")
    return GateCheck("leaves_portable", True, f"commitment scheme {scheme}: RFC 8785 leaves, outputs and truths")


def check_root_published(checkpoint: CheckpointRow, sink) -> GateCheck:
    """The checkpoint's current chained root is in the publication file, and delivered to the
    publication webhook when one is configured (crunch_assets/publication.py). The result is served
    to anyone (GET .../gate): it names neither the file's path nor the webhook."""
    from crunch_assets.publication import publication_problem

    problem = publication_problem(sink, checkpoint)
    where = "the publication file" + (" and the publication webhook" if sink.webhook_url else "")
    return GateCheck("chained_root_published", problem is None,
                     problem or f"chained root {str(checkpoint.chained_root)[:16]}.. published to {where}")


def scored_answers(store: CompetitionStore, checkpoint: CheckpointRow) -> dict[str, int]:
    """model_id -> its scored answers in the checkpoint's period, from the hourly rollups."""
    counts: dict[str, int] = defaultdict(int)
    for row in store.snapshots(checkpoint.period_start, checkpoint.period_end):
        if row.period_start >= checkpoint.period_start and row.period_end <= checkpoint.period_end:
            counts[row.model_id] += int(row.status_counts.get("scored", 0))
    return dict(counts)


def check_copy_clusters(entries: dict, spec: CompetitionSpec, resolutions: dict, checkpoint_id: int) -> GateCheck:
    """No unresolved copy cluster: each of the checkpoint's clusters is resolved (by the policy or
    the operator), the operator's latest resolution is the one the checkpoint applied, and no model
    its cluster does not pay is paid."""
    name = "no_unresolved_copy_cluster"
    detection = spec.copy_detection
    if not detection.enabled:
        return GateCheck(name, True, "copy detection is off for this competition")
    if "copy_clusters" not in entries:
        return GateCheck(name, False, "the checkpoint was built without copy detection: rebuild it (materialize "
                                      "emission_checkpoints for its period) while it is PENDING")
    paid = {r.get("model_id"): r.get("reward_pct") or 0 for r in entries.get("ranking", [])}
    problems = []
    for cluster in entries["copy_clusters"]:
        key = cluster.get("cluster")
        members = [m.get("model_id") for m in cluster.get("members", [])]
        latest = resolutions.get(key)
        applied = (cluster.get("resolution") or {}).get("id")
        if latest is not None and latest.id != applied:
            problems.append(f"cluster {key} ({', '.join(members)}) was resolved (#{latest.id}) after the checkpoint was "
                            "built: the checkpoint sensor rebuilds it (or materialize emission_checkpoints for its period)")
        elif cluster.get("status") != "resolved":
            problems.append(f"cluster {key} ({', '.join(members)}) is unresolved ({cluster.get('decided_by')}): "
                            f"crunch-dagster checkpoints resolve-copy {spec.slug} {checkpoint_id} {key} "
                            "--pay MODEL | --pay-all")
        unpaid = [m for m in members if m not in (cluster.get("paid") or [])]
        problems += [f"{m} is a copy in cluster {key} but is paid {paid[m]:,}" for m in unpaid if paid.get(m)]
    clusters = len(entries["copy_clusters"])
    return GateCheck(name, not problems, "; ".join(problems) or (
        f"{clusters} copy cluster(s), each resolved" if clusters else "no copy cluster in the period"))


def check_rules_fingerprint(entries: dict, store: CompetitionStore, checkpoint: CheckpointRow,
                            book: RulesBook | None) -> GateCheck:
    """The period was not scored under a mix of per-cycle rules that no declared change explains,
    recomputed now from the fingerprint stored on each of its cycles; and the checkpoint was built
    under the rules loaded now (when the caller loaded them)."""
    name = "rules_fingerprint_consistent"
    stored = entries.get("rules")
    if not stored or not stored.get("versions"):
        return GateCheck(name, False, "the checkpoint was built without a rules fingerprint: rebuild it (materialize "
                                      "emission_checkpoints for its period) while it is PENDING")
    start, end = checkpoint.period_start, checkpoint.period_end
    labels = [CycleLabel(*row) for row in store.rules.cycle_labels(start, end)]
    fingerprints = sorted({label.fingerprint for label in labels if label.fingerprint})
    digests = {**{v["fingerprint"]: v["cycle_digest"] for v in stored["versions"]},
               **store.rules.cycle_digests(fingerprints)}
    now = check_period(stored["versions"], labels, digests, start, end, stored["fingerprint"])
    problems = []
    if now["mixed"]:
        problems.append(now["detail"])
    elif now["scored_under"] != stored.get("scored_under") or now["mixed"] != stored.get("mixed"):
        problems.append("the period's cycles were resolved again since the checkpoint was built: rebuild it")
    elif stored.get("mixed"):
        problems.append(stored.get("detail") or "flagged as mixing rules when it was built")
    if book is not None and not problems:
        loaded = book.checkpoint_version(start, end).fingerprint
        declared = [v.summary() for v in book.in_period(start, end)]
        rebuild = "the checkpoint sensor rebuilds it (or materialize emission_checkpoints for its period)"
        if loaded != stored["fingerprint"]:
            problems.append(f"built under rules {stored['fingerprint'][:16]}, the rules loaded now are {loaded[:16]}: "
                            + rebuild)
        elif declared != stored["versions"]:
            problems.append(f"built when {len(stored['versions'])} version(s) of the rules were declared in force "
                            f"during the period, {len(declared)} are declared now: " + rebuild)
    return GateCheck(name, not problems, "; ".join(problems) or
                     f"built under {stored['fingerprint'][:16]}; {now['detail']}")


def check_dispute_window(checkpoint: CheckpointRow, gate: GatePolicy, now: datetime) -> GateCheck:
    """The declared dispute window has passed since the checkpoint was built (or rebuilt with other
    numbers: `updated_at`)."""
    name = "dispute_window_elapsed"
    window = timedelta(seconds=gate.dispute_window_seconds)
    if not window:
        return GateCheck(name, True, "no dispute window is declared (gate.dispute_window_seconds = 0)")
    ends = checkpoint.updated_at + window
    if now < ends:
        return GateCheck(name, False, f"the dispute window ends at {ends.isoformat()} ({gate.dispute_window_seconds} s "
                                      f"after the checkpoint was built at {checkpoint.updated_at.isoformat()}); "
                                      f"{int((ends - now).total_seconds())} s to go")
    return GateCheck(name, True, f"the dispute window of {gate.dispute_window_seconds} s ended at {ends.isoformat()}")


def check_no_open_dispute(disputes: list[DisputeRow]) -> GateCheck:
    name = "no_open_dispute"
    still = [d for d in disputes if d.is_open]
    if still:
        return GateCheck(name, False, "; ".join(
            f"dispute #{d.id} by {d.claimant} ({d.what[:80]}) is open: resolve it (crunch-dagster disputes resolve)"
            for d in still))
    return GateCheck(name, True, f"{len(disputes)} dispute(s), each resolved" if disputes else "no dispute recorded")


def run_gate(spec: CompetitionSpec, store: CompetitionStore, checkpoint: CheckpointRow, accounts: PayoutAccounts,
             settings: CompetitionSettings | None = None, now: datetime | None = None,
             rules: CompetitionRules | None = None, payouts: PayoutStore | None = None,
             ground_truth: GroundTruthResource | None = None) -> dict:
    """Every check of the emission safety gate over the stored checkpoint; {"passed", "checks", ...}.
    `rules` and `ground_truth` (the competition's, as loaded) recompute the payout, and the
    checkpoint must have been built under them (its rules fingerprint); without `rules` those checks
    fail. `payouts` lets the previous checkpoint's lifecycle be checked."""
    from crunch_assets.publication import RootSink

    settings = settings or CompetitionSettings(spec.slug)
    now = now or clock.now()
    entries = checkpoint.entries
    registry = {m.model_id: m.cruncher_index for m in store.models()}
    previous = store.previous_checkpoint(checkpoint.period_start)
    previous_trail = payouts.audit_trail(previous.id) if payouts is not None and previous is not None else None
    gap = None
    if previous is not None and previous.period_end < checkpoint.period_start:
        gap = PeriodGap(previous.period_end, checkpoint.period_start,
                        store.score_count(previous.period_end, checkpoint.period_start),
                        store.unsettled_count(previous.period_end, checkpoint.period_start))
    book = rules_book(spec, rules, ground_truth) if rules is not None else None
    if rules is None:
        recompute = [GateCheck("payout_recomputes", False, "the competition's rules were not given: the payout cannot be "
                                                           "recomputed"),
                     GateCheck("snapshots_match_scores", False, "the competition's rules were not given")]
    else:
        # With the emission's own accounts: whether they are the configured ones is
        # emission_accounts_configured's to say, once.
        recompute = [
            check_payout_recomputes(entries, checkpoint_entries(spec, rules, store, accounts_of(entries),
                                                                checkpoint.period_start, checkpoint.period_end,
                                                                ground_truth=ground_truth)),
            check_snapshots_match_scores(spec, rules, store, checkpoint),
        ]
    checks = [
        check_reward_sum(entries),
        check_follows_ranking(entries, spec.ranking_descending, by_rank=spec.emission.kind != "contribution"),
        check_paid_models_eligible(entries, spec),
        check_crunchers(entries, registry),
        *recompute,
        check_entries_committed(checkpoint),
        check_leaves_portable(checkpoint),
        check_root_published(checkpoint, RootSink.from_settings(settings)),
        check_period_continues(checkpoint, previous, previous_trail, gap),
        check_settled(store.unsettled_count(checkpoint.period_start, checkpoint.period_end),
                      store.prediction_statuses(checkpoint.period_start, checkpoint.period_end)),
        check_merkle(checkpoint.id, audit_checkpoints(store)),
        check_accounts(entries, accounts, settings),
        check_some_model_is_paid(entries),
        check_field_size(entries, spec.gate),
        check_concentration(entries, spec.gate),
        check_paid_models_answered(entries, scored_answers(store, checkpoint)),
        check_copy_clusters(entries, spec, store.copies.resolutions(checkpoint.period_start, checkpoint.period_end),
                            checkpoint.id),
        check_rules_fingerprint(entries, store, checkpoint, book),
        check_dispute_window(checkpoint, spec.gate, now),
        check_no_open_dispute(store.disputes.disputes(checkpoint.id)),
    ]
    return {
        "passed": all(c.passed for c in checks),
        "checked_at": now.isoformat(),
        "checkpoint_updated_at": checkpoint.updated_at.isoformat(),
        "merkle_root": checkpoint.merkle_root,
        "chained_root": checkpoint.chained_root,
        "entries_sha256": merkle.entries_sha256(entries),
        "commitment_scheme": checkpoint.commitment_scheme,
        "checks": [c.as_dict() for c in checks],
    }


# --- transitions ---------------------------------------------------------------------------------

def validate_request(to_status: str, tx_hash: str | None, actor: str, note: str | None) -> None:
    if to_status not in STATUSES:
        raise InvalidRequest(f"status {to_status!r} is not one of {', '.join(STATUSES)}")
    if tx_hash is not None and not TX_HASH_PATTERN.match(tx_hash):
        raise InvalidRequest(f"tx_hash {tx_hash!r} is not a transaction hash (16-128 letters or digits, optional 0x)")
    if to_status == CheckpointStatus.SUBMITTED and not tx_hash:
        raise InvalidRequest("SUBMITTED needs the transaction hash (tx_hash) of the on-chain submission")
    if to_status == CheckpointStatus.SKIPPED:
        if note is None or not note.strip():
            raise InvalidRequest("SKIPPED needs the reason (note): why nobody can be paid for the period; it is kept in "
                                 "the audit")
        if tx_hash is not None:
            raise InvalidRequest("SKIPPED pays nothing on-chain: it takes no tx_hash")
    if not actor or len(actor) > ACTOR_MAX_CHARS:
        raise InvalidRequest(f"actor must be 1..{ACTOR_MAX_CHARS} characters")
    if note is not None and len(note) > NOTE_MAX_CHARS:
        raise InvalidRequest(f"note must be at most {NOTE_MAX_CHARS} characters")


def advance(
    spec: CompetitionSpec, store: CompetitionStore, payouts: PayoutStore, accounts: PayoutAccounts,
    checkpoint_id: int, to_status: str, *, actor: str, tx_hash: str | None = None, note: str | None = None,
    settings: CompetitionSettings | None = None, rules: CompetitionRules | None = None,
    ground_truth: GroundTruthResource | None = None,
) -> TransitionOutcome:
    """Move a checkpoint one step forward (to `to_status`), gated before SUBMITTED, audited. SKIPPED
    (from PENDING, with the reason as `note`) is for a period nobody can be paid for: the gate
    runs and must refuse it for such a reason (`skip_refusals`); it then pays nothing, ever.

    Raises InvalidRequest (bad request), CheckpointNotFound, TransitionConflict (not the status
    it must come from, or already there with another tx_hash), GateFailed (the gate's reasons;
    the results are stored with the checkpoint), SkipRefused (why it cannot be skipped; the
    gate's results are stored too). Repeating a done transition changes nothing."""
    validate_request(to_status, tx_hash, actor, note)
    checkpoint = store.checkpoint_by_id(checkpoint_id)
    if checkpoint is None:
        raise CheckpointNotFound(f"no checkpoint {checkpoint_id} in {spec.slug}")
    if to_status == CheckpointStatus.PENDING:
        raise TransitionConflict(f"checkpoint {checkpoint_id} is {checkpoint.status}: a checkpoint never goes back to "
                                 "PENDING", checkpoint.status)
    if to_status == CheckpointStatus.SUBMITTED and checkpoint.status == CheckpointStatus.PENDING:
        gate = run_gate(spec, store, checkpoint, accounts, settings, rules=rules, payouts=payouts,
                        ground_truth=ground_truth)
        if not gate["passed"]:
            payouts.record_gate(checkpoint_id, gate)
            raise GateFailed(gate)
        return payouts.transition(checkpoint_id, to_status, actor=actor, tx_hash=tx_hash, note=note, gate=gate)
    if to_status == CheckpointStatus.SKIPPED and checkpoint.status == CheckpointStatus.PENDING:
        # The gate's refusal is the evidence: stored with the checkpoint (frozen once it is
        # SKIPPED), and the database skips only a checkpoint whose stored gate refused this very row.
        gate = run_gate(spec, store, checkpoint, accounts, settings, rules=rules, payouts=payouts,
                        ground_truth=ground_truth)
        payouts.record_gate(checkpoint_id, gate)
        refusals = skip_refusals(gate)
        if refusals:
            raise SkipRefused(gate, refusals)
        return payouts.transition(checkpoint_id, to_status, actor=actor, note=note)
    # not gated: a later step, an idempotent repeat, or an illegal move (refused by the database)
    return payouts.transition(checkpoint_id, to_status, actor=actor, tx_hash=tx_hash, note=note)


def skip_refusals(gate: dict) -> list[str]:
    """Why the gate run `gate` does not justify skipping its checkpoint ([] when it does): a skip
    needs the gate to refuse the checkpoint for a reason that makes the period unpayable
    (UNPAYABLE_CHECKS), and the checkpoint to be genuine, settled and in order (SKIP_NEEDS)."""
    checks = {c["name"]: c for c in gate["checks"]}
    if gate["passed"]:
        return ["the emission safety gate passes: the checkpoint can be paid; submit it (a skip is for a period "
                "nobody can be paid for)"]
    refusals = [f"{name}: {checks[name]['detail']}" for name in SKIP_NEEDS if name in checks and not checks[name]["passed"]]
    if not any(name in checks and not checks[name]["passed"] for name in UNPAYABLE_CHECKS):
        failing = ", ".join(name for name, c in checks.items() if not c["passed"])
        refusals.append(f"nothing makes the period unpayable ({', '.join(UNPAYABLE_CHECKS)} pass): the gate refuses it "
                        f"for {failing}, which can be fixed; fix it and submit")
    return refusals


# --- copy clusters: the operator's resolution -----------------------------------------------------

CLUSTER_KEY_PATTERN = re.compile(r"^[0-9a-f]{16}$")


def resolve_copy(
    spec: CompetitionSpec, store: CompetitionStore, checkpoint_id: int, cluster_key: str, *, actor: str,
    paid_model_id: str | None = None, pay_all: bool = False, note: str | None = None,
) -> CopyResolutionRow:
    """Record the operator's decision on one of a PENDING checkpoint's copy clusters: pay only
    `paid_model_id`, or (`pay_all`) every member. Audited (append-only); the checkpoint applies it
    at its next build (the checkpoint sensor sees the period's data change).

    Raises InvalidRequest (bad request: nothing was tried), CopyResolutionRefused (no such
    checkpoint or cluster, not PENDING, not a member)."""
    if not spec.copy_detection.enabled:
        raise InvalidRequest(f"copy detection is off in {spec.slug}: there is no cluster to resolve")
    if not CLUSTER_KEY_PATTERN.match(cluster_key or ""):
        raise InvalidRequest(f"cluster {cluster_key!r} is not a cluster key (16 hex digits, as the checkpoint lists them)")
    if pay_all == (paid_model_id is not None):
        raise InvalidRequest("give either the one model the cluster pays (--pay MODEL / \"pay\") or pay them all "
                             "(--pay-all / \"pay_all\": true)")
    if not actor or len(actor) > ACTOR_MAX_CHARS:
        raise InvalidRequest(f"actor must be 1..{ACTOR_MAX_CHARS} characters")
    if note is not None and len(note) > NOTE_MAX_CHARS:
        raise InvalidRequest(f"note must be at most {NOTE_MAX_CHARS} characters")
    return store.copies.record_resolution(checkpoint_id, cluster_key, "pay_all" if pay_all else "pay_one",
                                          paid_model_id, actor=actor, note=note)


# --- disputes: the operator's record, before submission ------------------------------------------

CLAIMANT_MAX_CHARS = 200
MAX_DISPUTED_RANGES = 50


def _text(name: str, value: str | None, max_chars: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_chars:
        raise InvalidRequest(f"{name} must be 1..{max_chars} characters of text")
    if any(ord(ch) < 32 and ch not in "\n\t" for ch in value):
        raise InvalidRequest(f"{name} must not contain control characters")
    return value


def open_dispute(
    spec: CompetitionSpec, store: CompetitionStore, checkpoint_id: int, *, claimant: str, what: str,
    cycles: list[tuple[datetime, datetime]], actor: str, note: str | None = None,
) -> DisputeRow:
    """Record that `claimant` disputes `what` about the checkpoint's cycles (each (first, last) cycle
    time, inclusive, inside its period). Audited (append-only); until resolved, the checkpoint
    cannot be SUBMITTED. Only while it is PENDING.

    Raises InvalidRequest (bad request: nothing was tried), DisputeRefused (no such checkpoint,
    not PENDING, cycles outside its period)."""
    _text("claimant", claimant, CLAIMANT_MAX_CHARS)
    _text("what", what, NOTE_MAX_CHARS)
    _text("actor", actor, ACTOR_MAX_CHARS)
    if note is not None:
        _text("note", note, NOTE_MAX_CHARS)
    if not cycles or len(cycles) > MAX_DISPUTED_RANGES:
        raise InvalidRequest(f"name 1..{MAX_DISPUTED_RANGES} ranges of disputed cycles (first, last)")
    for first, last in cycles:
        if first.tzinfo is None or last.tzinfo is None:
            raise InvalidRequest("cycle times need a UTC offset")
        if last < first:
            raise InvalidRequest(f"cycles {first.isoformat()} .. {last.isoformat()}: the last is before the first")
    return store.disputes.open(checkpoint_id, claimant=claimant, what=what,
                               cycles=[(a.astimezone(timezone.utc), b.astimezone(timezone.utc)) for a, b in cycles],
                               actor=actor, note=note)


def resolve_dispute(spec: CompetitionSpec, store: CompetitionStore, checkpoint_id: int, dispute_id: int, *,
                    resolution: str, actor: str) -> DisputeRow:
    """Record how an open dispute of a PENDING checkpoint was resolved (audited, append-only). What
    the resolution changes (a rebuild, a rules change, nothing) is done by its own means; this records
    the decision and lifts the block.

    Raises InvalidRequest, DisputeRefused (no such checkpoint or dispute, not PENDING, already resolved)."""
    _text("resolution", resolution, NOTE_MAX_CHARS)
    _text("actor", actor, ACTOR_MAX_CHARS)
    return store.disputes.resolve(checkpoint_id, dispute_id, resolution=resolution, actor=actor)


# --- formats -------------------------------------------------------------------------------------

def emission_of(checkpoint: CheckpointRow) -> dict:
    """The on-chain emission shape, as stored."""
    e = checkpoint.entries
    return {
        "crunch": e.get("crunch"),
        "cruncher_rewards": e.get("cruncher_rewards", []),
        "compute_provider_rewards": e.get("compute_provider_rewards", []),
        "data_provider_rewards": e.get("data_provider_rewards", []),
    }


def prizes(checkpoint: CheckpointRow, pool: int) -> list[dict]:
    """The pool split by reward (exact: the units left by rounding go to the largest remainders),
    one prize per paid model, id "<checkpoint_id>-<model_id>"."""
    paid = [r for r in checkpoint.entries.get("ranking", []) if r.get("reward_pct")]
    amounts = largest_remainder([float(r["reward_pct"]) for r in paid], pool) if paid else []
    return [{"prize_id": f"{checkpoint.id}-{r['model_id']}", "model_id": r["model_id"],
             "cruncher_index": r.get("cruncher_index"), "amount": amount}
            for r, amount in zip(paid, amounts)]


def cli_format(checkpoint: CheckpointRow, pool: int | None = None) -> dict:
    """The reference CLI's shape: rewards as percentages keyed by model, providers as percentages,
    and (with a pool) the prizes; with the checkpoint's commitment (its scheme, Merkle root and
    chained root, as published: crunch_assets/publication.py)."""
    e = checkpoint.entries
    result = {
        "checkpoint_id": checkpoint.id,
        "crunch": e.get("crunch"),
        "period_start": checkpoint.period_start.isoformat(),
        "period_end": checkpoint.period_end.isoformat(),
        "status": checkpoint.status,
        "commitment_scheme": checkpoint.commitment_scheme,
        "merkle_root": checkpoint.merkle_root,
        "chained_root": checkpoint.chained_root,
        "rewards": {r["model_id"]: frac64_to_percent(r["reward_pct"]) for r in e.get("ranking", []) if r.get("reward_pct")},
        "compute_provider_rewards": {p["provider"]: frac64_to_percent(p["reward_pct"])
                                     for p in e.get("compute_provider_rewards", [])},
        "data_provider_rewards": {p["provider"]: frac64_to_percent(p["reward_pct"])
                                  for p in e.get("data_provider_rewards", [])},
    }
    if pool is not None:
        if pool <= 0 or not math.isfinite(pool):
            raise InvalidRequest(f"pool must be a positive whole number, got {pool}")
        result["pool"] = pool
        result["prizes"] = prizes(checkpoint, pool)
    return result

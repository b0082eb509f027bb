"""What-if and shadow entry: past checkpoint periods recomputed under proposed rules, or with a
candidate model in the field, by the money path itself (`checkpoints.build_checkpoint`, hence
`payout_entries`, standings, emission, copy detection) over a read-only view of the store.
Nothing is written: the view answers the builder's reads, and the builder writes nothing.

- **What-if** (`whatif`): the proposal (a JSON object of spec fields and callables, `Proposal`)
  replaces the competition's. When it keeps the per-cycle rules (the rules fingerprint's cycle part),
  the stored hourly rollups are reused: with the current spec the result is the stored checkpoint,
  to the unit. When it changes them (a scoring function, the failure policy), every prediction of
  the period is rescored in memory from its stored output and the stored truth (the stored truth
  is not resolved again, and a voided cycle stays voided), rolled up by `rollups.summarise`, and
  ranked.
- **Shadow entry** (`shadow`): a candidate model runs, through the local model runner's public
  interface, on the stored inputs of every cycle of the periods (exactly what the field was sent,
  in order, nothing later), under the competition's quarantine rule; it is validated and scored by
  the competition's own rules against the stored truth. A failed answer scores the cycle's stored
  failure value; with a cross-sectional step its adjusted score is computed with the field's
  answers of that cycle. The field is left as it really was (its scores, failure values, counted
  cycles). The candidate is added to it as a new participant registered after every model (so if
  it copies a model, copy detection names it the copy), or, with `replaces`, takes that model's
  place (its id, participant and registration), which reproduces the model's stored scores, rank
  and share when the candidate is the model's own file.
"""

from __future__ import annotations

import heapq
import json
import math
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import orjson

from crunch_assets.defs.checkpoints.assets import build_checkpoint

from resources.payout_accounts import PayoutAccounts
from crunch_assets.emission import FRAC64_ONE
from crunch_assets.fingerprint import rules_book
from crunch_assets.model_health import ModelHealth, QuarantinePolicy
from crunch_assets.partitions import build_partitions, floor_hour
from crunch_assets.defs.predictions.assets import prediction_from_result
from crunch_assets.defs.rollups.assets import summarise
from crunch_assets.rules import CALLABLE_SLOTS, CallableRules, CompetitionRules, GroundTruthResource, WiringError
from crunch_assets.defs.scores.assets import Scorer, stored_scope, score_answer, score_cycle
from crunch_assets.spec import (
    CompetitionSpec,
    CopyDetection,
    Eligibility,
    EmissionPolicy,
    FailurePolicy,
    GatePolicy,
    LeaderboardWindow,
    PayoutPolicy,
    SpecError,
)
from crunch_assets.strict import refuse_unknown_fields
from resources.model_runners.base import CallStatus, ModelCallResult, ModelRunnerResource
from resources.model_runners.local import LocalModelRunner
from resources.store.competition import CompetitionStore
from resources.store.rows import (
    CheckpointRow,
    CycleRollupRow,
    CycleToSettle,
    ModelRow,
    PredictionRow,
    ScoredPrediction,
    SnapshotRow,
    StoredCycle,
    StoredPrediction,
)
from resources.store.lifecycles import InputStatus, PredictionReportStatus, PredictionStatus

# A period is rescored (what-if) or run (shadow) this many hours at a time: bounded memory.
CHUNK_HOURS = 6


class ProposalError(ValueError):
    """A proposed spec that cannot be applied; the message names the key."""


class ShadowLimitExceeded(RuntimeError):
    """The shadow run went past its declared runtime limit (nothing was reported)."""


class ShadowRefused(RuntimeError):
    """The candidate would not run in the model sandbox, and the caller requires it (the API)."""


# --- the proposal --------------------------------------------------------------------------------

# Spec fields a proposal may change, and how each is read from JSON.
_POLICIES = {"failure_policy": FailurePolicy, "eligibility": Eligibility, "emission": EmissionPolicy,
             "copy_detection": CopyDetection, "payout": PayoutPolicy, "gate": GatePolicy}
_VALUES = ("ranking_descending", "checkpoint_ranking", "ranking_key", "leaderboard_windows", "scope_weights",
           "checkpoint_interval_seconds")
# What the stored rows were made with: a proposal cannot change them after the fact.
_FIXED = {
    "scopes": "the stored cycles are the scopes' (a proposal may change scope_weights)",
    "extra_subjects": "the stored inputs are what models were sent",
    "history_seconds": "the stored inputs are what models were sent",
    "max_price_staleness_seconds": "the stored truth is used as resolved",
    "void_after_seconds": "voided cycles stay voided (the stored truth is used as resolved)",
    "quarantine_after_failures": "the stored predictions were made under it",
    "quarantine_cooldown_seconds": "the stored predictions were made under it",
}
_PROPOSED_SLOTS = ("scoring_function", "cross_sectional", "score_schema", "emission_builder", "snapshot_aggregator")


def _policy_from_json(kind: type, current: Any, value: Any, key: str) -> Any:
    if not isinstance(value, dict):
        raise ProposalError(f"{key}: give an object of {kind.__name__}'s fields, got {value!r}")
    converted = dict(value)
    if kind is EmissionPolicy and "tiers_pct" in converted:
        converted["tiers_pct"] = tuple(tuple(pair) for pair in converted["tiers_pct"])
    if kind is PayoutPolicy and "benchmark_models" in converted:
        converted["benchmark_models"] = tuple(converted["benchmark_models"])
    try:
        changed = replace(current, **converted)
        changed.validate()
        return changed
    except SpecError as error:
        raise ProposalError(f"{key}: {error}") from None
    except TypeError as error:
        raise ProposalError(f"{key}: {error}") from None


@dataclass(frozen=True)
class Proposal:
    """Proposed rules: spec changes (`spec`) and callable slots (`slots`: import paths)."""

    spec: dict = field(default_factory=dict)
    slots: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, document: Any) -> "Proposal":
        if not isinstance(document, dict):
            raise ProposalError("a proposal is a JSON object of spec fields (and \"callables\")")
        allowed = [*_POLICIES, *_VALUES, *_FIXED, "callables"]
        refuse_unknown_fields("the proposal", document, allowed, ProposalError)
        for key in document:
            if key in _FIXED:
                raise ProposalError(f"{key} cannot change in a what-if: {_FIXED[key]}")
        slots = document.get("callables") or {}
        if not isinstance(slots, dict):
            raise ProposalError("callables: give an object of slot -> import path")
        refuse_unknown_fields("callables", slots, [*CALLABLE_SLOTS, "model_base_class", *(
            "input_schema", "output_schema", "score_schema")], ProposalError)
        for slot in slots:
            if slot not in _PROPOSED_SLOTS:
                raise ProposalError(f"callables.{slot} cannot change in a what-if: the stored outputs and truth were "
                                    f"made by it; a proposal may change {', '.join(_PROPOSED_SLOTS)}")
        return cls({k: v for k, v in document.items() if k != "callables"}, dict(slots))

    def apply(self, spec: CompetitionSpec, rules: CompetitionRules) -> tuple[CompetitionSpec, CompetitionRules]:
        changes: dict[str, Any] = {}
        for key, value in self.spec.items():
            if key in _POLICIES:
                changes[key] = _policy_from_json(_POLICIES[key], getattr(spec, key), value, key)
            elif key == "leaderboard_windows":
                if not isinstance(value, list):
                    raise ProposalError("leaderboard_windows: give a list of {name, seconds}")
                try:
                    changes[key] = tuple(LeaderboardWindow(**w) for w in value)
                except (SpecError, TypeError) as error:
                    raise ProposalError(f"leaderboard_windows: {error}") from None
            elif key == "scope_weights":
                if not isinstance(value, dict):
                    raise ProposalError("scope_weights: give an object of scope key -> weight")
                known = {s.key for s in spec.scopes}
                unknown = sorted(set(value) - known)
                if unknown:
                    raise ProposalError(f"scope_weights: no scope {unknown}; scopes: {sorted(known)}")
                changes["scopes"] = tuple(replace(s, weight=float(value.get(s.key, s.weight))) for s in spec.scopes)
            else:
                changes[key] = value
        try:
            proposed_spec = replace(spec, **changes) if changes else spec
        except (SpecError, TypeError) as error:
            raise ProposalError(str(error)) from None
        proposed_rules = rules
        if self.slots:
            if not isinstance(rules, CallableRules):
                raise ProposalError(f"callables can be proposed only for CallableRules; {type(rules).__name__} "
                                    "is a rules class")
            values = {name: getattr(rules, name) for name in type(rules).model_fields}
            try:
                proposed_rules = type(rules)(**{**values, **self.slots})
                proposed_rules.check_wiring()
            except (WiringError, ValueError) as error:
                raise ProposalError(f"callables: {error}") from None
        return proposed_spec, proposed_rules


def load_proposal(path: str | Path) -> Proposal:
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ProposalError(f"{path}: {error}") from None
    return Proposal.from_json(document)


# --- a read-only view of the store ---------------------------------------------------------------

def _in(row_start: datetime, span: tuple[datetime, datetime] | None) -> bool:
    return span is not None and span[0] <= row_start < span[1]


class _CopiesView:
    """The store's copy-detection reads, with a candidate's outputs merged in (or in place of a model's)."""

    def __init__(self, copies, dropped: frozenset[str], outputs: Mapping[str, list[tuple[int, str, str]]],
                 registrations: Mapping[str, datetime | None]):
        self._copies, self._dropped, self._outputs, self._registrations = copies, dropped, outputs, registrations

    def outputs(self, scope_key: str, start: datetime, end: datetime) -> Iterator[tuple[int, str, str]]:
        low, high = start.timestamp(), end.timestamp()
        stored = (row for row in self._copies.outputs(scope_key, start, end) if row[1] not in self._dropped)
        extra = [row for row in self._outputs.get(scope_key, []) if low <= row[0] < high]
        return heapq.merge(stored, extra, key=lambda row: row[0])

    def registrations(self) -> dict[str, datetime | None]:
        return {**self._copies.registrations(), **self._registrations}

    def resolutions(self, start: datetime, end: datetime):
        return self._copies.resolutions(start, end)

    def latest_resolution_id(self, start: datetime, end: datetime):
        return self._copies.latest_resolution_id(start, end)


class PeriodView:
    """What `build_checkpoint` reads, from the store, with:
    - the hourly rollups of `replaced_span` replaced by `snapshots` and `rollups` (a rescoring);
    - `dropped` models' rows left out and `extra_snapshots` added (a shadow entry);
    - `extra_models` in the registry, `extra_outputs` in copy detection's reads.
    Merkle leaves are not read (a what-if commits to nothing): the root it reports is of no leaf."""

    def __init__(self, store: CompetitionStore, *, replaced_span: tuple[datetime, datetime] | None = None,
                 snapshots: Sequence[SnapshotRow] = (), rollups: Sequence[CycleRollupRow] = (),
                 dropped: Iterable[str] = (), extra_snapshots: Sequence[SnapshotRow] = (),
                 extra_models: Sequence[ModelRow] = (), extra_outputs: Mapping[str, list] | None = None):
        self._store = store
        self.slug = store.slug
        self._span = replaced_span
        self._snapshots, self._rollups = list(snapshots), list(rollups)
        self._dropped = frozenset(dropped)
        self._extra_snapshots = list(extra_snapshots)
        self._extra_models = list(extra_models)
        self._extra_outputs = dict(extra_outputs or {})

    def snapshots(self, start: datetime, end: datetime, model_id: str | None = None) -> list[SnapshotRow]:
        rows = [r for r in self._store.snapshots(start, end, model_id)
                if not _in(r.period_start, self._span) and r.model_id not in self._dropped]
        rows += [r for r in self._snapshots + self._extra_snapshots
                 if start <= r.period_start < end and (model_id is None or r.model_id == model_id)]
        return sorted(rows, key=lambda r: (r.period_start, r.scope_key, r.model_id))

    def stored_rollups(self, start: datetime, end: datetime) -> list[CycleRollupRow]:
        rows = [r for r in self._store.stored_rollups(start, end) if not _in(r.period_start, self._span)]
        rows += [r for r in self._rollups if start <= r.period_start < end]
        return sorted(rows, key=lambda r: (r.period_start, r.scope_key))

    def models(self) -> list[ModelRow]:
        extra = {m.model_id for m in self._extra_models}
        return sorted([m for m in self._store.models() if m.model_id not in extra] + self._extra_models,
                      key=lambda m: m.model_id)

    @property
    def copies(self) -> _CopiesView:
        return _CopiesView(self._store.copies, self._dropped, self._extra_outputs,
                           {m.model_id: m.first_seen_at for m in self._extra_models})

    @property
    def rules(self):
        return self._store.rules

    def score_leaves(self, start: datetime, end: datetime) -> list:
        return []

    def previous_checkpoint(self, before: datetime) -> CheckpointRow | None:
        return self._store.previous_checkpoint(before)

    def period_fingerprint(self, start: datetime, end: datetime) -> dict:
        return self._store.period_fingerprint(start, end)


# --- rescoring from stored outputs and truth -----------------------------------------------------

def _as_settle(cycle: StoredCycle) -> CycleToSettle:
    return CycleToSettle(cycle.input_id, cycle.scope_key, cycle.cycle_at, cycle.resolvable_at, cycle.status,
                         cycle.scope, cycle.predictions)


def _scored_rows(cycle: StoredCycle, rows, failure_value: float) -> list[ScoredPrediction]:
    made = {p.id: p.status for p in cycle.predictions}
    return [ScoredPrediction(0, r.model_id, r.scope_key, r.cycle_at, cycle.input_id, r.value, r.success,
                             made[r.prediction_id], r.result, failure_value) for r in rows]


def _rollup_rows(counts: Mapping[tuple[str, datetime], list]) -> list[CycleRollupRow]:
    return [CycleRollupRow(scope_key, hour, hour + timedelta(hours=1), n, voided, math.fsum(failures), scores, None)
            for (scope_key, hour), (n, voided, failures, scores) in sorted(counts.items(), key=lambda i: (i[0][1], i[0][0]))]


def rescored_rollups(spec: CompetitionSpec, rules: CompetitionRules, truth: GroundTruthResource | None,
                     store: CompetitionStore, start: datetime, end: datetime) -> tuple[list[SnapshotRow], list[CycleRollupRow]]:
    """The hourly snapshots and cycle rollups of [start, end) had every prediction been scored by
    `rules` (each cycle under the version in force at its time) from its stored output and truth."""
    book = rules_book(spec, rules, truth)
    scorers: dict[str, Scorer] = {}
    snapshots: list[SnapshotRow] = []
    counts: dict[tuple[str, datetime], list] = {}
    chunk = start
    while chunk < end:
        chunk_end = min(chunk + timedelta(hours=CHUNK_HOURS), end)
        scored: list[ScoredPrediction] = []
        for cycle in store.history.cycles(chunk, chunk_end, with_predictions=True, statuses=(InputStatus.RESOLVED, InputStatus.VOIDED)):
            hour = floor_hour(cycle.cycle_at)
            tally = counts.setdefault((cycle.scope_key, hour), [0, 0, [], 0])
            if cycle.status == InputStatus.VOIDED:
                tally[1] += 1
                continue
            version = book.at(cycle.cycle_at)
            scorer = scorers.setdefault(version.fingerprint, Scorer.of(version.rules))
            settle_view = _as_settle(cycle)
            rows, failure_value, void_reason = score_cycle(version.spec, scorer, stored_scope(spec, settle_view),
                                                           settle_view, cycle.actuals)
            if void_reason is not None:
                tally[1] += 1
                continue
            tally[0] += 1
            tally[2].append(failure_value)
            tally[3] += len(rows)
            scored += _scored_rows(cycle, rows, failure_value)
        snapshots += summarise(spec, rules, scored)
        chunk = chunk_end
    return snapshots, _rollup_rows(counts)


# --- what-if -------------------------------------------------------------------------------------

def _ranking(entries: dict | None) -> dict[str, dict]:
    if not entries:
        return {}
    return {r["model_id"]: {"rank": r["rank"], "score": r["score"], "eligible": r["eligible"],
                            "reward_pct": r["reward_pct"], "unpaid_reason": (r.get("breakdown") or {}).get("unpaid_reason")}
            for r in entries.get("ranking", [])}


@dataclass(frozen=True)
class PeriodComparison:
    start: datetime
    end: datetime
    checkpoint_id: int | None
    status: str | None
    rescored: bool
    before: dict[str, dict]  # the stored checkpoint's ranking (model -> rank, score, eligible, reward_pct)
    after: dict[str, dict]
    after_entries: dict | None

    def rows(self) -> list[dict]:
        """Per model: rank and share before and after, and the change, best after first."""
        models = sorted(set(self.before) | set(self.after),
                        key=lambda m: (self.after.get(m, {}).get("rank") or 10**9, m))
        result = []
        for model_id in models:
            b, a = self.before.get(model_id, {}), self.after.get(model_id, {})
            before, after = b.get("reward_pct") or 0, a.get("reward_pct") or 0
            result.append({"model_id": model_id, "rank_before": b.get("rank"), "rank_after": a.get("rank"),
                           "reward_pct_before": before, "reward_pct_after": after, "change_pct": after - before,
                           "score_before": b.get("score"), "score_after": a.get("score"),
                           "unpaid_reason_after": a.get("unpaid_reason")})
        return result

    def movers(self, n: int = 5) -> list[dict]:
        return sorted(self.rows(), key=lambda r: (-abs(r["change_pct"]), r["model_id"]))[:n]

    def as_dict(self) -> dict:
        return {"period_start": self.start.isoformat(), "period_end": self.end.isoformat(),
                "checkpoint_id": self.checkpoint_id, "status": self.status, "rescored": self.rescored,
                "rules_fingerprint": (self.after_entries or {}).get("rules", {}).get("fingerprint"),
                "models": self.rows(), "largest_movers": self.movers()}


def periods_in(spec: CompetitionSpec, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The checkpoint periods inside [start, end)."""
    return [(s, e) for _, s, e in build_partitions(spec).checkpoint.periods_between(start, end) if s >= start]


def _changes_cycle_rules(current: CompetitionSpec, rules: CompetitionRules, proposed: CompetitionSpec,
                         proposed_rules: CompetitionRules, truth: GroundTruthResource | None,
                         start: datetime, end: datetime) -> bool:
    now_versions = rules_book(current, rules, truth).in_period(start, end)
    new_versions = rules_book(proposed, proposed_rules, truth).in_period(start, end)
    return [(v.effective_from, v.cycle_digest) for v in now_versions] != \
        [(v.effective_from, v.cycle_digest) for v in new_versions]


def whatif(spec: CompetitionSpec, rules: CompetitionRules, truth: GroundTruthResource | None, store: CompetitionStore,
           accounts: PayoutAccounts, proposal: Proposal, start: datetime, end: datetime, *,
           rescore: bool = False) -> list[PeriodComparison]:
    """Each checkpoint period inside [start, end): its stored checkpoint's ranking, and the ranking
    and shares the money path gives under the proposal (`rescore`: rescore the predictions from
    their stored outputs and truth even when the per-cycle rules are unchanged)."""
    proposed_spec, proposed_rules = proposal.apply(spec, rules)
    comparisons = []
    for period_start, period_end in periods_in(proposed_spec, start, end):  # a proposed interval: its periods
        window_reach = max([w.seconds for w in proposed_spec.leaderboard_windows
                            if w.name == proposed_spec.checkpoint_ranking] or [0])
        since = min(period_start, period_end - timedelta(seconds=window_reach))
        again = rescore or _changes_cycle_rules(spec, rules, proposed_spec, proposed_rules, truth, since, period_end)
        if again:
            snapshots, rollups = rescored_rollups(proposed_spec, proposed_rules, truth, store, since, period_end)
            view = PeriodView(store, replaced_span=(since, period_end), snapshots=snapshots, rollups=rollups)
        else:
            view = PeriodView(store)
        built = build_checkpoint(proposed_spec, proposed_rules, view, accounts, period_start, period_end,
                                 ground_truth=truth)
        stored = store.checkpoint(period_start, period_end)
        comparisons.append(PeriodComparison(
            period_start, period_end, stored.id if stored else None, stored.status if stored else None, again,
            _ranking(stored.entries if stored else None), _ranking(built.entries if built else None),
            built.entries if built else None))
    return comparisons


# --- shadow entry --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShadowLimits:
    """What a shadow run may cost: its range (whole checkpoint periods) and its wall time."""

    max_hours: int = 7 * 24
    max_runtime_seconds: float = 900.0


@dataclass
class CandidateRun:
    """The candidate's answers and scores, per cycle (resolved cycles only are scored)."""

    model_id: str
    scored: list[ScoredPrediction] = field(default_factory=list)
    outputs: dict[str, list[tuple[int, str, str]]] = field(default_factory=lambda: defaultdict(list))
    cycles_run: int = 0
    statuses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    per_cycle: list[dict] = field(default_factory=list)


# What a candidate inherits of the competition's local runner: its limits and its sandbox.
LOCAL_RUNNER_SETTINGS = (
    "memory_limit_mb", "startup_timeout_seconds", "startup_attempts", "startup_retry_delay_seconds",
    "extra_pythonpath", "sandbox", "sandbox_read_only_paths", "sandbox_tmp_mb", "max_open_files", "max_processes",
    "sandbox_first_uid",
)


def _runner_for(models_dir: Path, configured: ModelRunnerResource | None) -> LocalModelRunner:
    """The local runner over the candidate's directory, with the competition's call limits and,
    when the competition runs local models, their sandbox and limits: a candidate runs exactly as
    one of its models would (in the sandbox unless the operator set sandbox='off': only the
    contract's environment, no network, none of the host's files). Another runner (the
    orchestrator): the local runner's defaults, sandbox on."""
    settings: dict[str, Any] = {}
    if configured is not None:
        settings.update(call_timeout_seconds=configured.call_timeout_seconds,
                        max_output_bytes=configured.max_output_bytes)
    if isinstance(configured, LocalModelRunner):
        settings.update({name: getattr(configured, name) for name in LOCAL_RUNNER_SETTINGS})
    return LocalModelRunner(models_dir=str(models_dir), **settings)


def candidate_sandboxed(configured: ModelRunnerResource | None) -> bool:
    """Whether a candidate would run in the model sandbox (`_runner_for`)."""
    return not isinstance(configured, LocalModelRunner) or configured.sandbox == "on"


def _candidate_dir(model: Path, directory: Path) -> str:
    """Copy the candidate (a file, or a package directory) into its own models directory; its model id there."""
    name = "shadow_candidate"
    if model.is_dir():
        if not (model / "__init__.py").is_file():
            raise ValueError(f"{model} is a directory without __init__.py: give a model file or package")
        shutil.copytree(model, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
    elif model.is_file() and model.suffix == ".py":
        shutil.copy(model, directory / f"{name}.py")
    else:
        raise ValueError(f"{model} is not a model file (.py) or package directory")
    return name


def run_candidate(spec: CompetitionSpec, rules: CompetitionRules, truth: GroundTruthResource | None,
                  store: CompetitionStore, model: Path, candidate_id: str, start: datetime, end: datetime,
                  configured_runner: ModelRunnerResource | None = None, deadline: float | None = None,
                  on_cycle: Callable[[int, int], None] | None = None) -> CandidateRun:
    """Run the candidate on every stored cycle of [start, end), in order, on its stored input, and
    score its answers of the resolved cycles against the stored truth (see the module doc)."""
    book = rules_book(spec, rules, truth)
    policy = QuarantinePolicy(spec.quarantine_after_failures, spec.quarantine_cooldown_seconds)
    health = ModelHealth()
    run = CandidateRun(candidate_id)
    total = len(spec.cycle_times(start, end))
    with tempfile.TemporaryDirectory(prefix="crunch-shadow-") as directory:
        runner_id = _candidate_dir(Path(model), Path(directory))
        runner = _runner_for(Path(directory), configured_runner)
        with runner.open_session(rules.model_interface()) as session:
            chunk = start
            while chunk < end:
                chunk_end = min(chunk + timedelta(hours=CHUNK_HOURS), end)
                needs_field = rules.adjusts_cycles
                for cycle in store.history.cycles(chunk, chunk_end, with_inputs=True, with_predictions=needs_field):
                    if deadline is not None and time.monotonic() > deadline:
                        raise ShadowLimitExceeded(f"the shadow run passed its runtime limit after {run.cycles_run} of "
                                                  f"{total} cycle(s)")
                    version = book.at(cycle.cycle_at)
                    scope = stored_scope(spec, _as_settle(cycle))
                    if health.is_quarantined(cycle.cycle_at):  # as the predictions stage does: FAILED, not called
                        row = PredictionRow(candidate_id, PredictionStatus.FAILED,
                                            f"quarantined: not called until {health.quarantined_until.isoformat()}")
                    else:
                        calls = version.rules.build_model_calls(scope, cycle.raw_data)
                        result = session.run_cycle(calls, runner.call_timeout_seconds).get(runner_id) or \
                            ModelCallResult(runner_id, CallStatus.ABSENT, detail="no answer from the model runner")
                        row = prediction_from_result(version.rules, scope, result)
                        if result.status is not CallStatus.ABSENT:
                            policy.record(health, cycle.cycle_at, failed=row.status == PredictionStatus.FAILED)
                    run.cycles_run += 1
                    if on_cycle:
                        on_cycle(run.cycles_run, total)
                    _score_candidate(run, version, scope, cycle, row)
                chunk = chunk_end
    return run


def _score_candidate(run: CandidateRun, version, scope, cycle: StoredCycle, row) -> None:
    answered = row.status == PredictionStatus.PENDING
    if answered and cycle.status != InputStatus.VOIDED:
        run.outputs[cycle.scope_key].append((int(cycle.cycle_at.timestamp()), run.model_id,
                                             orjson.dumps(row.inference_output).decode()))
    if cycle.status != InputStatus.RESOLVED:
        return
    failure_value = cycle.failure_value
    scorer = Scorer.of(version.rules)
    candidate = StoredPrediction(-1, run.model_id, row.status, row.status_reason, row.inference_output)
    if answered:
        result = score_answer(scorer, scope, candidate, cycle.actuals)
        if result["success"] and version.rules.adjusts_cycles:
            field_results = {p.model_id: score_answer(scorer, scope, p, cycle.actuals)
                             for p in cycle.predictions if p.status == PredictionStatus.PENDING and p.model_id != run.model_id}
            successful = {m: r for m, r in field_results.items() if r["success"]}
            try:
                adjusted = version.rules.adjust_cycle(scope, cycle.cycle_at, {**successful, run.model_id: result})
                result = {**adjusted[run.model_id], "success": True}
            except Exception as error:  # the field's cycle would have been voided: the candidate gets nothing
                run.per_cycle.append({"cycle_at": cycle.cycle_at.isoformat(), "scope_key": cycle.scope_key,
                                      "status": PredictionReportStatus.VOIDED, "reason": f"cross-sectional step error: {error}"})
                return
        success = bool(result.get("success"))
        value = float(result["value"]) if success else failure_value
        reason = None if success else result.get("failed_reason")
    else:
        success, value, result, reason = False, failure_value, {}, f"{row.status}: {row.status_reason}"
    status = "scored" if success else ("rejected" if answered else row.status.lower())
    run.statuses[status] += 1
    run.scored.append(ScoredPrediction(0, run.model_id, cycle.scope_key, cycle.cycle_at, cycle.input_id, value,
                                       success, row.status, {k: v for k, v in result.items()
                                                             if k not in ("value", "success", "failed_reason")},
                                       failure_value))
    run.per_cycle.append({"cycle_at": cycle.cycle_at.isoformat(), "scope_key": cycle.scope_key, "status": status,
                          "value": value, "reason": reason})


@dataclass(frozen=True)
class ShadowPeriod:
    start: datetime
    end: datetime
    candidate: dict | None  # the candidate's ranking row (rank, score, eligible, reward_pct, breakdown)
    field: list[dict]  # every model's rank and share with the candidate in the field, and as stored
    field_size: int


@dataclass(frozen=True)
class ShadowReport:
    candidate_id: str
    replaces: str | None
    field_note: str
    cycles_run: int
    statuses: dict
    periods: list[ShadowPeriod]
    per_cycle: list[dict]

    def as_dict(self, with_cycles: bool = False) -> dict:
        result = {
            "candidate_id": self.candidate_id, "replaces": self.replaces, "field": self.field_note,
            "cycles_run": self.cycles_run, "statuses": dict(self.statuses),
            "periods": [{"period_start": p.start.isoformat(), "period_end": p.end.isoformat(),
                         "field_size": p.field_size, "candidate": p.candidate, "models": p.field} for p in self.periods],
        }
        if with_cycles:
            result["cycles"] = self.per_cycle
        return result


def shadow(spec: CompetitionSpec, rules: CompetitionRules, truth: GroundTruthResource | None, store: CompetitionStore,
           accounts: PayoutAccounts, model: Path, start: datetime, end: datetime, *, replaces: str | None = None,
           configured_runner: ModelRunnerResource | None = None, limits: ShadowLimits | None = None,
           on_cycle: Callable[[int, int], None] | None = None, require_sandbox: bool = False) -> ShadowReport:
    """The candidate in each checkpoint period inside [start, end): the rank it would have taken,
    the share it would have been paid and its breakdown, with the field as it really was (see the
    module doc). Raises ValueError for a range with no whole period or over the limits,
    ShadowLimitExceeded past the runtime limit, and (`require_sandbox`) ShadowRefused before
    anything runs when the candidate would run without the model sandbox."""
    if require_sandbox and not candidate_sandboxed(configured_runner):
        raise ShadowRefused("a candidate runs only in the model sandbox, and this deployment runs its local models "
                            "with sandbox='off' (CRUNCH_MODEL_SANDBOX=off): run the shadow entry from the command "
                            "line instead (crunch-dagster shadow)")
    periods = periods_in(spec, start, end)
    if not periods:
        raise ValueError(f"no whole checkpoint period ({spec.checkpoint_interval_seconds} s) inside "
                         f"{start.isoformat()} .. {end.isoformat()}")
    first, last = periods[0][0], periods[-1][1]
    if limits is not None and (last - first) > timedelta(hours=limits.max_hours):
        raise ValueError(f"the periods span {(last - first) / timedelta(hours=1):g} h, over the limit of "
                         f"{limits.max_hours} h: ask for fewer periods")
    registry = {m.model_id: m for m in store.models()}
    if replaces is not None and replaces not in registry:
        raise ValueError(f"no model {replaces!r} in {spec.slug} to replace; models: {', '.join(sorted(registry))}")
    candidate_id = replaces or f"shadow:{Path(model).stem}"
    if replaces is None and candidate_id in registry:
        raise ValueError(f"{candidate_id!r} is already a model id of {spec.slug}")
    deadline = time.monotonic() + limits.max_runtime_seconds if limits is not None else None
    run = run_candidate(spec, rules, truth, store, model, candidate_id, first, last, configured_runner, deadline,
                        on_cycle)
    snapshots = summarise(spec, rules, run.scored)
    if replaces is not None:
        extra_models: list[ModelRow] = []
        note = (f"the field as it really was, with {replaces} replaced by the candidate (its id, participant and "
                "registration): the candidate is not in the field twice")
    else:
        later = max([m.first_seen_at for m in registry.values() if m.first_seen_at] + [last])
        next_index = max([m.cruncher_index for m in registry.values() if m.cruncher_index is not None] + [-1]) + 1
        extra_models = [ModelRow(candidate_id, candidate_id, None, None, None, "RUNNING", next_index,
                                 later + timedelta(seconds=1), later + timedelta(seconds=1), {"shadow": True})]
        note = ("the field as it really was, plus the candidate as a new participant registered after every model "
                "(had it copied a model, copy detection would name it the copy)")
    view = PeriodView(store, dropped=[replaces] if replaces else [], extra_snapshots=snapshots,
                      extra_models=extra_models, extra_outputs=run.outputs)
    reports = []
    for period_start, period_end in periods:
        built = build_checkpoint(spec, rules, view, accounts, period_start, period_end, ground_truth=truth)
        stored_checkpoint = store.checkpoint(period_start, period_end)
        stored = _ranking(stored_checkpoint.entries if stored_checkpoint else None)
        ranking = built.entries["ranking"] if built else []
        mine = next((r for r in ranking if r["model_id"] == candidate_id), None)
        field_rows = [{"model_id": r["model_id"], "rank": r["rank"], "reward_pct": r["reward_pct"],
                       "stored_rank": stored.get(r["model_id"], {}).get("rank"),
                       "stored_reward_pct": stored.get(r["model_id"], {}).get("reward_pct")} for r in ranking]
        reports.append(ShadowPeriod(period_start, period_end, None if mine is None else {
            "rank": mine["rank"], "score": mine["score"], "eligible": mine["eligible"], "reward_pct": mine["reward_pct"],
            "reward_percent": mine["reward_pct"] * 100 / FRAC64_ONE, "breakdown": mine["breakdown"]},
            field_rows, len(ranking)))
    return ShadowReport(candidate_id, replaces, note, run.cycles_run, dict(run.statuses), reports, run.per_cycle)

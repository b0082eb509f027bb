"""Versioned rules: a fingerprint of the rules a cycle was scored under and a checkpoint was built
under, and the declared changes of rules over time.

A rules fingerprint is the sha256 of the RFC 8785 canonical JSON (`rfc8785`) of one document:

    {"scheme": "crunch-rules/1",
     "cycle":  {"spec": <the spec's per-cycle fields>,  "callables": <per-cycle slots, their source>},
     "period": {"spec": <the spec's per-period fields>, "callables": <emission builder, aggregator>},
     "engine": {"version": ENGINE_VERSION, "package": <crunch-dagster's version>}}

- The spec's fields are each in exactly one of CYCLE_SPEC_FIELDS (what decides one cycle's
  predictions and scores), PERIOD_SPEC_FIELDS (what decides a checkpoint from the scores) and
  OPERATIONAL_SPEC_FIELDS (when things run, what is shown: no number depends on them, so they are
  left out). A new spec field must be classified: tests/test_rules_fingerprint.py fails otherwise.
- A plugged callable is covered by its import path and its source text, with the source of the
  functions, classes and simple constants of its own package that it names (recursively): a
  helper of the scoring function is part of it. Engine code (crunch_assets, resources) is covered by
  the engine's declared version instead. A rules class (a CompetitionRules subclass) is covered by its
  source and configuration the same way; so is the ground-truth resource.
- ENGINE_VERSION is declared here and raised when a change of the engine changes a number for the
  same spec and callables (the money path: scores.py, standings.py, emission.py, checkpoints.py,
  copies.py). The document also lists the sha256 of those modules' sources, for an auditor; they
  are not hashed into the fingerprint, so a refactor that changes no number changes no fingerprint.

Each cycle is scored under the rules in force at its cycle time: the spec's own rules, changed by
each declared RulesChange whose effective_from is at or before it (`RulesBook.at`). The cycle's
resolution (its scores, written in one transaction: the score batch) stores that version's
fingerprint on the cycle (inputs.rules_fingerprint), and the fingerprint's document is recorded
once in crunch.rules_fingerprints. A checkpoint stores the fingerprint in force at its period's
end and which fingerprints its cycles were scored under; a period whose cycles were scored under
different per-cycle rules ("cycle" part) that no declared change explains is flagged, and the gate
refuses it (`check_period`).
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.metadata
import inspect
import marshal
import sys
import threading
import types
from collections import OrderedDict
from dataclasses import MISSING, dataclass, fields, is_dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

import rfc8785

from crunch_assets.rules import CallableRules, CompetitionRules, FeedGroundTruth, GroundTruthResource, WiringError
from crunch_assets.spec import CompetitionSpec, SpecError
from resources import clock

FINGERPRINT_SCHEME = "crunch-rules/1"
# The money path's version: raise it when a change of the engine changes any number for the same
# spec and callables (and say so in the change). Not raised for refactors that change no number.
ENGINE_VERSION = "1"
MONEY_PATH_MODULES = ("crunch_assets.defs.scores.assets", "crunch_assets.standings", "crunch_assets.emission",
                      "crunch_assets.defs.checkpoints.assets", "crunch_assets.copies", "crunch_assets.defs.rollups.assets")

CYCLE_SPEC_FIELDS = (
    "scopes", "extra_subjects", "failure_policy", "ranking_descending", "history_seconds",
    "max_price_staleness_seconds", "void_after_seconds", "quarantine_after_failures", "quarantine_cooldown_seconds",
    "ensembles",
)
PERIOD_SPEC_FIELDS = (
    "checkpoint_interval_seconds", "leaderboard_windows", "ranking_key", "checkpoint_ranking", "eligibility",
    "emission", "copy_detection", "payout", "gate", "metrics",
)
# Fields in the document only when declared (not at their default): a competition that declares
# none keeps the fingerprint it had before they existed, so its stored cycles stay explained.
DECLARED_ONLY_SPEC_FIELDS = ("ensembles", "metrics")
# When things run and what is shown: no score, standing or reward depends on them. `start` is the
# first partition (cycle times are multiples of the interval since the epoch, whatever it is);
# `settle_delay_seconds` delays scoring, never changes it; `rules_changes` are the versions themselves.
OPERATIONAL_SPEC_FIELDS = (
    "slug", "start", "description", "public_input_keys", "settle_delay_seconds", "live_feed_wait_seconds",
    "feed_retention_days", "feed_poll_interval_seconds", "max_catchup_seconds", "cycle_lead_seconds",
    "cycle_sensor_interval_seconds", "settlement_sensor_interval_seconds", "registry_sensor_interval_seconds",
    "lag_sensor_interval_seconds", "rollup_sensor_interval_seconds", "checkpoint_sensor_interval_seconds",
    "run_failure_sensor_interval_seconds", "rules_changes", "score_name",
)
CYCLE_SLOTS = ("model_base_class", "input_builder", "call_builder", "output_validator", "ground_truth_resolver",
               "scoring_function", "cross_sectional", "input_schema", "output_schema", "score_schema")
PERIOD_SLOTS = ("emission_builder", "snapshot_aggregator")
# Packages whose code is the engine's (covered by ENGINE_VERSION), never followed into.
ENGINE_PACKAGES = ("crunch_assets", "resources")
MAX_FOLLOWED_OBJECTS = 500


class RulesError(ValueError):
    """A declared rules change cannot be applied (a slot of a rules class that has none, a path
    that does not import, a spec that no longer validates); the message names it."""


# --- canonical JSON ------------------------------------------------------------------------------

def to_json(value: Any) -> Any:
    """A spec value as plain JSON: dataclasses by their fields, datetimes as ISO-8601, tuples as
    lists. Anything else is an error, never silently stringified."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    raise TypeError(f"cannot put a {type(value).__name__} in a rules document: {value!r}")


def canonical_bytes(document: Any) -> bytes:
    """RFC 8785 (JSON Canonicalization Scheme) bytes of a JSON value."""
    return rfc8785.dumps(document)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(document: Any) -> str:
    return sha256_hex(canonical_bytes(document))


# --- sources -------------------------------------------------------------------------------------

def _top_package(module_name: str | None) -> str:
    return (module_name or "").split(".", 1)[0]


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


def _source_text(obj: Any) -> str:
    """The source of a function or class; compiled code without a source file is identified by the
    sha256 of its marshalled code (stable for one Python version)."""
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        if code is not None:
            return f"<no source file: code sha256 {sha256_hex(marshal.dumps(code))}>"
        return f"<no source file: {_qualified(obj)}>"


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _simple_constant(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(_simple_constant(v) for v in value)
    return False


def _named_objects(obj: Any) -> tuple[dict, set[str]]:
    """(the globals `obj` is resolved in, the global names its code uses)."""
    if isinstance(obj, type):
        module = sys.modules.get(obj.__module__)
        names: set[str] = set()
        for klass in obj.__mro__:
            if klass is object or _top_package(klass.__module__) != _top_package(obj.__module__):
                continue
            for member in vars(klass).values():
                function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                if isinstance(function, property):
                    function = function.fget
                code = getattr(function, "__code__", None)
                if code is not None:
                    names |= _code_names(code)
        return (vars(module) if module else {}), names
    function = inspect.unwrap(obj) if callable(obj) else obj
    code = getattr(function, "__code__", None)
    return getattr(function, "__globals__", {}), (_code_names(code) if code is not None else set())


def source_document(obj: Any) -> dict:
    """{"source": the object's source, "uses": {name: source or repr}}: the functions, classes and
    simple constants of its own top-level package that it names, followed recursively (engine
    packages excepted: ENGINE_VERSION covers them)."""
    package = _top_package(getattr(obj, "__module__", None))
    uses: dict[str, str] = {}
    seen: set[int] = {id(obj)}
    pending = [obj]
    while pending and len(uses) < MAX_FOLLOWED_OBJECTS:
        current = pending.pop()
        namespace, names = _named_objects(current)
        for name in sorted(names):
            if name not in namespace:
                continue
            target = namespace[name]
            if isinstance(target, (types.FunctionType, type)):
                module = getattr(target, "__module__", None)
                if _top_package(module) != package or package in ENGINE_PACKAGES or id(target) in seen:
                    continue
                seen.add(id(target))
                uses[_qualified(target)] = _source_text(target)
                pending.append(target)
            elif _simple_constant(target) and not isinstance(target, types.ModuleType):
                module = namespace.get("__name__", "?")
                if _top_package(module) == package and package not in ENGINE_PACKAGES:
                    uses[f"{module}:{name}"] = repr(target)
    return {"source": _source_text(obj), "uses": dict(sorted(uses.items()))}


def _slot_document(path: str | None) -> dict | None:
    if path is None:
        return None
    from crunch_assets.rules import import_object

    return {"path": path, **source_document(import_object("rules", path))}


def _resource_document(resource: Any) -> dict:
    """A rules class or ground-truth resource: its class path, configuration and source."""
    config = resource.model_dump() if hasattr(resource, "model_dump") else {}
    return {"class": _qualified(type(resource)), "config": to_json(config), **source_document(type(resource))}


def callables_documents(rules: CompetitionRules, ground_truth: GroundTruthResource | None) -> tuple[dict, dict]:
    """(the per-cycle callables, the per-period ones), each slot with its source."""
    truth = ground_truth if ground_truth is not None else FeedGroundTruth()
    cycle: dict[str, Any] = {"ground_truth": _resource_document(truth)}
    period: dict[str, Any] = {}
    if isinstance(rules, CallableRules):
        for slot in CYCLE_SLOTS:
            cycle[slot] = _slot_document(getattr(rules, slot))
        for slot in PERIOD_SLOTS:
            period[slot] = _slot_document(getattr(rules, slot))
    else:
        cycle["rules"] = _resource_document(rules)
    return cycle, period


# --- versions ------------------------------------------------------------------------------------

def _spec_part(spec: CompetitionSpec, names: Sequence[str]) -> dict:
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                for f in fields(CompetitionSpec) if f.name in DECLARED_ONLY_SPEC_FIELDS}
    return {name: to_json(getattr(spec, name)) for name in names
            if name not in defaults or getattr(spec, name) != defaults[name]}


def contribution_callables(spec: CompetitionSpec) -> tuple[dict, dict]:
    """(per-cycle, per-period) documents of the callables the ensembles and the metrics name
    (crunch_assets/ensembles.py, metrics.py): an ensemble's combine and weighting decide its
    output and so its score (per cycle); its leave_one_out and the metrics' signal and outcome
    decide the statistics the contribution emission pays on (per period). Empty when none is declared."""
    cycle: dict[str, Any] = {}
    period: dict[str, Any] = {}
    for ensemble in spec.ensembles:
        built = {slot: _slot_document(getattr(ensemble, slot)) for slot in ("combine", "weighting")
                 if ":" in getattr(ensemble, slot)}
        if built:
            cycle.setdefault("ensembles", {})[ensemble.name] = built
        if ensemble.leave_one_out is not None:
            period.setdefault("ensembles_leave_one_out", {})[ensemble.name] = _slot_document(ensemble.leave_one_out)
    if spec.metrics.enabled:
        period["metrics"] = {slot: _slot_document(getattr(spec.metrics, slot)) for slot in ("signal", "outcome")}
    return cycle, period


def _engine_document() -> dict:
    try:
        package = importlib.metadata.version("crunch-dagster")
    except importlib.metadata.PackageNotFoundError:
        package = None
    return {"version": ENGINE_VERSION, "package": package}


def money_path_sources() -> dict[str, str]:
    """module -> sha256 of its source: what an auditor compares (not part of the fingerprint)."""
    result = {}
    for name in MONEY_PATH_MODULES:
        module = importlib.import_module(name)
        result[name] = sha256_hex(inspect.getsource(module).encode())
    return result


def rules_document(spec: CompetitionSpec, rules: CompetitionRules, ground_truth: GroundTruthResource | None) -> dict:
    cycle_callables, period_callables = callables_documents(rules, ground_truth)
    cycle_contribution, period_contribution = contribution_callables(spec)
    cycle_callables.update(cycle_contribution)
    period_callables.update(period_contribution)
    return {
        "scheme": FINGERPRINT_SCHEME,
        "cycle": {"spec": _spec_part(spec, CYCLE_SPEC_FIELDS), "callables": cycle_callables},
        "period": {"spec": _spec_part(spec, PERIOD_SPEC_FIELDS), "callables": period_callables},
        "engine": _engine_document(),
    }


@dataclass(frozen=True)
class RulesVersion:
    """The rules in force from `effective_from` (None: from the beginning) until the next version."""

    effective_from: datetime | None
    spec: CompetitionSpec
    rules: CompetitionRules
    document: dict
    fingerprint: str
    cycle_digest: str  # sha256 of the document's "cycle" part: what a period must not mix undeclared
    note: str = ""

    def summary(self) -> dict:
        return {"effective_from": self.effective_from.isoformat() if self.effective_from else None,
                "fingerprint": self.fingerprint, "cycle_digest": self.cycle_digest, "note": self.note}


def make_version(effective_from: datetime | None, spec: CompetitionSpec, rules: CompetitionRules,
                 ground_truth: GroundTruthResource | None, note: str = "") -> RulesVersion:
    document = rules_document(spec, rules, ground_truth)
    return RulesVersion(effective_from, spec, rules, document, digest(document), digest(document["cycle"]), note)


def _changed_rules(rules: CompetitionRules, slots: Mapping[str, str | None], when: datetime) -> CompetitionRules:
    if not slots:
        return rules
    if not isinstance(rules, CallableRules):
        raise RulesError(f"rules_changes at {when.isoformat()}: slots can change only for CallableRules; "
                         f"{type(rules).__name__} is a rules class (declare its change in the class itself)")
    values = {name: getattr(rules, name) for name in type(rules).model_fields}
    changed = type(rules)(**{**values, **slots})
    try:
        changed.check_wiring()
    except WiringError as error:
        raise RulesError(f"rules_changes at {when.isoformat()}: {error}") from None
    return changed


@dataclass(frozen=True)
class RulesBook:
    """Every version of a competition's rules, oldest first; `at(t)` is the one in force at t."""

    versions: tuple[RulesVersion, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", [v.effective_from for v in self.versions[1:]])

    def at(self, instant: datetime) -> RulesVersion:
        return self.versions[bisect.bisect_right(self._starts, instant)]  # type: ignore[attr-defined]

    @property
    def current(self) -> RulesVersion:
        """In force now (the fingerprint computed at load)."""
        return self.at(clock.now())

    def in_period(self, start: datetime, end: datetime) -> list[RulesVersion]:
        """The versions in force at some instant of [start, end), oldest first."""
        first = self.at(start)
        return [first] + [v for v in self.versions if v.effective_from is not None and start < v.effective_from < end]

    def checkpoint_version(self, start: datetime, end: datetime) -> RulesVersion:
        """The version a checkpoint of [start, end) is built and named under: in force at its end."""
        return self.at(end - timedelta(microseconds=1))

    def schedule(self) -> list[dict]:
        return [v.summary() for v in self.versions]

    def period_schedule_digest(self, start: datetime, end: datetime) -> str:
        """A digest of the versions in force during [start, end): a checkpoint built under other
        declared changes (same fingerprint at its end, other versions before) is out of date."""
        return digest([v.summary() for v in self.in_period(start, end)])

    def documents(self) -> dict[str, RulesVersion]:
        return {v.fingerprint: v for v in self.versions}


def build_book(spec: CompetitionSpec, rules: CompetitionRules,
               ground_truth: GroundTruthResource | None = None) -> RulesBook:
    """Every version: the spec's own rules, then each declared change applied over the one before.
    A change that cannot be applied fails here (the code location's load)."""
    base_spec = replace(spec, rules_changes=()) if spec.rules_changes else spec
    versions = [make_version(None, base_spec, rules, ground_truth)]
    current_spec, current_rules = base_spec, rules
    for change in spec.rules_changes:
        when = change.effective_from
        try:
            current_spec = replace(current_spec, **change.spec_changes) if change.spec_changes else current_spec
        except SpecError as error:
            raise RulesError(f"rules_changes at {when.isoformat()}: {error}") from None
        current_rules = _changed_rules(current_rules, change.slot_paths, when)
        versions.append(make_version(when, current_spec, current_rules, ground_truth, change.note))
    return RulesBook(tuple(versions))


_books: OrderedDict[tuple, RulesBook] = OrderedDict()
_books_lock = threading.Lock()
BOOK_CACHE_SIZE = 32


def rules_book(spec: CompetitionSpec, rules: CompetitionRules,
               ground_truth: GroundTruthResource | None = None) -> RulesBook:
    """The competition's RulesBook, computed once per process for the same spec, rules and
    ground-truth resource (at the code location's load, then read from the cache)."""
    truth = ground_truth if ground_truth is not None else FeedGroundTruth()
    key = (repr(spec), type(rules), repr(rules), type(truth), repr(truth))
    with _books_lock:
        book = _books.get(key)
        if book is not None:
            _books.move_to_end(key)
            return book
    book = build_book(spec, rules, ground_truth)
    with _books_lock:
        _books[key] = book
        while len(_books) > BOOK_CACHE_SIZE:
            _books.popitem(last=False)
    return book


# --- a period's rules ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CycleLabel:
    """What a stored cycle was scored under (None: scored before fingerprints were recorded)."""

    cycle_at: datetime
    scope_key: str
    fingerprint: str | None


def check_period(book_schedule: Sequence[dict], labels: Iterable[CycleLabel], cycle_digests: Mapping[str, str],
                 start: datetime, end: datetime, checkpoint_fingerprint: str) -> dict:
    """The checkpoint's `rules` entry: which fingerprints the period's cycles were scored under, and
    whether the period mixes per-cycle rules that no declared change explains (`mixed`).

    `book_schedule`: the versions (RulesVersion.summary(), oldest first) the cycles are checked
    against; `cycle_digests`: fingerprint -> its cycle digest, for the labels (a fingerprint with no
    recorded document is its own digest). Mixed: the labelled cycles carry more than one cycle
    digest, or the declared versions of the period more than one, and some cycle's digest is not
    the one declared in force at its time."""
    starts = [datetime.fromisoformat(v["effective_from"]) for v in book_schedule[1:]]

    def declared(at: datetime) -> dict:
        return book_schedule[bisect.bisect_right(starts, at)]

    in_period = [declared(start)] + [v for v in book_schedule[1:]
                                     if start < datetime.fromisoformat(v["effective_from"]) < end]
    groups: dict[str | None, dict] = {}
    unexpected: list[CycleLabel] = []
    runs: list[list] = []  # [first cycle, last cycle, fingerprint, cycles]: consecutive cycles under one cycle digest
    unlabelled = 0
    for label in sorted(labels, key=lambda x: (x.cycle_at, x.scope_key)):
        if label.fingerprint is None:
            unlabelled += 1
            continue
        cycle_digest = cycle_digests.get(label.fingerprint, f"unrecorded:{label.fingerprint}")
        if runs and cycle_digests.get(runs[-1][2], f"unrecorded:{runs[-1][2]}") == cycle_digest:
            runs[-1][1] = label.cycle_at
            runs[-1][3] += 1
        else:
            runs.append([label.cycle_at, label.cycle_at, label.fingerprint, 1])
        expected = declared(label.cycle_at)
        as_declared = cycle_digest == expected["cycle_digest"]
        group = groups.setdefault(label.fingerprint, {
            "fingerprint": label.fingerprint, "cycle_digest": cycle_digest, "cycles": 0, "as_declared": 0,
            "first_cycle": label.cycle_at.isoformat(), "last_cycle": None})
        group["cycles"] += 1
        group["as_declared"] += int(as_declared)
        group["last_cycle"] = label.cycle_at.isoformat()
        if not as_declared:
            unexpected.append(label)
    digests = {g["cycle_digest"] for g in groups.values()}
    declared_digests = {v["cycle_digest"] for v in in_period}
    mixed = bool(unexpected) and (len(digests) > 1 or len(declared_digests) > 1)
    if mixed:
        shown = "; ".join(f"{a.isoformat()} .. {b.isoformat()} under {fp[:16]} ({n} cycle(s))"
                          for a, b, fp, n in runs[:6]) + ("; ..." if len(runs) > 6 else "")
        changes = ", ".join(run[0].isoformat() for run in runs[1:6])
        detail = (f"the period's cycles were scored under {len(digests)} different per-cycle rules that no declared "
                  f"change explains ({len(unexpected)} cycle(s) not under the rules declared in force at their time): "
                  f"{shown}. Declare each change in the spec at the cycle it took effect (rules_changes=(RulesChange("
                  f"effective_from=..., ...),): {changes or 'see the cycles above'}), keeping the rules before it "
                  "importable, or the period cannot be paid")
    elif len(groups) > 1:
        detail = (f"scored under {len(groups)} fingerprints, as declared (the per-cycle rules changed at declared "
                  "cycles, or only the per-period rules changed)")
    elif groups:
        only = next(iter(groups.values()))
        detail = f"every scored cycle under {only['fingerprint'][:16]}"
        if unexpected:
            detail += (f"; the rules in force now for these cycles are {declared(unexpected[0].cycle_at)['fingerprint'][:16]}"
                       " (the rules changed after they were scored: not a mix)")
    else:
        detail = "no cycle of the period carries a fingerprint"
    if unlabelled:
        detail += f"; {unlabelled} cycle(s) scored before fingerprints were recorded"
    return {
        "fingerprint": checkpoint_fingerprint,
        "scheme": FINGERPRINT_SCHEME,
        "engine_version": ENGINE_VERSION,
        "versions": in_period,
        "scored_under": list(groups.values()),
        "unlabelled_cycles": unlabelled,
        "mixed": mixed,
        "detail": detail,
    }

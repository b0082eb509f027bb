"""Copy detection: models that return what another model returns are paid once.

Pure functions over a period's successful outputs (made status PENDING: answered and valid; FAILED
and ABSENT never count), one scope at a time, cycles in time order:

1. Each output is put in canonical form: every number rounded to the declared decimals (ints as
   floats, -0.0 as 0.0), keys sorted, serialised (orjson). Outputs the competition declares as
   `never_match` (e.g. the neutral answer) are dropped: they are neither a match nor a common cycle.
2. Per cycle, models are grouped by their canonical bytes in a hash table (a 64-bit hash, equality
   checked on the bytes: no false match from a collision). Every pair inside a group matches at
   that cycle (same cycle); every model of a group at cycle t and the models of the same group at
   cycle t - k match lagged by k (the later one repeats the earlier one's forecast). Counts go into
   dense models x models matrices (numpy), so a cycle costs O(models) plus the matching pairs.
   With distance "max_abs_difference" each cycle compares every pair of outputs of the same
   structure (Chebyshev distance <= tolerance): O(pairs) per cycle.
3. A pair's common cycles (both answered, lagged: the later at t and the earlier at t - k) are
   counted only for the pairs with enough matches, from per-model answer bitmaps.
4. A pair matching on at least `match_fraction` of its common cycles of a scope (exact rational
   comparison), with at least `min_common_cycles` of them, is a link; linked models form a copy
   cluster (connected components).
5. Who is paid (policy "pay_first"): a lagged copy is always the copier (a link in one direction
   only); among the others the earliest registered (the registry's first_seen_at) made the output
   first. Registered at the same instant, or unknown: undecided, and the operator decides through
   the audited resolve call. Policy "flag": nobody is excluded and the gate blocks until every
   cluster is resolved. An operator's resolution (pay one member, or pay all) overrides either.

Everything is a function of the stored outputs, the registry and the stored resolutions: the
gate's recomputation and any replay order give the same clusters.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import orjson

from crunch_assets.spec import CopyDetection, Scope

SAME_CYCLE = "same_cycle"
LAGGED = "lagged"
RESOLUTION_DECISIONS = ("pay_one", "pay_all")
_COMMON_CHUNK = 2048  # candidate pairs whose common cycles are counted at once (memory: chunk x cycles bytes)


# --- canonical form ------------------------------------------------------------------------------

def parse_output(raw: Any) -> Any:
    """A stored output (JSON text from the store, or already a value)."""
    if isinstance(raw, (str, bytes, bytearray, memoryview)):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:  # e.g. an integer beyond 64 bits: the standard library reads it
            return json.loads(bytes(raw) if not isinstance(raw, str) else raw)
    return raw


def rounded(value: Any, decimals: int) -> Any:
    """Every number as a float rounded to `decimals` places (so 1 == 1.0 and -0.0 == 0.0). The
    hot path of the hashing detection: exact types first, subclasses after."""
    kind = type(value)
    if kind is float:
        return round(value, decimals) + 0.0
    if kind is dict:
        return {(k if type(k) is str else str(k)): (round(v, decimals) + 0.0 if type(v) is float else rounded(v, decimals))
                for k, v in value.items()}
    if kind is str or kind is bool or value is None:
        return value
    if kind is list or kind is tuple:
        return [round(v, decimals) + 0.0 if type(v) is float else rounded(v, decimals) for v in value]
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        try:
            return round(float(value), decimals) + 0.0
        except OverflowError:  # an integer too large for a float: compared exactly
            return str(value)
    if isinstance(value, dict):
        return {str(k): rounded(v, decimals) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, decimals) for v in value]
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def canonical(value: Any, decimals: int) -> bytes:
    """The bytes two outputs are equal by (distance "rounded_equality")."""
    return orjson.dumps(rounded(value, decimals), option=orjson.OPT_SORT_KEYS)


def _shape(value: Any, numbers: list[float]) -> Any:
    """The output with its numbers taken out (into `numbers`, in key order): the structure two
    outputs must share to be compared number by number."""
    if isinstance(value, bool) or value is None:
        return ["b", value]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, (int, float)):
        numbers.append(float(value))
        return "n"
    if isinstance(value, dict):
        return {str(k): _shape(value[k], numbers) for k in sorted(value, key=str)}
    return [_shape(v, numbers) for v in value]


def structure(value: Any) -> tuple[bytes, list[float]]:
    numbers: list[float] = []
    shape = _shape(value, numbers)
    return orjson.dumps(shape, option=orjson.OPT_SORT_KEYS), numbers


# --- one scope's scan ----------------------------------------------------------------------------

class _Growing:
    """A dense models x models count matrix that grows as models appear."""

    def __init__(self, capacity: int):
        self.counts = np.zeros((capacity, capacity), dtype=np.int32)

    def ensure(self, size: int) -> None:
        capacity = self.counts.shape[0]
        if size > capacity:
            grown = np.zeros((max(size, capacity * 2),) * 2, dtype=np.int32)
            grown[:capacity, :capacity] = self.counts
            self.counts = grown


@dataclass
class ScopeScan:
    """Match counts of one scope over a period: per pair, same cycle and at each lag."""

    scope_key: str
    cycles: int
    model_ids: list[str]
    answered: np.ndarray  # models x cycles, 1 where the model has a counted output
    same: np.ndarray  # [i, j]: cycles where i and j are equal (symmetric)
    lagged: dict[int, np.ndarray]  # [i, j]: cycles t where i at t equals j at t - lag


def scan_scope(
    scope: Scope, rows: Iterable[tuple[int, str, Any]], start: datetime, end: datetime, detection: CopyDetection,
    model_ids: Sequence[str] = (),
) -> ScopeScan:
    """Count matches over `rows`: (cycle time in epoch seconds, model id, output) of one scope in
    [start, end), in cycle time order (models in any order)."""
    interval = scope.prediction_interval_seconds
    first = -(-int(start.timestamp()) // interval) * interval
    cycles = max(0, -(-(int(end.timestamp()) - first) // interval))
    index: dict[str, int] = {}
    for model_id in model_ids:
        index.setdefault(model_id, len(index))
    capacity = max(len(index), 8)
    answered = [bytearray(cycles) for _ in range(len(index))]
    same = _Growing(capacity)
    lagged = {k: _Growing(capacity) for k in detection.lags}
    max_lag = max(detection.lags, default=0)
    never = {canonical(v, detection.decimals) for v in detection.never_match}
    exact = detection.distance == "rounded_equality"
    history: dict[int, dict] = {}  # cycle position -> its groups (exact: bytes -> models; near: shape -> (models, matrix))

    current_ts: int | None = None
    batch: list[tuple[int, Any]] = []

    def close_cycle(ts: int, entries: list[tuple[int, Any]]) -> None:
        position = (ts - first) // interval
        if (ts - first) % interval or not 0 <= position < cycles:
            raise ValueError(f"{scope.key}: cycle {ts} is not a cycle of the period")
        size = len(index)
        same.ensure(size)
        for grid in lagged.values():
            grid.ensure(size)
        while len(answered) < size:
            answered.append(bytearray(cycles))
        groups = _exact_groups(entries, never, detection.decimals, answered, position) if exact else \
            _near_groups(entries, never, detection.decimals, answered, position)
        if exact:
            for members in groups.values():
                if len(members) > 1:
                    ix = np.array(members)
                    same.counts[np.ix_(ix, ix)] += 1
            for lag, grid in lagged.items():
                earlier = history.get(position - lag)
                if not earlier:
                    continue
                for key, members in groups.items():
                    before = earlier.get(key)
                    if before:
                        grid.counts[np.ix_(np.array(members), np.array(before))] += 1
        else:
            tolerance = detection.tolerance
            for members, matrix in groups.values():
                if len(members) > 1:
                    one, other = _near_pairs(matrix, matrix, tolerance, same_set=True)
                    same.counts[members[one], members[other]] += 1
                    same.counts[members[other], members[one]] += 1
            for lag, grid in lagged.items():
                earlier = history.get(position - lag)
                if not earlier:
                    continue
                for key, (members, matrix) in groups.items():
                    before = earlier.get(key)
                    if before is not None:
                        later, sooner = _near_pairs(matrix, before[1], tolerance, same_set=False)
                        grid.counts[members[later], before[0][sooner]] += 1
        if max_lag:
            history[position] = groups
            for old in [p for p in history if p <= position - max_lag]:
                del history[old]

    for ts, model_id, output in rows:
        if ts != current_ts:
            if current_ts is not None:
                if ts < current_ts:
                    raise ValueError(f"{scope.key}: rows must come in cycle order ({ts} after {current_ts})")
                close_cycle(current_ts, batch)
            current_ts, batch = ts, []
        position = index.get(model_id)
        if position is None:
            position = index[model_id] = len(index)
        batch.append((position, output))
    if current_ts is not None:
        close_cycle(current_ts, batch)

    size = len(index)
    while len(answered) < size:
        answered.append(bytearray(cycles))
    matrix = np.frombuffer(b"".join(answered), dtype=np.uint8).reshape(size, cycles) if size and cycles \
        else np.zeros((size, cycles), dtype=np.uint8)
    return ScopeScan(scope.key, cycles, list(index), matrix, same.counts[:size, :size],
                     {k: g.counts[:size, :size] for k, g in lagged.items()})


def _exact_groups(entries, never, decimals, answered, position) -> dict[bytes, list[int]]:
    groups: dict[bytes, list[int]] = {}
    dumps, sort_keys, loads = orjson.dumps, orjson.OPT_SORT_KEYS, orjson.loads
    for model, output in entries:
        row = answered[model]
        if row[position]:
            continue  # one output per model and cycle (the store's key); a repeat is ignored
        try:
            value = loads(output) if type(output) is str else parse_output(output)
        except orjson.JSONDecodeError:
            value = parse_output(output)
        key = dumps(rounded(value, decimals), option=sort_keys)
        if key in never:
            continue
        row[position] = 1
        group = groups.get(key)
        if group is None:
            groups[key] = [model]
        else:
            group.append(model)
    return groups


def _near_groups(entries, never, decimals, answered, position) -> dict[bytes, tuple[np.ndarray, np.ndarray]]:
    collected: dict[bytes, tuple[list[int], list[list[float]]]] = {}
    for model, output in entries:
        row = answered[model]
        if row[position]:
            continue
        value = parse_output(output)
        if never and canonical(value, decimals) in never:
            continue
        row[position] = 1
        shape, numbers = structure(value)
        members, vectors = collected.setdefault(shape, ([], []))
        members.append(model)
        vectors.append(numbers)
    return {shape: (np.array(members), np.array(vectors, dtype=np.float64).reshape(len(members), -1))
            for shape, (members, vectors) in collected.items()}


def _near_pairs(a: np.ndarray, b: np.ndarray, tolerance: float, same_set: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i into a, j into b) whose numbers are all within `tolerance` (Chebyshev
    distance, in float64); same_set (a is b): i < j only. A sweep over the column that spreads the
    most: O(n log n) plus the pairs within tolerance on that column, so O(pairs) only when most
    outputs are that close."""
    if a.shape[1] == 0:  # no number at all: the same structure is the same output
        first, second = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
        first, second = first.ravel(), second.ravel()
    else:
        column = int(np.argmax(np.ptp(a if same_set else np.vstack([a, b]), axis=0)))
        order = np.argsort(b[:, column], kind="stable")
        keys = b[order, column]
        values = a[:, column]
        slack = 1e-9 * (tolerance + np.abs(values)) + 1e-300  # a superset; the exact test follows
        lo = np.searchsorted(keys, values - tolerance - slack, side="left")
        hi = np.searchsorted(keys, values + tolerance + slack, side="right")
        counts = hi - lo
        total = int(counts.sum())
        first = np.repeat(np.arange(len(a)), counts)
        starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        second = order[starts + np.arange(total)]
    if same_set:
        keep = first < second
        first, second = first[keep], second[keep]
    close = np.all(np.abs(a[first] - b[second]) <= tolerance, axis=1)
    return first[close], second[close]


# --- links: pairs that match often enough --------------------------------------------------------

@dataclass(frozen=True)
class Link:
    """A pair that matches on at least the declared fraction of its common cycles of a scope.
    Same cycle: model_id < other_id. Lagged: model_id's output at t equals other_id's at t - lag."""

    kind: str
    lag: int
    model_id: str
    other_id: str
    scope_key: str
    matches: int
    common: int

    @property
    def percent(self) -> int:
        """Whole percent, rounded down (never shows 100 % for less)."""
        return 100 * self.matches // self.common

    def as_dict(self) -> dict:
        return {"kind": self.kind, "lag": self.lag, "model_id": self.model_id, "other_id": self.other_id,
                "scope_key": self.scope_key, "matches": self.matches, "common_cycles": self.common,
                "percent": self.percent}


def links_of(scan: ScopeScan, detection: CopyDetection) -> list[Link]:
    """The scope's links: counts checked against the declared fraction exactly (no float noise)."""
    fraction = Fraction(str(detection.match_fraction))
    floor = max(1, -(-(fraction.numerator * detection.min_common_cycles) // fraction.denominator))
    result: list[Link] = []
    relations = [(SAME_CYCLE, 0, np.triu(scan.same, k=1))]
    relations += [(LAGGED, lag, counts.copy()) for lag, counts in sorted(scan.lagged.items())]
    for kind, lag, counts in relations:
        if kind == LAGGED:
            np.fill_diagonal(counts, 0)  # a model repeating itself is no copy
        pairs = np.argwhere(counts >= floor)
        for offset in range(0, len(pairs), _COMMON_CHUNK):
            chunk = pairs[offset:offset + _COMMON_CHUNK]
            later, earlier = scan.answered[chunk[:, 0]], scan.answered[chunk[:, 1]]
            if lag:
                later, earlier = later[:, lag:], earlier[:, :scan.cycles - lag]
            common = np.count_nonzero(later & earlier, axis=1)
            for (i, j), n in zip(chunk.tolist(), common.tolist()):
                matches = int(counts[i, j])
                if n >= detection.min_common_cycles and matches * fraction.denominator >= fraction.numerator * n:
                    a, b = scan.model_ids[i], scan.model_ids[j]
                    if kind == SAME_CYCLE and b < a:
                        a, b = b, a
                    result.append(Link(kind, lag, a, b, scan.scope_key, matches, n))
    return sorted(result, key=lambda link: (link.model_id, link.other_id, link.kind, link.lag, link.scope_key))


# --- clusters ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resolution:
    """An operator's decision on a cluster (stored, audited): pay one member, or pay them all."""

    id: int
    cluster_key: str
    members: tuple[str, ...]
    decision: str  # pay_one | pay_all
    paid_model_id: str | None
    actor: str
    at: datetime
    note: str | None = None


@dataclass(frozen=True)
class Cluster:
    key: str
    members: tuple[str, ...]
    links: tuple[Link, ...]
    registered_at: dict[str, str | None]
    lagged_copiers: tuple[str, ...]
    # The members that may have made the output first: not a lagged copy, registered at the
    # earliest instant (all of them when no registration is known).
    first_makers: tuple[str, ...]
    original: str | None  # the one first maker; None: undecided (registered together)
    decided_by: str  # how `original` was found, in words


@dataclass(frozen=True)
class ClusterDecision:
    cluster: Cluster
    paid: tuple[str, ...]
    excluded: dict[str, str]  # model_id -> why it is not paid
    resolved_by: str | None  # "policy" | "operator" | None (unresolved: the gate blocks)
    resolution: Resolution | None


def cluster_key(members: Iterable[str]) -> str:
    """A cluster's identity: its members (a resolution applies only to exactly those members)."""
    return hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()[:16]


def build_clusters(links: Sequence[Link], registered_at: Mapping[str, datetime | None]) -> list[Cluster]:
    """Connected components of the links; in each, who made the output first."""
    parent: dict[str, str] = {}

    def root(m: str) -> str:
        parent.setdefault(m, m)
        while parent[m] != m:
            parent[m] = parent[parent[m]]
            m = parent[m]
        return m

    for link in links:
        a, b = root(link.model_id), root(link.other_id)
        if a != b:
            parent[max(a, b)] = min(a, b)
    components: dict[str, list[str]] = defaultdict(list)
    for m in sorted(parent):
        components[root(m)].append(m)
    lag_pairs = {(link.model_id, link.other_id) for link in links if link.kind == LAGGED}
    clusters = []
    for members in components.values():
        member_set = set(members)
        own = tuple(link for link in links if link.model_id in member_set)
        # a lagged link in one direction only: the later output is the copy
        copiers = tuple(sorted({b for b, a in lag_pairs if b in member_set and (a, b) not in lag_pairs}))
        candidates = [m for m in members if m not in copiers] or list(members)
        known = [(registered_at[m], m) for m in candidates if registered_at.get(m) is not None]
        first = min((at for at, _ in known), default=None)
        earliest = sorted(m for at, m in known if at == first) or sorted(candidates)
        if copiers and len(candidates) == 1:
            original, decided_by = candidates[0], f"{', '.join(copiers)} repeat(s) its earlier output"
        elif len(earliest) == 1:
            original = earliest[0]
            decided_by = "registered first" + (f"; {', '.join(copiers)} repeat(s) an earlier output" if copiers else "")
        else:
            original = None
            decided_by = ("registered at the same instant: " if known else "registration unknown: ") \
                + ", ".join(earliest) + "; the operator decides which is paid"
        registered = {m: (registered_at[m].isoformat() if registered_at.get(m) else None) for m in members}
        clusters.append(Cluster(cluster_key(members), tuple(members), own, registered, copiers,
                                (original,) if original else tuple(earliest), original, decided_by))
    return sorted(clusters, key=lambda c: c.members)


def evidence(cluster: Cluster, model_id: str, multiple_scopes: bool) -> tuple[str | None, str]:
    """(partner, text): the member's strongest link, in words ("identical to X on 98 % of 360 cycles")."""
    own = [link for link in cluster.links if model_id in (link.model_id, link.other_id)]
    if not own:
        return None, ""
    best = max(own, key=lambda link: (Fraction(link.matches, link.common), link.common, link.kind == SAME_CYCLE,
                                      link.other_id == cluster.original or link.model_id == cluster.original,
                                      -link.lag))
    partner = best.other_id if best.model_id == model_id else best.model_id
    where = f" {best.scope_key}" if multiple_scopes else ""
    if best.kind == SAME_CYCLE:
        text = f"identical to {partner} on {best.percent} % of {best.common}{where} cycles"
    elif best.model_id == model_id:
        text = (f"repeats {partner}'s output of {best.lag} cycle(s) earlier on {best.percent} % of "
                f"{best.common}{where} cycles")
    else:
        text = f"{partner} repeats its output {best.lag} cycle(s) later on {best.percent} % of {best.common}{where} cycles"
    return partner, text


def decide(clusters: Sequence[Cluster], detection: CopyDetection, resolutions: Mapping[str, Resolution],
           multiple_scopes: bool = False) -> list[ClusterDecision]:
    """Who each cluster pays: the operator's resolution if there is one, else the policy."""
    decisions = []
    for cluster in clusters:
        resolution = resolutions.get(cluster.key)
        if resolution is not None and tuple(resolution.members) != cluster.members:
            resolution = None
        if resolution is not None:
            paid = cluster.members if resolution.decision == "pay_all" else (resolution.paid_model_id,)
            resolved_by, why = "operator", f"the operator's resolution #{resolution.id} by {resolution.actor}"
        elif detection.policy == "pay_first" and cluster.original is not None:
            paid, resolved_by, why = (cluster.original,), "policy", f"it made the output first: {cluster.decided_by}"
        elif detection.policy == "pay_first":
            # undecided: who came later is a copy all the same; the first makers wait for the operator
            paid, resolved_by, why = cluster.first_makers, None, cluster.decided_by
        else:
            paid, resolved_by, why = cluster.members, None, ""
        excluded = {}
        for m in cluster.members:
            if m not in paid:
                _, text = evidence(cluster, m, multiple_scopes)
                to = paid[0] if len(paid) == 1 else f"one of {', '.join(paid)}"
                excluded[m] = f"copy: {text}; cluster {cluster.key} is paid once, to {to} ({why})"
        decisions.append(ClusterDecision(cluster, tuple(paid), excluded, resolved_by, resolution))
    return decisions


def exclusions(decisions: Sequence[ClusterDecision]) -> dict[str, str]:
    """model_id -> why it is not paid: what payout_entries takes."""
    return {m: reason for d in decisions for m, reason in sorted(d.excluded.items())}


# --- the period ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CopyReport:
    """A period's clusters and who each pays, as stored with the checkpoint."""

    decisions: list[ClusterDecision] = field(default_factory=list)
    multiple_scopes: bool = False

    @property
    def exclusions(self) -> dict[str, str]:
        return exclusions(self.decisions)

    @property
    def unresolved(self) -> list[ClusterDecision]:
        return [d for d in self.decisions if d.resolved_by is None]

    def entries(self) -> list[dict]:
        """entries["copy_clusters"]: JSON, no output in it (only ids, counts and fractions)."""
        result = []
        for d in self.decisions:
            c = d.cluster
            members = []
            for m in c.members:
                partner, text = evidence(c, m, self.multiple_scopes)
                role = "original" if m == c.original else ("undecided" if c.original is None and m in c.first_makers
                                                           else "copy")
                members.append({"model_id": m, "role": role, "registered_at": c.registered_at.get(m),
                                "matched_with": partner, "evidence": text, "paid": m in d.paid,
                                "unpaid_reason": d.excluded.get(m)})
            r = d.resolution
            result.append({
                "cluster": c.key, "members": members, "original": c.original, "decided_by": c.decided_by,
                "links": [link.as_dict() for link in c.links],
                "status": "resolved" if d.resolved_by else "unresolved",
                "resolved_by": d.resolved_by,
                "resolution": None if r is None else {
                    "id": r.id, "decision": r.decision, "paid_model_id": r.paid_model_id, "actor": r.actor,
                    "at": r.at.isoformat(), "note": r.note},
                "paid": list(d.paid),
            })
        return result

    def breakdowns(self) -> dict[str, dict]:
        """model_id -> breakdown["copy_cluster"]: the member's cluster, role and evidence."""
        result = {}
        for cluster in self.entries():
            for member in cluster["members"]:
                result[member["model_id"]] = {
                    "cluster": cluster["cluster"], "role": member["role"], "matched_with": member["matched_with"],
                    "evidence": member["evidence"], "status": cluster["status"], "paid": member["paid"],
                    "paid_in_cluster": cluster["paid"],
                }
        return result


def detect(
    detection: CopyDetection, scopes: Sequence[Scope], rows_by_scope: Mapping[str, Iterable[tuple[int, str, Any]]],
    start: datetime, end: datetime, registered_at: Mapping[str, datetime | None],
    resolutions: Mapping[str, Resolution], model_ids: Sequence[str] = (),
) -> CopyReport:
    """The period's clusters and decisions from its outputs (rows per scope, in cycle order)."""
    if not detection.enabled:
        return CopyReport()
    links: list[Link] = []
    for scope in scopes:
        rows = rows_by_scope.get(scope.key)
        if rows is None:
            continue
        links += links_of(scan_scope(scope, rows, start, end, detection, model_ids), detection)
    clusters = build_clusters(links, registered_at)
    return CopyReport(decide(clusters, detection, resolutions, len(scopes) > 1), len(scopes) > 1)


def period_report(spec, store, start: datetime, end: datetime) -> CopyReport:
    """The period's copy report from the store: its outputs (one streaming query per scope), the
    registry's first-seen times and the operator's resolutions."""
    detection = spec.copy_detection
    if not detection.enabled:
        return CopyReport()
    reads = store.copies
    registered = reads.registrations()
    rows = {scope.key: reads.outputs(scope.key, start, end) for scope in spec.scopes}
    return detect(detection, spec.scopes, rows, start, end, registered, reads.resolutions(start, end),
                  sorted(registered))

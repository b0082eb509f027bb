"""Recompute checkpoints' commitments from the store, check their payment lifecycle, and prove a
score's inclusion.

`audit_checkpoints` walks every checkpoint of a competition in period order and recomputes:
- the Merkle root of its period's stored scores (a score, an output or a truth changed, added or
  removed after it was built);
- each in its own `commitment_scheme` (crunch_assets/merkle.py): schemes 1 and 2 with Python leaves,
  scheme 3 with RFC 8785 leaves;
- the hash of its stored entries, against the one it recorded (schemes 2 and 3: who is paid what);
- the chain from the first checkpoint (scheme 1: roots only; schemes 2 and 3: roots and the
  recorded entries hashes);
- with the audit trails given, its lifecycle (`lifecycle_problems`): a checkpoint past PENDING has
  exactly one audit row per step, each with its actor, chained by digest, the SUBMITTED row with
  the checkpoint's tx hash and submission time, and a stored passing gate result for these very
  entries and roots; a SKIPPED one, its one PENDING -> SKIPPED row with the reason, no tx hash,
  and the stored gate result that refused these very entries and roots.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

from crunch_assets import merkle
from resources.store.competition import CompetitionStore
from resources.store.payouts import AuditRow
from resources.store.rows import CheckpointRow
from resources.store.lifecycles import CheckpointStatus

STEPS = ((CheckpointStatus.PENDING, CheckpointStatus.SUBMITTED), (CheckpointStatus.SUBMITTED, CheckpointStatus.CLAIMABLE),
         (CheckpointStatus.CLAIMABLE, CheckpointStatus.PAID))
STATUS_ORDER = (CheckpointStatus.PENDING, CheckpointStatus.SUBMITTED, CheckpointStatus.CLAIMABLE, CheckpointStatus.PAID)
SKIP_STEP = (CheckpointStatus.PENDING, CheckpointStatus.SKIPPED)  # final: a skipped checkpoint pays nothing, ever
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ROOT_PROBLEM = "the period's stored scores, outputs or truths differ from what the checkpoint committed to"
CHAIN_PROBLEM = ("the chained root does not follow from the roots and entries hashes before it: an earlier "
                 "checkpoint's commitment, or this one's, changed")


@dataclass(frozen=True)
class CheckpointAudit:
    checkpoint_id: int
    period_start: datetime
    period_end: datetime
    status: str
    leaves: int
    stored_root: str | None
    recomputed_root: str
    stored_chained_root: str | None
    recomputed_chained_root: str
    commitment_scheme: int = merkle.LEGACY_SCHEME
    recorded_entries_sha256: str | None = None
    recomputed_entries_sha256: str | None = None
    lifecycle_problems: tuple[str, ...] = ()
    scheme_problem: str | None = None

    @property
    def root_matches(self) -> bool:
        return self.stored_root == self.recomputed_root

    @property
    def chain_matches(self) -> bool:
        return self.stored_chained_root == self.recomputed_chained_root

    @property
    def entries_match(self) -> bool:
        """Schemes 2 and 3: the stored entries hash to what the checkpoint recorded (scheme 1 commits to none)."""
        return (self.commitment_scheme == merkle.LEGACY_SCHEME
                or self.recorded_entries_sha256 == self.recomputed_entries_sha256)

    @property
    def data_ok(self) -> bool:
        return self.root_matches and self.entries_match and self.chain_matches and self.scheme_problem is None

    @property
    def ok(self) -> bool:
        return self.data_ok and not self.lifecycle_problems

    @property
    def problems(self) -> list[str]:
        found = []
        if not self.root_matches:
            found.append(ROOT_PROBLEM)
        if not self.entries_match:
            found.append("the checkpoint's entries (who is paid what) differ from what it committed to: entries sha256 "
                         f"{self.recomputed_entries_sha256}, recorded {self.recorded_entries_sha256}")
        if self.scheme_problem:
            found.append(self.scheme_problem)
        if not self.chain_matches:
            found.append(CHAIN_PROBLEM)
        return found + list(self.lifecycle_problems)

    @property
    def problem(self) -> str | None:
        return self.problems[0] if self.problems else None


def audit_checkpoints(store: CompetitionStore,
                      trails: dict[int, Sequence[AuditRow]] | None = None) -> list[CheckpointAudit]:
    """Every checkpoint's commitments recomputed from the store; with `trails` (checkpoint id ->
    its audit rows), its lifecycle checked too."""
    audits, chained, newest_scheme = [], None, merkle.LEGACY_SCHEME
    for checkpoint in store.checkpoints():
        scheme = checkpoint.commitment_scheme
        leaves = store.score_leaves(checkpoint.period_start, checkpoint.period_end)
        # each checkpoint's leaves in its own scheme's encoding (an unknown scheme: the current one)
        leaf_scheme = scheme if scheme in merkle.SCHEMES else merkle.CURRENT_SCHEME
        root = merkle.merkle_root(merkle.leaf_hashes(leaves, leaf_scheme))
        entries_hash = merkle.entries_sha256(checkpoint.entries)
        scheme_problem = None
        if scheme not in merkle.SCHEMES:
            scheme_problem = f"unknown commitment scheme {scheme}"
            chained = merkle.chain_with_entries(chained, root, entries_hash)
        else:
            if scheme < newest_scheme:
                scheme_problem = (f"commitment scheme {scheme} after a checkpoint of scheme {newest_scheme}: the database "
                                  "refuses a new or rebuilt checkpoint below the current scheme")
            # Schemes 2 and 3 chain the entries hash the checkpoint recorded: the chain then shows a
            # changed chain, and entries_match changed entries, each by its name.
            recorded = checkpoint.meta.get("entries_sha256")
            chained = (merkle.chain(chained, root) if scheme == merkle.LEGACY_SCHEME
                       else merkle.chain_with_entries(chained, root, recorded if _is_hash(recorded) else entries_hash,
                                                      scheme))
        newest_scheme = max(newest_scheme, scheme if scheme in merkle.SCHEMES else newest_scheme)
        lifecycle = tuple(lifecycle_problems(checkpoint, trails.get(checkpoint.id, []))) if trails is not None else ()
        audits.append(CheckpointAudit(
            checkpoint.id, checkpoint.period_start, checkpoint.period_end, checkpoint.status,
            int(checkpoint.meta.get("leaf_count", 0)), checkpoint.merkle_root, root, checkpoint.chained_root, chained,
            scheme, checkpoint.meta.get("entries_sha256"), entries_hash, lifecycle, scheme_problem,
        ))
    return audits


def _is_hash(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def first_problem(audits: list[CheckpointAudit]) -> CheckpointAudit | None:
    return next((audit for audit in audits if not audit.ok), None)


def _sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _optional(value: str | None) -> str:
    return "0" if value is None else "1" + value


def audit_row_digest(previous: str | None, row: AuditRow) -> str:
    """crunch.audit_row_digest (migration 0006), recomputed: sha256 of the previous row's digest of
    the same checkpoint (zeros for the first) and the sha256 of each field."""
    at_us = (row.at - _EPOCH) // timedelta(microseconds=1)
    parts = [str(row.checkpoint_id), row.from_status, row.to_status, _optional(row.tx_hash), row.actor, str(at_us),
             _optional(row.note), _optional(row.chained_root)]
    return hashlib.sha256(bytes.fromhex(previous or merkle.GENESIS) + b"".join(_sha(p) for p in parts)).hexdigest()


def lifecycle_problems(checkpoint: CheckpointRow, trail: Sequence[AuditRow]) -> list[str]:
    """Why the checkpoint's status is not backed by its audit trail and gate result ([] when it is):
    every step up to its status has exactly one audit row, in order, with an actor and an unbroken
    digest chain; the SUBMITTED row names the checkpoint's tx hash and submission time and the
    checkpoint's chained root; a checkpoint past PENDING keeps the passing gate result it was
    submitted with, for these entries and roots. A SKIPPED one has its one skip row with the
    reason (`_skip_problems`)."""
    if checkpoint.status not in STATUS_ORDER + (CheckpointStatus.SKIPPED,):
        return [f"status {checkpoint.status!r} is not a checkpoint status"]
    expected = [SKIP_STEP] if checkpoint.status == CheckpointStatus.SKIPPED else list(STEPS[:STATUS_ORDER.index(checkpoint.status)])
    found = [(row.from_status, row.to_status) for row in trail]
    problems = []
    if found != expected:
        shown = ", ".join(f"{a} -> {b}" for a, b in found) or "no row"
        problems.append(f"{checkpoint.status} without a matching audit trail (the audit holds: {shown})")
    previous = None
    for row in trail:
        if not row.actor:
            problems.append(f"audit row #{row.id} names no actor")
        if row.digest != audit_row_digest(previous, row):
            problems.append(f"audit row #{row.id} ({row.from_status} -> {row.to_status}) was changed, or a row before it "
                            "removed or forged: its digest does not follow")
            break
        previous = row.digest
    if checkpoint.status == CheckpointStatus.PENDING:
        return problems
    if checkpoint.status == CheckpointStatus.SKIPPED:
        return problems + _skip_problems(checkpoint, trail)
    submitted = next((row for row in trail if row.to_status == CheckpointStatus.SUBMITTED), None)
    if submitted is not None:
        if not checkpoint.tx_hash or submitted.tx_hash != checkpoint.tx_hash:
            problems.append(f"the checkpoint's tx_hash {checkpoint.tx_hash!r} is not the one its SUBMITTED audit row "
                            f"names ({submitted.tx_hash!r})")
        if checkpoint.submitted_at != submitted.at:
            problems.append("the checkpoint's submission time is not its SUBMITTED audit row's")
        if submitted.chained_root != checkpoint.chained_root:
            problems.append("the checkpoint's chained root changed after it was submitted")
    gate = checkpoint.gate
    if not isinstance(gate, dict) or gate.get("passed") is not True:
        problems.append(f"{checkpoint.status} without a stored passing gate result")
    else:
        for key, value in (("merkle_root", checkpoint.merkle_root), ("chained_root", checkpoint.chained_root),
                           ("entries_sha256", merkle.entries_sha256(checkpoint.entries))):
            if key in gate and gate[key] != value:
                problems.append(f"the stored gate result passed another checkpoint content ({key} differs)")
                break
        else:
            if checkpoint.commitment_scheme >= merkle.ENTRIES_SCHEME and "entries_sha256" not in gate:
                problems.append("the stored gate result does not name the entries it passed")
    return problems


def _skip_problems(checkpoint: CheckpointRow, trail: Sequence[AuditRow]) -> list[str]:
    """A SKIPPED checkpoint: its skip row gives the reason and no tx hash, for the content it still
    has; it was never submitted; its stored gate result refused that very content."""
    problems = []
    skip = next((row for row in trail if (row.from_status, row.to_status) == SKIP_STEP), None)
    if skip is not None:
        if not (skip.note or "").strip():
            problems.append(f"audit row #{skip.id} skipped the checkpoint without a reason")
        if skip.tx_hash is not None:
            problems.append(f"audit row #{skip.id} skipped the checkpoint with a tx hash: a skip pays nothing")
        if skip.chained_root != checkpoint.chained_root:
            problems.append("the checkpoint's chained root changed after it was skipped")
    if checkpoint.tx_hash is not None or checkpoint.submitted_at is not None:
        problems.append("SKIPPED with a tx hash or a submission time: a skipped checkpoint is never submitted")
    gate = checkpoint.gate
    if not isinstance(gate, dict) or gate.get("passed") is not False:
        problems.append("SKIPPED without a stored gate result that refused it")
    elif any(key in gate and gate[key] != value for key, value in (
            ("merkle_root", checkpoint.merkle_root), ("chained_root", checkpoint.chained_root),
            ("entries_sha256", merkle.entries_sha256(checkpoint.entries)))):
        problems.append("the stored gate result refused another checkpoint content")
    return problems


def inclusion_proof(store: CompetitionStore, checkpoint: CheckpointRow, model_id: str, cycle_at: datetime,
                    scope_key: str | None = None) -> dict:
    """Everything a participant needs to check that one of their scores is in a checkpoint: the
    leaf's fields, its hash, the sibling path and the checkpoint's stored root."""
    leaves = store.score_leaves(checkpoint.period_start, checkpoint.period_end)
    scheme = checkpoint.commitment_scheme if checkpoint.commitment_scheme in merkle.SCHEMES else merkle.CURRENT_SCHEME
    hashes = merkle.leaf_hashes(leaves, scheme)
    index = next((i for i, leaf in enumerate(leaves) if leaf.model_id == model_id and leaf.cycle_at == cycle_at
                  and (scope_key is None or leaf.scope_key == scope_key)), None)
    if index is None:
        raise LookupError(f"no score of {model_id} at {cycle_at.isoformat()} in checkpoint {checkpoint.id}")
    proof = merkle.inclusion_proof(hashes, index)
    return {
        "checkpoint_id": checkpoint.id,
        "commitment_scheme": scheme,
        "leaf": merkle.leaf_fields(leaves[index], scheme),
        "leaf_hash": hashes[index],
        "leaf_index": index,
        "proof": [{"side": step.side, "hash": step.hash} for step in proof],
        "merkle_root": checkpoint.merkle_root,
        "verified": merkle.verify_proof(hashes[index], proof, checkpoint.merkle_root or ""),
    }

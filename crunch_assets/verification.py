"""Recompute checkpoints' Merkle commitments from the store, and prove a score's inclusion.

`audit_checkpoints` walks every checkpoint of a competition in period order, recomputes the root
of its period's stored scores and the chain from the first checkpoint, and reports the first
checkpoint whose data no longer matches what it committed to (a score, an output or a truth
changed, added or removed after it was built).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from crunch_assets import merkle
from resources.store.competition import CompetitionStore
from resources.store.rows import CheckpointRow


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

    @property
    def root_matches(self) -> bool:
        return self.stored_root == self.recomputed_root

    @property
    def chain_matches(self) -> bool:
        return self.stored_chained_root == self.recomputed_chained_root

    @property
    def ok(self) -> bool:
        return self.root_matches and self.chain_matches

    @property
    def problem(self) -> str | None:
        if not self.root_matches:
            return "the period's stored scores, outputs or truths differ from what the checkpoint committed to"
        if not self.chain_matches:
            return "an earlier checkpoint's commitment changed (the chain no longer leads here)"
        return None


def audit_checkpoints(store: CompetitionStore) -> list[CheckpointAudit]:
    audits, chained = [], None
    for checkpoint in store.checkpoints():
        root = merkle.merkle_root([merkle.leaf_hash(leaf) for leaf in store.score_leaves(checkpoint.period_start, checkpoint.period_end)])
        chained = merkle.chain(chained, root)
        audits.append(CheckpointAudit(
            checkpoint.id, checkpoint.period_start, checkpoint.period_end, checkpoint.status,
            int(checkpoint.meta.get("leaf_count", 0)), checkpoint.merkle_root, root, checkpoint.chained_root, chained,
        ))
    return audits


def first_problem(audits: list[CheckpointAudit]) -> CheckpointAudit | None:
    return next((audit for audit in audits if not audit.ok), None)


def inclusion_proof(store: CompetitionStore, checkpoint: CheckpointRow, model_id: str, cycle_at: datetime,
                    scope_key: str | None = None) -> dict:
    """Everything a participant needs to check that one of their scores is in a checkpoint: the
    leaf's fields, its hash, the sibling path and the checkpoint's stored root."""
    leaves = store.score_leaves(checkpoint.period_start, checkpoint.period_end)
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    index = next((i for i, leaf in enumerate(leaves) if leaf.model_id == model_id and leaf.cycle_at == cycle_at
                  and (scope_key is None or leaf.scope_key == scope_key)), None)
    if index is None:
        raise LookupError(f"no score of {model_id} at {cycle_at.isoformat()} in checkpoint {checkpoint.id}")
    proof = merkle.inclusion_proof(hashes, index)
    return {
        "checkpoint_id": checkpoint.id,
        "leaf": merkle.leaf_fields(leaves[index]),
        "leaf_hash": hashes[index],
        "leaf_index": index,
        "proof": [{"side": step.side, "hash": step.hash} for step in proof],
        "merkle_root": checkpoint.merkle_root,
        "verified": merkle.verify_proof(hashes[index], proof, checkpoint.merkle_root or ""),
    }

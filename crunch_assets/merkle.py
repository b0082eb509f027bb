"""Tamper evidence: each checkpoint commits to the scores it paid for.

A leaf per score of the period: (model, cycle, scope, a hash of the stored model output, a hash of
the stored truth, the score value), in (cycle, scope, model) order. The tree is a binary Merkle
tree with domain separation (leaf = sha256(0x00 || data), node = sha256(0x01 || left || right));
an odd node is carried up unchanged. The checkpoint stores the period's root and that root chained
to the previous checkpoint's chained root, so changing any stored score, output or truth of any
checkpointed period changes every chained root from there on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

from resources.store.rows import ScoreLeaf

GENESIS = "0" * 64


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leaf_fields(leaf: ScoreLeaf) -> dict:
    """What a leaf is made of, as a participant can recompute it from the report API."""
    return {
        "model_id": leaf.model_id,
        "cycle_at": leaf.cycle_at.isoformat(),
        "scope_key": leaf.scope_key,
        "output_sha256": sha256_hex(canonical_json(leaf.inference_output)),
        "truth_sha256": sha256_hex(canonical_json(leaf.actuals)),
        "value": repr(float(leaf.value)),
    }


def leaf_hash(leaf: ScoreLeaf) -> str:
    return sha256_hex(b"\x00" + canonical_json(leaf_fields(leaf)))


def _node(left: str, right: str) -> str:
    return sha256_hex(b"\x01" + bytes.fromhex(left) + bytes.fromhex(right))


def merkle_root(leaf_hashes: Sequence[str]) -> str:
    """The root of the leaves (an empty period: sha256 of nothing)."""
    if not leaf_hashes:
        return sha256_hex(b"")
    level = list(leaf_hashes)
    while len(level) > 1:
        level = [_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0]


@dataclass(frozen=True)
class ProofStep:
    side: str  # "left" | "right": where the sibling sits
    hash: str


def inclusion_proof(leaf_hashes: Sequence[str], index: int) -> list[ProofStep]:
    """The siblings from leaf `index` up to the root."""
    if not 0 <= index < len(leaf_hashes):
        raise IndexError(f"leaf {index} of {len(leaf_hashes)}")
    proof, level, position = [], list(leaf_hashes), index
    while len(level) > 1:
        sibling = position ^ 1
        if sibling < len(level):
            proof.append(ProofStep("left" if sibling < position else "right", level[sibling]))
        level = [_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
        position //= 2
    return proof


def verify_proof(leaf: str, proof: Sequence[ProofStep], root: str) -> bool:
    current = leaf
    for step in proof:
        current = _node(step.hash, current) if step.side == "left" else _node(current, step.hash)
    return current == root


def chain(previous_chained_root: str | None, root: str) -> str:
    return sha256_hex(bytes.fromhex(previous_chained_root or GENESIS) + bytes.fromhex(root))

"""Tamper evidence: each checkpoint commits to the scores it paid for.

A leaf per score of the period: (model, cycle, scope, a hash of the stored model output, a hash of
the stored truth, the score value), in (cycle, scope, model) order. The tree is a binary Merkle
tree with domain separation (leaf = sha256(0x00 || data), node = sha256(0x01 || left || right));
an odd node is carried up unchanged. The checkpoint stores the period's root and that root chained
to the previous checkpoint's chained root, so changing any stored score, output or truth of any
checkpointed period changes every chained root from there on.

What the chained root commits to is the checkpoint's `commitment_scheme`:
- 1 (checkpoints stored before migration 0006): sha256(previous chained root || root);
- 2: sha256(0x02 || previous chained root || root || entries hash), where the entries hash is the
  sha256 of the checkpoint's `entries` (the ranking, each model's reward and breakdown, the
  emission) in RFC 8785 canonical JSON. So the payout itself is committed to: changing who is paid
  what changes the chained root of its checkpoint and of every one after it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import rfc8785

from resources.store import json_codec
from resources.store.rows import ScoreLeaf

GENESIS = "0" * 64
LEGACY_SCHEME = 1  # the chained root commits to the scores' root only
CURRENT_SCHEME = 2  # ... and to the hash of the canonical entries
SCHEMES = (LEGACY_SCHEME, CURRENT_SCHEME)
# RFC 8785 numbers are IEEE doubles: a whole number beyond this is hashed as the double it is.
_SAFE_INTEGER = 2**53 - 1


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
    """Scheme 1."""
    return sha256_hex(bytes.fromhex(previous_chained_root or GENESIS) + bytes.fromhex(root))


def chain_with_entries(previous_chained_root: str | None, root: str, entries_hash: str) -> str:
    """Scheme 2."""
    return sha256_hex(bytes([CURRENT_SCHEME]) + bytes.fromhex(previous_chained_root or GENESIS) + bytes.fromhex(root)
                      + bytes.fromhex(entries_hash))


def chained_root(scheme: int, previous_chained_root: str | None, root: str, entries: dict) -> str:
    if scheme == LEGACY_SCHEME:
        return chain(previous_chained_root, root)
    if scheme == CURRENT_SCHEME:
        return chain_with_entries(previous_chained_root, root, entries_sha256(entries))
    raise ValueError(f"unknown commitment scheme {scheme!r}: one of {SCHEMES}")


def entries_sha256(entries: dict) -> str:
    """sha256 of the entries in RFC 8785 canonical JSON, as the store keeps them: through the
    store's JSON codec first (what a JSONB column holds: numpy numbers as numbers, non-string keys
    as strings, NaN as null), whole numbers beyond 2**53 as doubles, so the entries built and the
    same entries read back hash alike."""
    return sha256_hex(rfc8785.dumps(_ieee_numbers(json_codec.loads(json_codec.dumps(entries)))))


def _ieee_numbers(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _ieee_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_ieee_numbers(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _SAFE_INTEGER:
        return float(value)
    return value

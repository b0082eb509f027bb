"""Tamper evidence: each checkpoint commits to the scores it paid for.

A leaf per score of the period: (model, cycle, scope, a hash of the stored model output, a hash of
the stored truth, the score value), in (cycle, scope, model) order. The tree is a binary Merkle
tree with domain separation (leaf = sha256(0x00 || data), node = sha256(0x01 || left || right));
an odd node is carried up unchanged. The checkpoint stores the period's root and that root chained
to the previous checkpoint's chained root, so changing any stored score, output or truth of any
checkpointed period changes every chained root from there on.

What a checkpoint commits to, and how its leaves are encoded, is its `commitment_scheme`:
- 1 (checkpoints stored before migration 0006): Python leaves (`json.dumps` and `repr(float)`:
  `legacy_leaf_fields`), chained root sha256(previous chained root || root);
- 2 (migration 0006): the same leaves; chained root sha256(0x02 || previous chained root || root ||
  entries hash), where the entries hash is the sha256 of the checkpoint's `entries` (the ranking,
  each model's reward and breakdown, the emission) in RFC 8785 canonical JSON. So the payout itself
  is committed to;
- 3 (migration 0009): portable leaves: the leaf, the output and the truth hashed over RFC 8785
  canonical JSON, the score value a JSON number (`portable_leaf_fields`), so a browser (WebCrypto)
  or any language recomputes them; chained root sha256(0x03 || previous chained root || root ||
  entries hash).

The canonical JSON of every scheme-3 hash (`canonical`) is RFC 8785 of the value as a JavaScript
JSON.parse would hold it: a whole number beyond 2**53 - 1 as the double it becomes, a non-finite
number (which JSON cannot hold) as null, as JSON.stringify writes it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import timezone
from typing import Any, Sequence

import orjson
import rfc8785

from resources.store import json_codec
from resources.store.rows import ScoreLeaf

GENESIS = "0" * 64
LEGACY_SCHEME = 1  # Python leaves; the chained root commits to the scores' root only
ENTRIES_SCHEME = 2  # Python leaves; the chained root commits to the root and the entries' hash
PORTABLE_SCHEME = 3  # RFC 8785 leaves, outputs and truths; the chained root as scheme 2's
CURRENT_SCHEME = PORTABLE_SCHEME
SCHEMES = (LEGACY_SCHEME, ENTRIES_SCHEME, PORTABLE_SCHEME)
# RFC 8785 numbers are IEEE doubles: a whole number beyond this is hashed as the double it is.
_SAFE_INTEGER = 2**53 - 1


def canonical_json(value: Any) -> bytes:
    """Schemes 1 and 2's leaf encoding (Python's json.dumps, sorted keys): kept to verify them."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def canonical(value: Any) -> bytes:
    """RFC 8785 canonical JSON of `value` as the store keeps it (through its JSON codec: numpy
    numbers as numbers, non-string keys as strings) and as JSON.parse would read it back (whole
    numbers beyond 2**53 as doubles, non-finite numbers as null)."""
    try:
        # Plain JSON (str keys; finite doubles; whole numbers within 2**53) is written as it is: the
        # store's codec and the JavaScript reading change nothing of it. rfc8785 refuses anything else.
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError):
        pass
    try:
        stored = json_codec.loads(json_codec.dumps(value))
    except TypeError:  # a whole number beyond 64 bits (JSONB holds any): the double it reads as, first
        stored = json_codec.loads(json_codec.dumps(_as_javascript_reads(value)))
    return rfc8785.dumps(_as_javascript_reads(stored))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def legacy_leaf_fields(leaf: ScoreLeaf) -> dict:
    """A leaf of schemes 1 and 2, as a participant can recompute it from the report API (in Python)."""
    return {
        "model_id": leaf.model_id,
        "cycle_at": leaf.cycle_at.isoformat(),
        "scope_key": leaf.scope_key,
        "output_sha256": sha256_hex(canonical_json(leaf.inference_output)),
        "truth_sha256": sha256_hex(canonical_json(leaf.actuals)),
        "value": repr(float(leaf.value)),
    }


def cycle_instant(leaf: ScoreLeaf) -> str:
    """The cycle time of a scheme-3 leaf: ISO 8601 in UTC, as the report API serves it."""
    return leaf.cycle_at.astimezone(timezone.utc).isoformat()


def portable_leaf_fields(leaf: ScoreLeaf) -> dict:
    """A scheme-3 leaf: hashes over RFC 8785, the score value a JSON number."""
    return {
        "model_id": leaf.model_id,
        "cycle_at": cycle_instant(leaf),
        "scope_key": leaf.scope_key,
        "output_sha256": sha256_hex(canonical(leaf.inference_output)),
        "truth_sha256": sha256_hex(canonical(leaf.actuals)),
        "value": _finite_or_none(float(leaf.value)),
    }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def portable_fields_of(leaves: Sequence[ScoreLeaf]) -> list[dict]:
    """`portable_leaf_fields` of many leaves, each distinct truth hashed once (a cycle's truth is
    shared by every model's leaf)."""
    truths: dict[bytes, str] = {}
    found = []
    for leaf in leaves:
        try:
            key = orjson.dumps(leaf.actuals, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # beyond what the fast key can hold: hashed on its own
            key = None
        truth = truths.get(key) if key is not None else None
        if truth is None:
            truth = sha256_hex(canonical(leaf.actuals))
            if key is not None:
                truths[key] = truth
        found.append({
            "model_id": leaf.model_id,
            "cycle_at": cycle_instant(leaf),
            "scope_key": leaf.scope_key,
            "output_sha256": sha256_hex(canonical(leaf.inference_output)),
            "truth_sha256": truth,
            "value": _finite_or_none(float(leaf.value)),
        })
    return found


def leaf_hashes(leaves: Sequence[ScoreLeaf], scheme: int = CURRENT_SCHEME) -> list[str]:
    """The hash of every leaf, in order."""
    if scheme < PORTABLE_SCHEME:
        return [leaf_hash(leaf, scheme) for leaf in leaves]
    return [sha256_hex(leaf_preimage(fields, scheme)) for fields in portable_fields_of(leaves)]


def leaf_fields(leaf: ScoreLeaf, scheme: int = CURRENT_SCHEME) -> dict:
    """What a leaf of `scheme` is made of."""
    return portable_leaf_fields(leaf) if scheme >= PORTABLE_SCHEME else legacy_leaf_fields(leaf)


def leaf_preimage(fields: dict, scheme: int = CURRENT_SCHEME) -> bytes:
    """The bytes a leaf's hash is taken over: 0x00 and the canonical fields."""
    return b"\x00" + (canonical(fields) if scheme >= PORTABLE_SCHEME else canonical_json(fields))


def leaf_json(fields: dict, scheme: int = CURRENT_SCHEME) -> str:
    """The canonical text of a leaf's fields in `scheme` (what is hashed after the 0x00 byte)."""
    return leaf_preimage(fields, scheme)[1:].decode()


def leaf_hash(leaf: ScoreLeaf, scheme: int = CURRENT_SCHEME) -> str:
    return sha256_hex(leaf_preimage(leaf_fields(leaf, scheme), scheme))


def _node(left: str, right: str) -> str:
    return sha256_hex(b"\x01" + bytes.fromhex(left) + bytes.fromhex(right))


def tree_levels(leaf_hashes: Sequence[str]) -> list[list[str]]:
    """Every level of the tree, the leaves first and the root last (an empty period: one level
    holding sha256 of nothing)."""
    if not leaf_hashes:
        return [[sha256_hex(b"")]]
    levels = [list(leaf_hashes)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        levels.append([_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)])
    return levels


def merkle_root(leaf_hashes: Sequence[str]) -> str:
    """The root of the leaves (an empty period: sha256 of nothing)."""
    return tree_levels(leaf_hashes)[-1][0]


@dataclass(frozen=True)
class ProofStep:
    side: str  # "left" | "right": where the sibling sits
    hash: str


def proof_from_levels(levels: Sequence[Sequence[str]], index: int) -> list[ProofStep]:
    """The siblings of leaf `index` up to the root, from the tree's levels (`tree_levels`)."""
    if not 0 <= index < len(levels[0]) or not levels[0]:
        raise IndexError(f"leaf {index} of {len(levels[0])}")
    proof, position = [], index
    for level in levels[:-1]:
        sibling = position ^ 1
        if sibling < len(level):
            proof.append(ProofStep("left" if sibling < position else "right", level[sibling]))
        position //= 2
    return proof


def inclusion_proof(leaf_hashes: Sequence[str], index: int) -> list[ProofStep]:
    """The siblings from leaf `index` up to the root."""
    if not 0 <= index < len(leaf_hashes):
        raise IndexError(f"leaf {index} of {len(leaf_hashes)}")
    return proof_from_levels(tree_levels(leaf_hashes), index)


def verify_proof(leaf: str, proof: Sequence[ProofStep], root: str) -> bool:
    current = leaf
    for step in proof:
        current = _node(step.hash, current) if step.side == "left" else _node(current, step.hash)
    return current == root


def chain(previous_chained_root: str | None, root: str) -> str:
    """Scheme 1."""
    return sha256_hex(bytes.fromhex(previous_chained_root or GENESIS) + bytes.fromhex(root))


def chain_with_entries(previous_chained_root: str | None, root: str, entries_hash: str,
                       scheme: int = CURRENT_SCHEME) -> str:
    """Schemes 2 and 3: sha256(scheme byte || previous chained root || root || entries hash)."""
    if scheme not in (ENTRIES_SCHEME, PORTABLE_SCHEME):
        raise ValueError(f"commitment scheme {scheme!r} does not chain the entries")
    return sha256_hex(bytes([scheme]) + bytes.fromhex(previous_chained_root or GENESIS) + bytes.fromhex(root)
                      + bytes.fromhex(entries_hash))


def chained_root(scheme: int, previous_chained_root: str | None, root: str, entries: dict) -> str:
    if scheme == LEGACY_SCHEME:
        return chain(previous_chained_root, root)
    if scheme in (ENTRIES_SCHEME, PORTABLE_SCHEME):
        return chain_with_entries(previous_chained_root, root, entries_sha256(entries), scheme)
    raise ValueError(f"unknown commitment scheme {scheme!r}: one of {SCHEMES}")


def entries_sha256(entries: dict) -> str:
    """sha256 of the entries in RFC 8785 canonical JSON, as the store keeps them (`canonical`), so
    the entries built and the same entries read back hash alike."""
    return sha256_hex(canonical(entries))


def _as_javascript_reads(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _as_javascript_reads(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_javascript_reads(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _SAFE_INTEGER:
        try:
            value = float(value)
        except OverflowError:  # beyond the largest double: JSON.parse reads Infinity
            return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

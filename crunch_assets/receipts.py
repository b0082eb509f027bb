"""A participant's receipt for one checkpoint: one JSON document with everything needed to check,
offline and with sha256 alone, what the checkpoint committed to about one model and what it pays it.

- every leaf of the model in the period (scheme 3: crunch_assets/merkle.py), with the fields it is
  hashed from, the model's output and the truth it was scored against (a checkpoint's leaves are
  scores, so each cycle is resolved: no output under embargo), the leaf's hash and its inclusion
  path to the period's Merkle root;
- the period's root, the previous and this checkpoint's chained root, the entries (the ranking with
  every model's reward and breakdown, the emission) and their hash, which the chained root commits
  to;
- the model's reward and breakdown, as the entries hold them;
- the rules fingerprint (issue 22 section 3) when the checkpoint records one.

`verify_receipt.py` (the challenge package's, stdlib only: crunch_assets/scaffold/templates/
competition/verify_receipt.py.j2) and the participant page (crunch_assets/api/static/
receipt.js, WebCrypto) check it field by field.
"""

from __future__ import annotations

from datetime import timezone

from crunch_assets import merkle
from resources.store.competition import CompetitionStore
from resources.store.rows import CheckpointRow

RECEIPT_VERSION = 1
REWARD_FIELDS = ("rank", "reward_pct", "eligible", "score", "cruncher_index", "breakdown")


class ReceiptUnavailable(LookupError):
    """No receipt for this checkpoint and model; the message says why."""


def rules_fingerprint_of(checkpoint: CheckpointRow) -> str | None:
    """The fingerprint of the rules the checkpoint was computed under (issue 22 section 3): read from
    the checkpoint's entries (`rules_fingerprint`, where the entries hash, and so the chained root,
    commits to it), else its meta; None for a checkpoint built before rules were fingerprinted."""
    for source in (checkpoint.entries, checkpoint.meta):
        value = source.get("rules_fingerprint") if isinstance(source, dict) else None
        if value is not None:
            return value
    return None


def _instant(value) -> str:
    return value.astimezone(timezone.utc).isoformat()


def build_receipt(slug: str, store: CompetitionStore, checkpoint: CheckpointRow, model_id: str) -> dict:
    """The receipt of `model_id` in `checkpoint`, from the store as it is now (a leaf changed since
    the checkpoint was built makes the receipt not verify, as it should). Raises ReceiptUnavailable
    when the checkpoint predates portable leaves or does not rank the model."""
    if checkpoint.commitment_scheme < merkle.PORTABLE_SCHEME:
        raise ReceiptUnavailable(
            f"checkpoint {checkpoint.id} was built under commitment scheme {checkpoint.commitment_scheme}, whose leaves "
            "only Python recomputes: receipts start with scheme 3 (its scores' proofs: "
            f"/checkpoints/{checkpoint.id}/models/{{model_id}}/proof)")
    row = next((r for r in checkpoint.entries.get("ranking", []) if r.get("model_id") == model_id), None)
    if row is None:
        raise ReceiptUnavailable(f"model {model_id!r} is not in checkpoint {checkpoint.id}")
    leaves = store.score_leaves(checkpoint.period_start, checkpoint.period_end)
    fields = merkle.portable_fields_of(leaves)
    hashes = [merkle.sha256_hex(merkle.leaf_preimage(f, merkle.PORTABLE_SCHEME)) for f in fields]
    levels = merkle.tree_levels(hashes)
    mine = []
    for index, (leaf, leaf_fields) in enumerate(zip(leaves, fields)):
        if leaf.model_id != model_id:
            continue
        mine.append({
            "index": index,
            **leaf_fields,
            "output": leaf.inference_output,
            "truth": leaf.actuals,
            "leaf_hash": hashes[index],
            "proof": [{"side": step.side, "hash": step.hash} for step in merkle.proof_from_levels(levels, index)],
        })
    return {
        "receipt_version": RECEIPT_VERSION,
        "competition": slug,
        "checkpoint_id": checkpoint.id,
        "status": checkpoint.status,
        "period_start": _instant(checkpoint.period_start),
        "period_end": _instant(checkpoint.period_end),
        "model_id": model_id,
        "commitment_scheme": checkpoint.commitment_scheme,
        "leaf_count": len(leaves),
        "leaves": mine,
        "merkle_root": checkpoint.merkle_root,
        "previous_chained_root": checkpoint.meta.get("previous_chained_root"),
        "entries_sha256": checkpoint.meta.get("entries_sha256"),
        "chained_root": checkpoint.chained_root,
        "rules_fingerprint": rules_fingerprint_of(checkpoint),
        "reward": {key: row.get(key) for key in REWARD_FIELDS},
        "entries": checkpoint.entries,
    }


def latest_receipt_checkpoint(checkpoints: list[CheckpointRow], model_id: str) -> CheckpointRow | None:
    """The newest of `checkpoints` with portable leaves that ranks the model (its latest receipt)."""
    candidates = [cp for cp in checkpoints if cp.commitment_scheme >= merkle.PORTABLE_SCHEME
                  and any(r.get("model_id") == model_id for r in cp.entries.get("ranking", []))]
    return max(candidates, key=lambda cp: cp.period_start, default=None)

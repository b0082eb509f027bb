"""Scheme 3's encoding is portable: the server's RFC 8785 (PyPI rfc8785) and the participants'
standalone verifier (standard library only) write the same bytes for any JSON value, the docs'
test vectors hold for both, and the verifier is the small stdlib-only file the challenge package
ships. (The browser's encoding is checked in tests/api/test_receipts.py, in a real chromium.)"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import importlib.util
import json
import math
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from crunch_assets import merkle
from resources.store.rows import ScoreLeaf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VERIFIER = PROJECT_ROOT / "crunch_assets/scaffold/templates/competition/verify_receipt.py.j2"
REWARDS_DOC = PROJECT_ROOT / "docs" / "rewards.md"


def load_verifier(path: Path = VERIFIER):
    loader = importlib.machinery.SourceFileLoader("verify_receipt_under_test", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


verifier = load_verifier()

# Any JSON value a JSON parser can hand over: doubles of every magnitude (subnormals, -0.0, the
# largest), whole numbers beyond 2**53 and 64 bits, any Unicode text (control characters, non-BMP).
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
scalars = (st.none() | st.booleans() | finite_floats | st.integers(min_value=-(2**80), max_value=2**80)
           | st.sampled_from([1e-7, 1.0, -0.0, 5e-324, 1e21, 1e-6, 1.7976931348623157e308, 2**53 - 1, 2**53 + 1]) | text)
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(text, children, max_size=4), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_the_standalone_verifier_writes_what_rfc8785_writes(value):
    assert verifier.canonical(value).encode() == merkle.canonical(value)


@settings(max_examples=300, deadline=None)
@given(finite_floats)
def test_every_double_is_written_as_javascript_writes_it(number):
    written = merkle.canonical(number).decode()
    assert float(written) == number or (number == 0 and written == "0")  # round-trips, -0.0 as 0
    assert verifier.canonical(number) == written
    if number == int(number) and abs(number) < 1e21:
        assert "." not in written and "e" not in written  # 1.0 -> 1, 100.0 -> 100: as JavaScript


def test_the_python_only_encoding_is_what_the_issue_says_and_scheme_3_is_not():
    """Today's (scheme 2) leaves write repr(float) and Python's JSON numbers: a browser computes
    other bytes. Scheme 3 writes what JSON.stringify writes."""
    leaf = ScoreLeaf("m", "BTC-60-60", datetime(2025, 1, 7, 1, tzinfo=timezone.utc), {"p": 1e-7, "q": 100.0},
                     {"y": 1.0}, 1e-7)
    legacy = merkle.legacy_leaf_fields(leaf)
    assert legacy["value"] == "1e-07"
    assert json.dumps({"p": 1e-7, "q": 100.0}, sort_keys=True) == '{"p": 1e-07, "q": 100.0}'
    assert merkle.canonical({"p": 1e-7, "q": 100.0}) == b'{"p":1e-7,"q":100}'
    portable = merkle.portable_leaf_fields(leaf)
    assert portable["value"] == 1e-7
    assert portable["output_sha256"] == hashlib.sha256(b'{"p":1e-7,"q":100}').hexdigest()
    assert merkle.leaf_hash(leaf, merkle.ENTRIES_SCHEME) != merkle.leaf_hash(leaf, merkle.PORTABLE_SCHEME)
    assert merkle.leaf_hash(leaf) == merkle.leaf_hash(leaf, merkle.PORTABLE_SCHEME)  # new checkpoints: scheme 3


def test_a_non_finite_score_and_a_huge_whole_number_hash_as_javascript_reads_them():
    leaf = ScoreLeaf("m", "s", datetime(2025, 1, 7, tzinfo=timezone.utc), {"big": 2**70, "huge": 10**400}, None,
                     math.inf)
    fields = merkle.portable_leaf_fields(leaf)
    assert fields["value"] is None  # JSON.stringify(Infinity) is null
    assert merkle.canonical(leaf.inference_output) == b'{"big":1.1805916207174113e+21,"huge":null}'
    assert verifier.canonical(leaf.inference_output).encode() == merkle.canonical(leaf.inference_output)


def _doc_vectors() -> list[tuple[str, str, str]]:
    text = REWARDS_DOC.read_text()
    section = text[text.index("### Test vectors"):text.index("### Receipts")]
    return re.findall(r"^\| `(.+?)` \| `(.+?)` \| `([0-9a-f]{64})` \|$", section, flags=re.M)


def test_the_documented_test_vectors_hold_for_the_server_and_the_verifier():
    vectors = _doc_vectors()
    assert len(vectors) >= 10
    for served, canonical, digest in vectors:
        value = json.loads(served)
        assert merkle.canonical(value).decode() == canonical == verifier.canonical(value), served
        assert hashlib.sha256(canonical.encode()).hexdigest() == digest, served
    text = REWARDS_DOC.read_text()
    section = text[text.index("A leaf, as the API serves its fields"):text.index("### Receipts")]
    served_leaf = json.loads(re.search(r"```json\n(.*?)\n```", section, flags=re.S).group(1))
    canonical_leaf = re.search(r"```text\n(.*?)\n```", section, flags=re.S).group(1)
    assert merkle.canonical(served_leaf).decode() == canonical_leaf == verifier.canonical(served_leaf)
    assert merkle.leaf_json(served_leaf, merkle.PORTABLE_SCHEME) == canonical_leaf
    assert served_leaf["output_sha256"] == hashlib.sha256(merkle.canonical({"p_up": 0.5})).hexdigest()
    assert served_leaf["truth_sha256"] == hashlib.sha256(
        merkle.canonical({"y_up": True, "close": 94321.5, "previous_close": 94300.0})).hexdigest()
    leaf_hash, legacy_hash = re.findall(r"`([0-9a-f]{64})`", section)[-2:]
    assert merkle.sha256_hex(merkle.leaf_preimage(served_leaf, merkle.PORTABLE_SCHEME)) == leaf_hash
    legacy = {**served_leaf, "value": repr(served_leaf["value"])}
    assert merkle.sha256_hex(merkle.leaf_preimage(legacy, merkle.ENTRIES_SCHEME)) == legacy_hash


def test_the_verifier_is_a_small_standard_library_module_that_renders_to_itself():
    from crunch_assets.api.receipt_widget import verifier_source
    from crunch_assets.scaffold.generate import OUTPUTS, environment

    source = VERIFIER.read_text()
    tree = ast.parse(source)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported and imported <= set(sys.stdlib_module_names), imported
    code_lines = [line for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]
    docstring_lines = len((ast.get_docstring(tree) or "").splitlines()) + 1
    assert len(code_lines) - docstring_lines <= 105, len(code_lines) - docstring_lines
    # the challenge package gets it as it is (no template syntax), and the API serves the same bytes
    assert ("competition/verify_receipt.py.j2", "competitions/{slug}/verify_receipt.py") in OUTPUTS
    assert environment().get_template("competition/verify_receipt.py.j2").render({}) == source
    assert verifier_source().decode() == source


class _Leaves:
    """The one store read a receipt makes (score_leaves), over leaves held in memory."""

    def __init__(self, leaves: list[ScoreLeaf]):
        self.leaves = leaves

    def score_leaves(self, start, end) -> list[ScoreLeaf]:
        return [leaf for leaf in self.leaves if start <= leaf.cycle_at < end]


def in_memory_receipt(model_id: str = "modèle_π") -> dict:
    """The server's receipt (crunch_assets.receipts.build_receipt) of a small period of awkward
    numbers and non-ASCII ids, committed as the checkpoint asset commits a checkpoint."""
    from datetime import timedelta

    from crunch_assets.receipts import build_receipt
    from resources.store.rows import CheckpointRow

    start = datetime(2025, 1, 7, 1, tzinfo=timezone.utc)
    leaves = [ScoreLeaf(m, "BTC-60-60", start + timedelta(minutes=i), {"p_up": p, "note": "é"}, {"y_up": i % 2 == 0}, v)
              for i, (p, v) in enumerate([(1e-7, 0.25), (1.0, -0.0), (5e-324, 1e21), (0.5, 100.0)])
              for m in (model_id, "趋势跟随")]
    root = merkle.merkle_root([merkle.leaf_hash(leaf) for leaf in leaves])
    entries = {"ranking": [
        {"model_id": model_id, "rank": 1, "reward_pct": 600_000_000, "eligible": True, "score": 0.25,
         "cruncher_index": 0, "breakdown": {"scored": 3, "failed": 1, "absent": 0, "rejected": 0, "mean": 0.25}},
        {"model_id": "趋势跟随", "rank": 2, "reward_pct": 400_000_000, "eligible": True, "score": 1e-7,
         "cruncher_index": 1, "breakdown": {"scored": 4, "mean": 1e-7}}]}
    entries_hash = merkle.entries_sha256(entries)
    previous = "ab" * 32
    checkpoint = CheckpointRow(7, start, start + timedelta(hours=1), "PENDING", None, None, entries, root,
                               merkle.chain_with_entries(previous, root, entries_hash, merkle.PORTABLE_SCHEME),
                               {"previous_chained_root": previous, "entries_sha256": entries_hash}, start, start,
                               commitment_scheme=merkle.PORTABLE_SCHEME)
    return build_receipt("demo", _Leaves(leaves), checkpoint, model_id)


def test_a_receipt_verifies_and_a_changed_one_names_its_field():
    from resources.store import json_codec

    receipt = json.loads(json_codec.dumps(in_memory_receipt()))  # as a participant receives it
    assert verifier.verify_receipt(receipt) == "ok"
    assert len(receipt["leaves"]) == 4 and receipt["leaf_count"] == 8
    receipt["leaves"][1]["value"] = 0.0  # -0.0 was hashed as 0: the same leaf
    assert verifier.verify_receipt(receipt) == "ok"
    receipt["leaves"][1]["value"] = 1e-300
    assert verifier.verify_receipt(receipt) == "leaves[1].leaf_hash"
    receipt["leaves"][1]["value"] = 0.0
    dropped = {**receipt, "leaves": receipt["leaves"][:1] + receipt["leaves"][2:]}  # a bad score left out
    assert verifier.verify_receipt(dropped) == "leaves"


def test_hashing_many_leaves_at_once_equals_hashing_each():
    """leaf_hashes hashes each distinct truth once: equal truths in any key order or number form
    share it, different ones do not."""
    at = datetime(2025, 1, 7, tzinfo=timezone.utc)
    truths = [{"a": 1, "b": 2.0}, {"b": 2, "a": 1.0}, {"a": True, "b": 2}, {"a": 1, "b": 2**70}, None, [1e-7]]
    leaves = [ScoreLeaf(f"m{i}", "s", at, {"p": i / 7}, truth, i * 0.1) for i, truth in enumerate(truths * 2)]
    for scheme in merkle.SCHEMES:
        assert merkle.leaf_hashes(leaves, scheme) == [merkle.leaf_hash(leaf, scheme) for leaf in leaves]
    fields = merkle.portable_fields_of(leaves)
    assert fields[0]["truth_sha256"] == fields[1]["truth_sha256"] != fields[2]["truth_sha256"]
    assert fields == [merkle.portable_leaf_fields(leaf) for leaf in leaves]

"""The engine's imports of Dagster internals (`dagster._...`) are exactly the ones
docs/dagster-internals.md lists, and the constants it copied from them still equal Dagster's own."""

import ast
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOC = PROJECT_ROOT / "docs" / "dagster-internals.md"


def private_imports() -> dict[tuple[str, str], list[str]]:
    """(module, name) -> the files importing it, for every `from dagster._... import name` (and
    `import dagster._...`) in crunch_assets/ and resources/, function-level imports included."""
    found: dict[tuple[str, str], list[str]] = {}
    for root in ("crunch_assets", "resources"):
        for path in sorted((PROJECT_ROOT / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster._"):
                    pairs = [(node.module, alias.name) for alias in node.names]
                elif isinstance(node, ast.Import):
                    pairs = [(alias.name, "*") for alias in node.names if alias.name.startswith("dagster._")]
                else:
                    continue
                for pair in pairs:
                    found.setdefault(pair, []).append(str(path.relative_to(PROJECT_ROOT)))
    return found


def documented() -> set[tuple[str, str]]:
    """The table rows of the doc: | `module` | `name`, `name` | ..."""
    pairs = set()
    for module, names in re.findall(r"^\| `(dagster\._[\w.]+)` \| ([^|]+) \|", DOC.read_text(), flags=re.M):
        pairs |= {(module, name) for name in re.findall(r"`(\w+)`", names)}
    return pairs


def test_every_private_dagster_import_is_documented_and_nothing_else():
    found = private_imports()
    listed = documented()
    undocumented = {pair: files for pair, files in found.items() if pair not in listed}
    assert not undocumented, (f"private Dagster imports not in docs/dagster-internals.md (use the public API, or "
                              f"add a row saying why there is none): {undocumented}")
    assert listed <= set(found), f"docs/dagster-internals.md lists imports the code no longer has: {listed - set(found)}"


def test_the_scan_finds_function_level_imports():
    found = private_imports()
    assert ("dagster._core.events", "AssetMaterializationPlannedData") in found  # imported inside plan_window


def test_copied_dagster_constants_still_equal_dagsters():
    from dagster._core.storage.dagster_run import FINISHED_STATUSES, NOT_FINISHED_STATUSES
    from dagster._core.storage.tags import GRPC_INFO_TAG

    from crunch_assets.cli import lifetime
    from crunch_assets.defs.housekeeping.purge import FINISHED_RUN_STATUSES
    from crunch_assets.defs.live_window.liveness import NOT_FINISHED

    assert set(FINISHED_RUN_STATUSES) == set(FINISHED_STATUSES)
    assert set(NOT_FINISHED) == set(NOT_FINISHED_STATUSES)
    assert lifetime.GRPC_INFO_TAG == GRPC_INFO_TAG

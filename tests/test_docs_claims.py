"""The checkable claims of docs/ are true: what architecture.md says a competition's Definitions hold
(counts and names, against the real btc_updown Definitions), every module its tables name, every
file path and every snake_case name the docs quote in backticks (each exists in the code), and
every asset check the engine defines is documented."""

import re
import subprocess
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md")) + [PROJECT_ROOT / "README.md"]
ARCHITECTURE = PROJECT_ROOT / "docs" / "architecture.md"
NUMBERS = {word: n for n, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen".split())}
# Paths the docs show as what a user's command or example creates, not files of this checkout.
GENERATED = ("competitions/eth_vol/", "competitions/my_comp/", "tests/competitions/", "crunch_assets/scaffold/templates/")
# Names the docs quote from what `init` generates for a user (tests/test_scaffold.py runs them).
GENERATED_NAMES = {"test_self_evaluation_gives_the_coordinators_numbers"}


@pytest.fixture(scope="module")
def repository():
    from competitions.btc_updown.definitions import defs

    return defs.get_repository_def()


@pytest.fixture(scope="module")
def code_text() -> str:
    tracked = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout
    texts = []
    for name in tracked.split():
        path = PROJECT_ROOT / name
        if name.startswith("docs/") or path.suffix == ".md" or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        texts.append(path.read_text(errors="ignore"))
    return "\n".join(texts)


def _bullet(text: str, pattern: str) -> re.Match:
    found = re.search(pattern, text, flags=re.S)
    assert found, f"architecture.md no longer says {pattern!r}: update this test with the doc"
    return found


def _named(fragment: str, slug: str = "") -> set[str]:
    return {slug + name for name in re.findall(r"`(\w+)`", fragment)}


def test_architecture_counts_what_a_competitions_definitions_hold(repository):
    text = ARCHITECTURE.read_text()
    slug = "btc_updown__"
    assets = _bullet(text, r"- (\w+) assets whose keys are prefixed with the slug \(([^)]*)\)")
    keys = {key.path[-1] for key in repository.asset_graph.get_all_asset_keys()}
    assert NUMBERS[assets.group(1)] == len(keys) and _named(assets.group(2)) == keys

    checks = _bullet(text, r"- (\w+) asset checks: (\w+) evaluated inside their assets \(each stage's `checks.py`\) and (\w+) lag\s+checks")
    names = {key.name for key in repository.asset_graph.asset_check_keys}
    lag = {name for name in names if name.endswith("_on_time")}
    assert NUMBERS[checks.group(1)] == len(names)
    assert NUMBERS[checks.group(2)] == len(names - lag) and NUMBERS[checks.group(3)] == len(lag)

    jobs = _bullet(text, r"- (\w+) jobs: ([^;]*);")
    ours = {job.name for job in repository.get_all_jobs() if not job.name.startswith("__")}  # __ASSET_JOB is Dagster's
    assert NUMBERS[jobs.group(1)] == len(ours) and _named(jobs.group(2), slug) == ours

    sensors = _bullet(text, r"- (\w+) sensors \(([^)]*)\) and (\w+)\s+schedules \(([^)]*)\)")
    assert NUMBERS[sensors.group(1)] == len(repository.sensor_defs)
    assert _named(sensors.group(2), slug) == {s.name for s in repository.sensor_defs}
    assert NUMBERS[sensors.group(3)] == len(repository.schedule_defs)
    assert _named(sensors.group(4), slug) == {s.name for s in repository.schedule_defs}


def test_every_asset_check_is_documented(repository):
    docs = "\n".join(doc.read_text() for doc in DOCS)
    undocumented = {key.name for key in repository.asset_graph.asset_check_keys if f"`{key.name}`" not in docs}
    assert not undocumented


def test_every_module_the_architecture_tables_name_exists():
    modules = set()
    for row in re.findall(r"^\| ([^|]+) \|", ARCHITECTURE.read_text(), flags=re.M):
        modules |= set(re.findall(r"`([\w/]+\.py)`", row))
    assert len(modules) > 20
    missing = {m for m in modules if not any(PROJECT_ROOT.glob(f"crunch_assets/**/{m}"))
               and not any(PROJECT_ROOT.glob(f"resources/**/{m}"))}
    assert not missing, f"architecture.md names modules that do not exist: {missing}"


def test_every_file_path_the_docs_cite_exists():
    missing = []
    for doc in DOCS:
        for path in set(re.findall(r"((?:crunch_assets|resources|bench|tests|scripts|competitions|deploy)/[\w/.-]+\.(?:py|yaml|sh|json|toml))",
                                   doc.read_text())):
            if not path.startswith(GENERATED) and not (PROJECT_ROOT / path).exists():
                missing.append(f"{doc.name}: {path}")
    assert not missing


def test_every_snake_case_name_the_docs_quote_exists_in_the_code(code_text):
    missing = []
    for doc in DOCS:
        for name in set(re.findall(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+){2,})`", doc.read_text())):
            if name not in code_text and name not in GENERATED_NAMES:
                missing.append(f"{doc.name}: {name}")
    assert not missing, f"names in docs/ that nothing in the code defines: {sorted(missing)}"


def test_the_name_check_can_fail(code_text):
    assert "scores_are_finite_and_unique" in code_text
    assert "_".join(["a", "check", "nobody", "defines"]) not in code_text  # built here: this file is code too

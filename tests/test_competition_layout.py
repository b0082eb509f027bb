"""One competition layout (issue 21): what `crunch-dagster init` generates and the hand-written
competitions have the same required files, the model base class in the same place, and nothing a
competition or a template holds edits sys.path (the public modules are imported as
competitions.<slug>, and installed as crunch_<slug> through challenges/<slug>/pyproject.toml)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from crunch_assets.scaffold.config import resolve
from crunch_assets.scaffold.generate import render

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMPETITIONS = PROJECT_ROOT / "competitions"
TEMPLATES = PROJECT_ROOT / "crunch_assets/scaffold/templates"
# docs/adding-a-competition.md, "The pieces"
REQUIRED = ("__init__.py", "definitions.py", "logic.py", "model_base.py", "models/")
HAND_WRITTEN = sorted(p.name for p in COMPETITIONS.iterdir() if (p / "__init__.py").is_file())
PACKS = ("baseline", "tournament", "realtime")


def _required_present(paths: set[str]) -> tuple[str, ...]:
    return tuple(name for name in REQUIRED
                 if (name in paths if not name.endswith("/") else any(p.startswith(name) for p in paths)))


def _generated(pack: str, slug: str = "layout_probe") -> dict[str, str]:
    """The files init would write, relative to the checkout, rendered in memory."""
    return {f.path: f.content for f in render(resolve(slug, pack, None))}


def _sys_path_edits(source: str, name: str) -> list[str]:
    """Every use of sys.path or site.addsitedir in the module (reading it counts too: nothing here needs to)."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                (node.value.id == "sys" and node.attr == "path") or (node.value.id == "site" and node.attr == "addsitedir")):
            found.append(f"{name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_the_hand_written_competitions_are_found():
    assert {"btc_updown", "crypto_density"} <= set(HAND_WRITTEN)


@pytest.mark.parametrize("slug", HAND_WRITTEN)
def test_a_hand_written_competition_has_the_layout(slug):
    directory = COMPETITIONS / slug
    paths = {str(p.relative_to(directory)) + ("/" if p.is_dir() else "") for p in directory.rglob("*")}
    assert _required_present(paths) == REQUIRED
    assert any((directory / "models").glob("*.py"))
    assert f'"competitions.{slug}.model_base:' in (directory / "definitions.py").read_text()


@pytest.mark.parametrize("pack", PACKS)
def test_init_generates_the_same_layout(pack):
    files = _generated(pack)
    inside = {path.removeprefix("competitions/layout_probe/") for path in files if path.startswith("competitions/layout_probe/")}
    assert _required_present(inside) == REQUIRED
    # the same place for the base class, so the local runner's models import it the same way
    config = files["competitions/layout_probe/config.py"]
    assert 'model_base_class="competitions.layout_probe.model_base:LayoutProbeModel"' in config
    # beside competitions/<slug>/ only the participants' distribution metadata and the tests: no second copy of a module
    outside = {path for path in files if not path.startswith("competitions/layout_probe/")}
    assert outside == {"challenges/layout_probe/pyproject.toml", "challenges/layout_probe/README.md",
                       "challenges/layout_probe/SKILL.md", "tests/competitions/test_layout_probe.py"}


def test_the_participants_package_is_the_competition_directory():
    """crunch_<slug> installs from competitions/<slug>/ (one copy); the pip install itself is
    tested in tests/test_scaffold.py (a fresh venv, offline)."""
    pyproject = tomllib.loads(_generated("tournament")["challenges/layout_probe/pyproject.toml"])
    setuptools = pyproject["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"crunch_layout_probe": "../../competitions/layout_probe"}
    assert setuptools["packages"] == ["crunch_layout_probe", "crunch_layout_probe.examples"]


def test_nothing_under_competitions_or_the_templates_edits_sys_path():
    found = []
    for path in sorted(COMPETITIONS.rglob("*.py")):
        found += _sys_path_edits(path.read_text(), str(path.relative_to(PROJECT_ROOT)))
    for pack in PACKS:
        for path, content in _generated(pack).items():
            if path.endswith(".py"):
                found += _sys_path_edits(content, f"{pack}:{path}")
    for template in sorted(TEMPLATES.rglob("*.j2")):
        if "sys.path" in template.read_text() or "addsitedir" in template.read_text():
            found.append(str(template.relative_to(PROJECT_ROOT)))
    assert found == []
    # nor hands the models' processes another import root: the project root is their only one
    for pack in PACKS:
        assert "extra_pythonpath" not in _generated(pack)["competitions/layout_probe/definitions.py"]


def test_the_scan_finds_a_sys_path_edit():
    assert _sys_path_edits("import sys\nsys.path.insert(0, 'x')\n", "m.py") == ["m.py:2: sys.path"]
    assert _sys_path_edits("import site\nsite.addsitedir('x')\n", "m.py") == ["m.py:2: site.addsitedir"]

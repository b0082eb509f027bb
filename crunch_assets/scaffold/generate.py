"""`crunch-dagster init`: render a competition from jinja2 templates (package data under
`templates/`) into a checkout, all or nothing.

Everything is rendered and checked in memory first (the spec through the engine's validation, every
generated Python file compiled), then written; a failure while writing removes what was written, and
workspace.yaml is changed last, only once the files are in place.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import MISSING, dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path

import jinja2
import yaml

from crunch_assets.scaffold.config import ResolvedSpec, ScaffoldConfig, ScaffoldError
from crunch_assets.spec import CompetitionSpec

WORKSPACE_FILE = "workspace.yaml"

# template -> output path ({slug} filled in): the one competition layout (docs/adding-a-competition.md);
# challenges/{slug}/ holds only the participants' distribution metadata, mapping {package} onto
# competitions/{slug}/
OUTPUTS: tuple[tuple[str, str], ...] = (
    ("competition/__init__.py.j2", "competitions/{slug}/__init__.py"),
    ("competition/config.py.j2", "competitions/{slug}/config.py"),
    ("competition/definitions.py.j2", "competitions/{slug}/definitions.py"),
    ("competition/logic.py.j2", "competitions/{slug}/logic.py"),
    ("competition/model_base.py.j2", "competitions/{slug}/model_base.py"),
    ("competition/schemas.py.j2", "competitions/{slug}/schemas.py"),
    ("competition/scoring.py.j2", "competitions/{slug}/scoring.py"),
    ("competition/verify_receipt.py.j2", "competitions/{slug}/verify_receipt.py"),
    ("competition/SKILL.md.j2", "competitions/{slug}/SKILL.md"),
    ("competition/examples/__init__.py.j2", "competitions/{slug}/examples/__init__.py"),
    ("competition/examples/mean_reversion.py.j2", "competitions/{slug}/examples/mean_reversion.py"),
    ("competition/examples/trend_following.py.j2", "competitions/{slug}/examples/trend_following.py"),
    ("competition/examples/volatility_regime.py.j2", "competitions/{slug}/examples/volatility_regime.py"),
    ("competition/models/mean_reversion.py.j2", "competitions/{slug}/models/mean_reversion.py"),
    ("competition/models/trend_following.py.j2", "competitions/{slug}/models/trend_following.py"),
    ("competition/models/volatility_regime.py.j2", "competitions/{slug}/models/volatility_regime.py"),
    ("challenge/pyproject.toml.j2", "challenges/{slug}/pyproject.toml"),
    ("challenge/README.md.j2", "challenges/{slug}/README.md"),
    ("challenge/SKILL.md.j2", "challenges/{slug}/SKILL.md"),
    ("tests/test_competition.py.j2", "tests/competitions/test_{slug}.py"),
)


def package_name(slug: str) -> str:
    return f"crunch_{slug}"


def distribution_name(slug: str) -> str:
    return "crunch-" + slug.replace("_", "-")


def class_prefix(slug: str) -> str:
    return "".join(part.capitalize() for part in slug.split("_"))


def default_callables(slug: str) -> dict[str, str]:
    logic, package = f"competitions.{slug}.logic", f"competitions.{slug}"
    return {
        "model_base_class": f"{package}.model_base:{class_prefix(slug)}Model",
        "input_builder": f"{logic}:build_inference_input",
        "call_builder": f"{logic}:build_model_calls",
        "output_validator": f"{logic}:validate_output",
        "ground_truth_resolver": f"{logic}:resolve_ground_truth",
        "scoring_function": f"{logic}:score_prediction",
        "input_schema": f"{package}.schemas:ModelInput",
        "output_schema": f"{package}.schemas:ModelOutput",
        "score_schema": f"{package}.schemas:ScoreResult",
    }


def wired_callables(slug: str, config: ScaffoldConfig) -> dict[str, str]:
    """Every slot RULES sets: the generated defaults, with the spec's callables over them."""
    chosen = default_callables(slug)
    chosen.update({slot: path for slot, path in config.callables.model_dump().items() if path is not None})
    return chosen


def _py(value) -> str:
    """A Python literal (repr of str, int, float, bool, None)."""
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid Python literal, double-quoted
    if isinstance(value, (int, float, bool)) or value is None:
        return repr(value)
    raise TypeError(f"no Python literal for {type(value).__name__}")


def _py_data(value) -> str:
    """A Python literal of JSON data (a spec field given as a spec file gives it: CompetitionSpec
    validates a policy given as its fields exactly as the file's)."""
    json.dumps(value, allow_nan=False)  # JSON data only: anything else is a bug here
    return repr(value)


def _py_tuple(values) -> str:
    items = [_py(v) for v in values]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _py_datetime(value: datetime) -> str:
    parts = [value.year, value.month, value.day]
    if value.hour:
        parts.append(value.hour)
    return f"datetime({', '.join(str(p) for p in parts)}, tzinfo=timezone.utc)"


def _toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("crunch_assets.scaffold", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # Python, TOML, YAML and Markdown: nothing is HTML
    )
    env.filters.update(py=_py, py_data=_py_data, py_tuple=_py_tuple, py_datetime=_py_datetime, toml=_toml)
    return env


# The spec fields the generated config.py lays out itself (from the checked spec); every other
# field the spec file or pack gives is written as given (ResolvedSpec.spec_fields).
LAID_OUT_FIELDS = frozenset({
    "slug", "start", "scopes", "extra_subjects", "failure_policy", "eligibility", "emission",
    "checkpoint_interval_seconds", "leaderboard_windows", "ranking_key", "ranking_descending", "checkpoint_ranking",
    "history_seconds", "max_price_staleness_seconds", "settle_delay_seconds", "void_after_seconds",
    "quarantine_after_failures", "quarantine_cooldown_seconds", "feed_retention_days", "public_input_keys",
    "description", "score_name",
})


def _declaration_text(value) -> str:
    """A policy as Python: its declaration with its kind, the settings its kind uses, and any other
    field that differs from its default (`EmissionPolicy(kind="softmax", temperature=0.5)`), equal to
    the checked one."""
    kind = getattr(value, "kind", None) or value.mode
    given = [f"{f.name}={_py(getattr(value, f.name)) if isinstance(getattr(value, f.name), str) else repr(getattr(value, f.name))}"
             for f in fields(value)
             if f.name in ("kind", "mode") or kind in value.SETTINGS_OF.get(f.name, ())
             or f.default is MISSING or getattr(value, f.name) != f.default]
    return f"{type(value).__name__}({', '.join(given)})"


def _policy_expressions(spec: CompetitionSpec) -> dict[str, str]:
    return {name: _declaration_text(getattr(spec, name)) for name in ("failure_policy", "eligibility", "emission")}


def _failure_text(spec: CompetitionSpec) -> str:
    failure = spec.failure_policy
    if failure.kind == "constant":
        return f"{failure.value:g} (the worst score)" if failure.value == -1.0 else f"{failure.value:g}"
    return "as the worst answer of the cycle" if failure.percentile == 100 else (
        f"the {failure.percentile:g}th percentile, from the best, of the cycle's scores")


@dataclass(frozen=True)
class GeneratedFile:
    path: str  # relative to the checkout
    content: str


def render(resolved: ResolvedSpec, start: datetime | None = None) -> list[GeneratedFile]:
    """Every generated file, rendered and (for Python) compiled; nothing is written."""
    slug, spec = resolved.slug, resolved.spec
    context = {
        "slug": slug,
        "pack": resolved.pack,
        "package": package_name(slug),
        "distribution": distribution_name(slug),
        "class_prefix": class_prefix(slug),
        "title": slug.replace("_", " ").capitalize(),
        "description": spec.description,
        "spec": spec,
        "feed": resolved.scaffold.feed,
        "start": start or spec.start,
        "replay_end": (start or spec.start) + timedelta(hours=3),
        "callables": wired_callables(slug, resolved.scaffold),
        "spec_fields": {k: v for k, v in resolved.spec_fields.items() if k not in LAID_OUT_FIELDS},
        "failure_text": _failure_text(spec),
        **_policy_expressions(spec),
    }
    env = environment()
    files = []
    for template_name, output in OUTPUTS:
        path = output.format(slug=slug)
        content = env.get_template(template_name).render(context)
        if path.endswith(".py"):
            compile(content, path, "exec")  # a template bug fails here, before anything is written
        files.append(GeneratedFile(path, content))
    return files


def workspace_entry(slug: str) -> str:
    return environment().get_template("workspace_entry.yaml.j2").render(slug=slug)


def _workspace_modules(text: str) -> list[dict]:
    data = yaml.safe_load(text) or {}
    return [entry.get("python_module", {}) for entry in data.get("load_from", []) if isinstance(entry, dict)]


def existing_problems(checkout: Path, slug: str) -> list[str]:
    """Why `slug` cannot be generated into `checkout` (it is taken, or the checkout is not one)."""
    problems = []
    workspace = checkout / WORKSPACE_FILE
    if not workspace.is_file() or not (checkout / "competitions" / "__init__.py").is_file():
        return [f"{checkout} is not a crunch-dagster checkout (no {WORKSPACE_FILE} or competitions/__init__.py); "
                "run init from the checkout's root or pass --output <checkout>"]
    for taken in (f"competitions/{slug}", f"challenges/{slug}", f"tests/competitions/test_{slug}.py"):
        if (checkout / taken).exists():
            problems.append(f"slug {slug!r} already exists: {taken} is there (choose another slug, or remove it first)")
    for module in _workspace_modules(workspace.read_text()):
        if module.get("location_name") == slug or module.get("module_name") == f"competitions.{slug}.definitions":
            problems.append(f"slug {slug!r} already exists: {WORKSPACE_FILE} has a code location {slug!r}")
    package = package_name(slug)
    if importlib.util.find_spec(package) is not None:
        problems.append(f"slug {slug!r}: a module {package!r} is already importable here; its challenge package "
                        "would be shadowed or shadow it; choose another slug")
    return problems


def add_workspace_entry(text: str, slug: str) -> str:
    """workspace.yaml with the competition's code location appended to load_from (comments and
    the other entries kept as they are)."""
    entry = workspace_entry(slug)
    updated = text if text.endswith("\n") else text + "\n"
    updated += entry
    modules = [m.get("module_name") for m in _workspace_modules(updated)]
    if modules.count(f"competitions.{slug}.definitions") != 1 or len(modules) != len(_workspace_modules(text)) + 1:
        raise ScaffoldError([f"{WORKSPACE_FILE}: could not append the code location of {slug!r}: its load_from "
                             "list is not the file's last block; add the entry by hand:\n" + entry])
    return updated


def write(checkout: Path, files: list[GeneratedFile], slug: str) -> list[Path]:
    """Write the files and the workspace entry; on any failure remove what was written."""
    checkout = checkout.resolve()
    workspace = checkout / WORKSPACE_FILE
    original_workspace = workspace.read_text()
    updated_workspace = add_workspace_entry(original_workspace, slug)
    created_roots = [checkout / root for root in (f"competitions/{slug}", f"challenges/{slug}")]
    made_dirs: list[Path] = []
    written: list[Path] = []
    try:
        for generated in files:
            target = checkout / generated.path
            for parent in reversed(target.parents):
                if not parent.exists() and checkout in parent.parents:
                    parent.mkdir()
                    made_dirs.append(parent)
            with open(target, "x") as handle:  # never overwrite
                handle.write(generated.content)
            written.append(target)
        workspace.write_text(updated_workspace)
    except BaseException:
        for path in reversed(written):
            path.unlink(missing_ok=True)
        for root in created_roots:
            if root in made_dirs:
                shutil.rmtree(root, ignore_errors=True)
        for directory in reversed(made_dirs):
            if directory.exists() and not any(directory.iterdir()):
                directory.rmdir()
        workspace.write_text(original_workspace)
        raise
    return written

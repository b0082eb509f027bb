"""`crunch-dagster doctor`: check a competition (or a spec file) without starting anything: the
spec, the callable wiring (import paths and parameters), the models directory and the feed
configuration. Every problem is collected, each with its fix; nothing stops at the first one.
No database, no network, no model process."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from crunch_assets.rules import (
    CALLABLE_SLOTS,
    OPTIONAL_SLOTS,
    SCHEMA_SLOTS,
    WiringError,
    import_object,
    resolve_callable,
    resolve_schema,
)
from crunch_assets.scaffold.config import (
    ScaffoldError,
    check_slug,
    read_spec_file,
    resolve,
)
from crunch_assets.scaffold.generate import (
    WORKSPACE_FILE,
    package_name,
    workspace_entry,
)
from crunch_assets.settings import CompetitionSettings, FeedDefaults, SettingsError
from crunch_assets.spec import SCHEMA_DOCUMENT, CompetitionSpec, SpecError, cadence_problems


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str


@dataclass
class Report:
    subject: str  # what was checked, for the heading
    problems: list[Problem]
    checked: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def checkout_root() -> Path:
    """The checkout whose competitions package this process imports."""
    import competitions

    return Path(competitions.__file__).resolve().parent.parent


def check_wiring(rules: Any, skip_prefixes: tuple[str, ...] = ()) -> list[Problem]:
    """Every slot of a CallableRules-like object resolved the way the engine resolves it at load
    time (CallableRules.check_wiring), but every broken slot reported, not only the first."""
    problems = []
    for slot, parameters in CALLABLE_SLOTS.items():
        path = getattr(rules, slot, None)
        if path is None and slot in OPTIONAL_SLOTS:
            continue
        if path is None or path.startswith(skip_prefixes):
            continue
        try:
            resolve_callable(slot, path, parameters)
        except WiringError as error:
            problems.append(Problem(f"RULES.{slot}: {error}",
                                    f"point {slot} at an existing function accepting ({', '.join(parameters)})"))
    for slot in SCHEMA_SLOTS:
        path = getattr(rules, slot, None)
        if path is None or path.startswith(skip_prefixes):
            continue
        try:
            resolve_schema(slot, path)
        except WiringError as error:
            problems.append(Problem(f"RULES.{slot}: {error}", f"point {slot} at a pydantic BaseModel class"))
    base = getattr(rules, "model_base_class", None)
    if base and not base.startswith(skip_prefixes):
        try:
            if not isinstance(import_object("model_base_class", base), type):
                raise WiringError(f"model_base_class: {base!r} is not a class")
        except WiringError as error:
            problems.append(Problem(f"RULES.{error}", "point model_base_class at the class participants subclass"))
    return problems


def check_feed(settings: CompetitionSettings, feed_defaults: FeedDefaults, subjects: list[str]) -> tuple[list[Problem], str]:
    """Build the feed the environment selects, as the code location would, and ask it whether it
    can serve the stream and each subject (configuration only: no request is made)."""
    feed_variable = settings.name("FEED")
    try:
        feed = settings.feed(feed_defaults, csv_subjects=subjects)
    except (SettingsError, ValueError) as error:
        return [Problem(f"feed: {error}", f"fix the environment variable it names (e.g. {feed_variable})")], "?"
    source = feed.source_name()
    problems = []
    try:
        feed.validate_stream()
    except ValueError as error:
        problems.append(Problem(
            f"feed {source!r} cannot serve {feed_defaults.kind} records of {feed_defaults.granularity_seconds} s: {error}",
            f"choose another source ({feed_variable}) or change FEED_DEFAULTS (the record kind and granularity)",
        ))
    seen: set[str] = set()
    for subject in subjects:
        try:
            feed.validate_subjects([subject])
        except ValueError as error:
            message = str(error)
            if message in seen:
                continue
            seen.add(message)
            problems.append(Problem(
                f"feed {source!r}, subject {subject!r}: {message}",
                f"map the subject in the feed's configuration, choose a source that serves it ({feed_variable}), "
                "or change the scope's subject",
            ))
    return problems, source


def check_cadence(spec: CompetitionSpec, settings: CompetitionSettings, feed_defaults: FeedDefaults) -> list[Problem]:
    """Every cycle instant and resolution instant of every scope has an observation at most
    max_price_staleness_seconds old on the feed the environment selects (the check the code
    location runs when it loads); each scope that has not is explained with its fixes."""
    from crunch_assets.definitions import observation_interval_seconds

    feed = settings.feed(feed_defaults, csv_subjects=spec.subjects)
    problems = []
    for problem in cadence_problems(spec, feed.kind, observation_interval_seconds(feed)):
        fixes = problem.fixes()
        problems.append(Problem(
            problem.describe(),
            ("change one of: " + "; ".join(fixes)) if fixes else
            "make the scope's cycle and resolution instants fall on the feed's observations",
        ))
    return problems


def check_workspace(checkout: Path, slug: str) -> list[Problem]:
    workspace = checkout / WORKSPACE_FILE
    if not workspace.is_file():
        return [Problem(f"{workspace} is missing", "run from the checkout's root")]
    try:
        data = yaml.safe_load(workspace.read_text()) or {}
    except yaml.YAMLError as error:
        return [Problem(f"{WORKSPACE_FILE} is not valid YAML: {error}", "repair the file")]
    modules = [entry.get("python_module", {}).get("module_name") for entry in data.get("load_from", []) if isinstance(entry, dict)]
    if f"competitions.{slug}.definitions" not in modules:
        return [Problem(f"{WORKSPACE_FILE} has no code location for {slug!r}: the UI and the daemon will not load it",
                        f"add under load_from:\n{workspace_entry(slug).rstrip()}")]
    return []


def _load_declaration(slug: str) -> tuple[Any, list[Problem]]:
    """The module holding SPEC and RULES: config.py (generated competitions), else definitions.py."""
    for name in (f"competitions.{slug}.config", f"competitions.{slug}.definitions"):
        try:
            return importlib.import_module(name), []
        except ModuleNotFoundError as error:
            if error.name in (name, f"competitions.{slug}"):
                continue
            return None, [Problem(f"importing {name} failed: {error}", "install the missing module or fix the import")]
        except SpecError as error:
            return None, [Problem(f"SPEC: {error}", f"correct it where SPEC is declared ({name.replace('.', '/')}.py)")]
        except WiringError as error:  # e.g. a misspelt or leftover field of RULES, refused when it is built
            return None, [Problem(f"RULES: {error}", f"correct it where RULES is declared ({name.replace('.', '/')}.py)")]
        except SettingsError as error:
            return None, [Problem(f"setting: {error}", "fix the environment variable it names")]
        except Exception as error:  # noqa: BLE001 - whatever breaks the load is the problem to report
            return None, [Problem(f"importing {name} failed: {type(error).__name__}: {error}", "fix the error it names")]
    return None, [Problem(f"no competition {slug!r}: neither competitions.{slug}.config nor competitions.{slug}.definitions exists",
                          f"create it with: crunch-dagster init {slug}")]


def doctor_competition(slug: str) -> Report:
    report = Report(slug, [], [])
    report.problems += [Problem(p, "choose a slug that matches the pattern") for p in check_slug(slug)]
    if report.problems:
        return report
    checkout = checkout_root()
    report.problems += check_workspace(checkout, slug)
    report.checked.append(WORKSPACE_FILE)
    module, problems = _load_declaration(slug)
    report.problems += problems
    if module is None:
        return report
    spec, rules = getattr(module, "SPEC", None), getattr(module, "RULES", None)
    if not isinstance(spec, CompetitionSpec):
        report.problems.append(Problem(f"{module.__name__} has no SPEC (a CompetitionSpec)", "declare SPEC = CompetitionSpec(...)"))
        return report
    report.checked.append("spec")
    if rules is None:
        report.problems.append(Problem(f"{module.__name__} has no RULES", "declare RULES = CallableRules(...)"))
    elif hasattr(rules, "input_builder"):
        report.problems += check_wiring(rules)
        report.checked.append("wiring")
    models_dir = getattr(module, "MODELS_DIR", None)
    settings = getattr(module, "SETTINGS", None) or CompetitionSettings(slug)
    if models_dir is not None and settings.get("RUNNER", "local") == "local":
        from resources.model_ids import MODEL_ID_RULE
        from resources.model_runners.local import scan_models

        try:
            found, refused = scan_models(Path(models_dir))
            for name, reason in refused.items():
                report.problems.append(Problem(f"model {name!r} in {models_dir} is refused: {reason}",
                                               f"rename it: a model id is {MODEL_ID_RULE}"))
            if not found:
                report.problems.append(Problem(f"{models_dir} holds no model", "add a model file (one *.py per model)"))
        except FileNotFoundError as error:
            report.problems.append(Problem(str(error), "create the models directory"))
        report.checked.append("models")
    feed_defaults = getattr(module, "FEED_DEFAULTS", FeedDefaults())
    feed_problems, source = check_feed(settings, feed_defaults, spec.subjects)
    report.problems += feed_problems
    report.checked.append(f"feed {source!r}")
    if not feed_problems:
        report.problems += check_cadence(spec, settings, feed_defaults)
        report.checked.append("cadence")
    return report


def schema_problems(spec_path: Path) -> list[Problem]:
    """The spec file's CompetitionSpec fields checked against the published JSON schema
    (docs/competition-spec.schema.json, CompetitionSpec.model_json_schema()); a file gives only what
    it changes (the pack gives the rest), so no field is required here."""
    import jsonschema_rs

    try:
        data = read_spec_file(spec_path)
    except ScaffoldError:
        return []  # resolve() reports it
    body = {key: value for key, value in data.items() if key in {f.name for f in fields(CompetitionSpec)}}
    schema = {key: value for key, value in CompetitionSpec.model_json_schema().items() if key != "required"}
    return [Problem(f"{spec_path}: {'.'.join(str(part) for part in error.instance_path) or '(root)'}: {error.message} "
                    "(JSON schema)", f"see {SCHEMA_DOCUMENT}")
            for error in jsonschema_rs.validator_for(schema).iter_errors(body)]


def doctor_spec(spec_path: Path, pack: str | None = None) -> Report:
    report = Report(str(spec_path), [], [])
    report.problems += schema_problems(spec_path)
    report.checked.append(f"schema ({SCHEMA_DOCUMENT})")
    try:
        resolved = resolve(None, pack, spec_path)
    except ScaffoldError as error:
        report.problems += [Problem(p, "correct it in the spec file (docs/scaffolding.md lists every key)") for p in error.problems]
        return report
    report.checked.append(f"spec (pack {resolved.pack})")
    slug = resolved.slug
    # Callables inside the modules init generates do not exist before init; the others must exist now.
    generated = (f"competitions.{slug}.", f"{package_name(slug)}.", f"{package_name(slug)}:")
    named = {slot: path for slot, path in resolved.scaffold.callables.model_dump().items() if path is not None}
    report.problems += check_wiring(_Paths(named), skip_prefixes=generated)
    report.checked.append("callables")
    spec, feed = resolved.spec, resolved.scaffold.feed
    feed_problems, source = check_feed(CompetitionSettings(slug), FeedDefaults(feed.kind, feed.granularity_seconds), spec.subjects)
    report.problems += feed_problems
    report.checked.append(f"feed {source!r}")
    return report


class _Paths:
    """The callables a spec file names, shaped like CallableRules (unnamed slots are None)."""

    def __init__(self, paths: dict[str, str]):
        self._paths = paths

    def __getattr__(self, slot: str) -> str | None:
        return self._paths.get(slot)


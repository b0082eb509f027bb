"""What the report API serves per competition: its spec, its emission accounts, its network and
its stores; and which competitions a deployment serves (every competition of workspace.yaml)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from resources.payout_accounts import PayoutAccounts
from crunch_assets.fingerprint import RulesBook, rules_book
from crunch_assets.rules import CompetitionRules, GroundTruthResource
from crunch_assets.settings import CompetitionSettings
from crunch_assets.spec import CompetitionSpec
from resources.model_runners.base import ModelRunnerResource
from resources.store.competition import CompetitionStore
from resources.store.database import CrunchDatabase
from resources.store.payouts import PayoutStore
from resources.store.reports import ReportStore

COMPETITION_MODULE = re.compile(r"^competitions\.([a-z][a-z0-9_]{0,63})\.definitions$")


class WorkspaceError(ValueError):
    """workspace.yaml cannot say which competitions to serve; the message says why."""


@dataclass(frozen=True)
class ReportCompetition:
    """`database`: the api role's store (reads, and the checkpoint functions). `rules`: the
    competition's, with which the safety gate recomputes a payout (without them it refuses)."""

    spec: CompetitionSpec
    accounts: PayoutAccounts
    database: CrunchDatabase
    rules: CompetitionRules | None = None
    # The competition's ground truth as its code location loads it: with `rules`, the rules
    # fingerprint, the gate's check that a checkpoint was built under them, what-if and shadow.
    ground_truth: GroundTruthResource | None = None
    # Other resources the shadow entry needs (the model runner's limits and sandbox); None: defaults.
    model_runner: ModelRunnerResource | None = None
    # The Solana cluster the crunch lives on (CRUNCH_<SLUG>_NETWORK), shown by /info; None: not declared.
    network: str | None = None

    @cached_property
    def rules_book(self) -> RulesBook | None:
        return rules_book(self.spec, self.rules, self.ground_truth) if self.rules is not None else None

    @property
    def slug(self) -> str:
        return self.spec.slug

    @cached_property
    def settings(self) -> CompetitionSettings:
        return CompetitionSettings(self.spec.slug)

    @property
    def store(self) -> CompetitionStore:
        return self.database.competition(self.slug)

    @property
    def reports(self) -> ReportStore:
        return ReportStore(self.database.engine, self.slug)

    @property
    def payouts(self) -> PayoutStore:
        return PayoutStore(self.database.engine, self.slug)


def load_report_competition(slug: str, database: CrunchDatabase | None = None) -> ReportCompetition:
    """A competition's code location by slug (competitions/<slug>/definitions.py): its spec, the
    emission accounts its definitions were configured with and its declared network
    (crunch_assets/settings.py; a wrong value is refused by name)."""
    from crunch_assets.code_locations import load_competition

    defs, spec = load_competition(slug)
    return report_competition(defs, spec, database)


def report_competition(defs, spec: CompetitionSpec, database: CrunchDatabase | None = None) -> ReportCompetition:
    """What the API serves of a loaded code location: the spec it runs (its scopes are what `/lag`
    and the page read), the emission accounts its definitions were configured with, and its rules,
    ground truth and model runner."""
    resources = defs.resources or {}
    accounts = resources.get("payout_accounts")
    settings = CompetitionSettings(spec.slug)
    network = settings.network  # refused by name before anything connects
    return ReportCompetition(spec, accounts or settings.payout_accounts(), database or CrunchDatabase(role="api"),
                             rules=resources.get("rules"), ground_truth=resources.get("ground_truth"),
                             model_runner=resources.get("model_runner"), network=network)


def workspace_slugs(workspace: Path) -> list[str]:
    """The competitions a workspace.yaml loads, in its order: each code location must be a
    competition module (`competitions.<slug>.definitions`, location named <slug>)."""
    from crunch_assets.code_locations import ServeConfigError, read_code_locations

    try:
        locations = read_code_locations(workspace)
    except (ServeConfigError, OSError) as error:
        raise WorkspaceError(f"{workspace}: {error}") from None
    slugs = []
    for location in locations:
        match = COMPETITION_MODULE.match(location.module or "")
        if match is None or match.group(1) != location.name:
            raise WorkspaceError(
                f"{workspace}: code location {location.name!r} is not a competition module "
                f"(python_module competitions.<slug>.definitions with location_name <slug>); "
                "name the competitions to serve with --slug")
        slugs.append(location.name)
    return slugs

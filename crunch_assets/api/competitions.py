"""What the report API serves per competition: its spec, its emission accounts, and its stores."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from crunch_assets.checkpoints import PayoutAccounts
from crunch_assets.fingerprint import RulesBook, rules_book
from crunch_assets.rules import CompetitionRules, GroundTruthResource
from crunch_assets.settings import CompetitionSettings
from crunch_assets.spec import CompetitionSpec
from resources.model_runners.base import ModelRunnerResource
from resources.store.competition import CompetitionStore
from resources.store.database import CrunchDatabase
from resources.store.payouts import PayoutStore
from resources.store.reports import ReportStore


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
    """A competition's code location by slug (competitions/<slug>/definitions.py): its spec and the
    emission accounts its definitions were configured with (crunch_assets/settings.py)."""
    from crunch_assets.cli.common import load_competition

    defs, spec = load_competition(slug)
    return report_competition(defs, spec, database)


def report_competition(defs, spec: CompetitionSpec, database: CrunchDatabase | None = None) -> ReportCompetition:
    """What the API serves of a loaded code location: the spec it runs (its scopes are what `/lag`
    and the page read), the emission accounts its definitions were configured with, and its rules,
    ground truth and model runner."""
    resources = defs.resources or {}
    accounts = resources.get("payout_accounts")
    return ReportCompetition(spec, accounts or CompetitionSettings(spec.slug).payout_accounts(),
                             database or CrunchDatabase(role="api"), rules=resources.get("rules"),
                             ground_truth=resources.get("ground_truth"), model_runner=resources.get("model_runner"))

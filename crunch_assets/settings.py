"""Deployment settings of a competition, read from the environment once when its code location
loads, the same way for every competition.

For a competition with slug `my_comp`, `CRUNCH_MY_COMP_<NAME>` wins over `CRUNCH_<NAME>`:

| name | values |
|---|---|
| FEED | synthetic (default) \\| csv \\| binance \\| pyth |
| CSV | the CSV file of the csv feed |
| BINANCE_BASE_URL | default https://api.binance.com (or https://data-api.binance.vision) |
| PYTH_HISTORY_URL, PYTH_HERMES_URL | Pyth endpoints; the API key is read from PYTH_API_KEY via dg.EnvVar |
| RUNNER | local (default) \\| orchestrator |
| MODELS_DIR | the local runner's models (default: the competition's `models/`) |
| MODEL_SANDBOX | on (default) \\| off: the local runner's models sandboxed, or (trusted models only) not |
| ORCHESTRATOR_HOST, ORCHESTRATOR_PORT, ORCHESTRATOR_CRUNCH_ID | the model orchestrator |
| AUTOMATION | on (default) \\| off: sensors and schedules start RUNNING or STOPPED |
| START | the first partition, ISO-8601 UTC on an hour |
| CHECKPOINT_INTERVAL_SECONDS | any whole number of hours |
| CRUNCH_PUBKEY, COMPUTE_PROVIDER_PUBKEY, DATA_PROVIDER_PUBKEY | emission accounts |
| NETWORK | the Solana cluster of the crunch account: mainnet-beta \\| devnet \\| testnet (unset: not declared) |
| ROOT_PUBLICATION_DIR, ROOT_PUBLICATION_WEBHOOK_URL | where chained roots are published (crunch_assets/publication.py) |

Booleans parse strictly: on/off, true/false, yes/no, 1/0 (any case); anything else is an error
naming the variable, never "on".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

import dagster as dg

from resources.feeds.base import FeedResource
from resources.model_runners.base import ModelRunnerResource
from resources.payout_accounts import PayoutAccounts

TRUE_WORDS = {"on", "true", "yes", "1"}
FALSE_WORDS = {"off", "false", "no", "0"}
FEEDS = ("synthetic", "csv", "binance", "pyth")
RUNNERS = ("local", "orchestrator")
MODEL_SANDBOX = ("on", "off")
NETWORKS = ("mainnet-beta", "devnet", "testnet")  # Solana's clusters, as WalletAdapterNetwork names them


class SettingsError(ValueError):
    """A deployment setting is wrong; the message names the variable."""


def parse_bool(name: str, value: str) -> bool:
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SettingsError(f"{name}={value!r}: expected one of on/off, true/false, yes/no, 1/0")


@dataclass(frozen=True)
class FeedDefaults:
    """What a competition's feed is, whatever its source: the kind and granularity of its records
    are part of the competition's contract; the environment picks the source."""

    kind: str = "candle"
    granularity_seconds: int = 60
    source: str = "synthetic"


class CompetitionSettings:
    def __init__(self, slug: str, environ: Mapping[str, str] | None = None):
        self.slug = slug
        self._environ = os.environ if environ is None else environ
        self.prefix = f"CRUNCH_{slug.upper()}_"

    def name(self, name: str) -> str:
        """The variable that sets `name` (the competition's own if set, else the shared one)."""
        own = self.prefix + name
        return own if own in self._environ else f"CRUNCH_{name}"

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._environ.get(self.prefix + name, self._environ.get(f"CRUNCH_{name}", default))

    def require(self, name: str, why: str) -> str:
        value = self.get(name)
        if not value:
            raise SettingsError(f"{self.prefix}{name} (or CRUNCH_{name}) must be set: {why}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, default)
        if value not in choices:
            raise SettingsError(f"{self.name(name)}={value!r}: expected one of {', '.join(choices)}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.get(name)
        return default if value is None else parse_bool(self.name(name), value)

    def integer(self, name: str, default: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise SettingsError(f"{self.name(name)}={value!r}: expected a whole number") from None

    def instant(self, name: str, default: datetime) -> datetime:
        value = self.get(name)
        if value is None:
            return default
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise SettingsError(f"{self.name(name)}={value!r}: expected an ISO-8601 instant like 2026-11-01T00:00:00+00:00") from None
        if parsed.tzinfo is None:
            raise SettingsError(f"{self.name(name)}={value!r}: give the UTC offset (+00:00)")
        return parsed

    @property
    def automation(self) -> bool:
        return self.flag("AUTOMATION", True)

    def feed(self, defaults: FeedDefaults, csv_subjects: list[str] | None = None) -> FeedResource:
        from resources.feeds.binance import BinanceFeed
        from resources.feeds.csv_replay import CsvReplayFeed
        from resources.feeds.pyth import PythFeed
        from resources.feeds.synthetic import SyntheticFeed

        stream = {"kind": defaults.kind, "granularity_seconds": defaults.granularity_seconds}
        choice = self.choice("FEED", FEEDS, defaults.source)
        if choice == "synthetic":
            return SyntheticFeed(**stream)
        if choice == "csv":
            path = self.require("CSV", "the csv feed replays candles from this file")
            return CsvReplayFeed(path=path, source="csv", subjects=csv_subjects or ["BTC"], **stream)
        if choice == "binance":
            return BinanceFeed(base_url=self.get("BINANCE_BASE_URL", "https://api.binance.com"), **stream)
        api_key_variable = self.name("PYTH_API_KEY")
        return PythFeed(
            history_base_url=self.get("PYTH_HISTORY_URL", "https://benchmarks.pyth.network"),
            hermes_base_url=self.get("PYTH_HERMES_URL", "https://hermes.pyth.network"),
            api_key=dg.EnvVar(api_key_variable) if self._environ.get(api_key_variable) else None,
            **stream,
        )

    def model_runner(self, models_dir: str, call_timeout_seconds: float = 5.0) -> ModelRunnerResource:
        from resources.model_runners.local import LocalModelRunner

        choice = self.choice("RUNNER", RUNNERS, "local")
        if choice == "local":
            return LocalModelRunner(models_dir=self.get("MODELS_DIR", models_dir), call_timeout_seconds=call_timeout_seconds,
                                    sandbox=self.choice("MODEL_SANDBOX", MODEL_SANDBOX, "on"))
        # imported here: model-runner-client brings pandas and grpc (~0.5 s in every run process)
        from resources.model_runners.orchestrator import OrchestratorModelRunner

        port = self.require("ORCHESTRATOR_PORT", "the model orchestrator's port")
        try:
            port_number = int(port)
        except ValueError:
            raise SettingsError(f"{self.name('ORCHESTRATOR_PORT')}={port!r}: expected a port number") from None
        return OrchestratorModelRunner(
            host=self.require("ORCHESTRATOR_HOST", "the model orchestrator's host"),
            port=port_number,
            crunch_id=self.require("ORCHESTRATOR_CRUNCH_ID", "the crunch id the orchestrator serves models for"),
            call_timeout_seconds=call_timeout_seconds,
            connect_timeout_seconds=5.0,  # a cycle must not wait long for an unreachable node
        )

    @property
    def network(self) -> str | None:
        """The declared Solana cluster of the crunch account, or None when not declared."""
        if self.get("NETWORK") is None:
            return None
        return self.choice("NETWORK", NETWORKS, "")

    def payout_accounts(self) -> PayoutAccounts:
        return PayoutAccounts(
            crunch_pubkey=self.get("CRUNCH_PUBKEY"),
            compute_provider_pubkey=self.get("COMPUTE_PROVIDER_PUBKEY"),
            data_provider_pubkey=self.get("DATA_PROVIDER_PUBKEY"),
        )


"""The model-runner interface: call every participant model for one prediction cycle.

Runners (local processes, CrunchDAO's orchestrator) all return one ModelCallResult per known
model, so the assets do not know which runner ran.
"""

from __future__ import annotations

import enum
from abc import abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Sequence

import dagster as dg
from pydantic import Field


class CallStatus(str, enum.Enum):
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"  # the model raised, crashed, or returned something unusable
    TIMEOUT = "TIMEOUT"
    ABSENT = "ABSENT"  # known but not reachable / did not answer at all


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    name: str
    player_id: str | None = None
    player_name: str | None = None
    deployment_id: str | None = None
    state: str = "RUNNING"  # RUNNING | STOPPED | RECOVERING
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodCall:
    method: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCallResult:
    model_id: str
    status: CallStatus
    output: Any = None  # JSON-compatible value returned by the last call
    exec_time_ms: float = 0.0  # summed over the cycle's calls
    detail: str | None = None  # why it failed, for FAILED / TIMEOUT / ABSENT


@dataclass(frozen=True)
class ModelInterface:
    """What a competition asks of participant models: their base class (import path
    `module:ClassName`); the runner instantiates each model's single subclass of it."""

    base_class: str


class ModelSession(AbstractContextManager):
    """Models kept ready for a series of cycles (one Dagster run)."""

    @abstractmethod
    def models(self) -> list[ModelInfo]:
        """The models this session will call (the registry's view at session start)."""

    @abstractmethod
    def run_cycle(
        self,
        calls: Sequence[MethodCall],
        timeout_seconds: float,
        skip_model_ids: frozenset[str] = frozenset(),
    ) -> dict[str, ModelCallResult]:
        """Make `calls` in order on every model, all models concurrently; return each model's
        result of the last call. A model whose earlier call fails skips the rest and reports that
        failure. Every model of models() has an entry, except those in `skip_model_ids`: they are
        not called at all (no request, no restart) and get no entry, as the caller records them
        itself (e.g. as quarantined). Ids of unknown models in it are ignored. Never raises
        because of a model."""

    def run_cycles_ahead(
        self,
        calls_per_cycle: Sequence[Sequence[MethodCall]],
        timeout_seconds: float,
        model_ids: frozenset[str],
    ) -> dict[str, list[ModelCallResult]]:
        """Several consecutive cycles at once for the models `model_ids` (a range run): each
        model gets the cycles' calls in order, as `run_cycle` would make them one cycle after the
        other, each cycle within `timeout_seconds` of the one before. Each model's list holds its
        results in cycle order and may stop short (it timed out, crashed or is not running): the
        caller makes the remaining cycles with `run_cycle`, one at a time. The default sends
        nothing ahead, so the caller calls every cycle in turn."""
        return {}

    def __exit__(self, *exc_info) -> None:
        self.close()
        return None

    @abstractmethod
    def close(self) -> None: ...


class ModelRunnerResource(dg.ConfigurableResource):
    call_timeout_seconds: float = Field(default=5.0, description="Time budget of one cycle's calls to each model.")
    max_output_bytes: int = Field(
        default=65536,
        description="Largest answer accepted from a model, measured as its compact JSON encoding; "
        "a larger one is FAILED (\"output too large\"), whatever the runner.",
    )

    @abstractmethod
    def list_models(self) -> list[ModelInfo]:
        """The registered models, without starting them."""

    def refused_models(self) -> dict[str, str]:
        """Models the runner refused to register, by name, with the reason (a name that is not a
        valid model id: resources/model_ids.py)."""
        return {}

    @abstractmethod
    def open_session(self, interface: ModelInterface) -> ModelSession:
        """Start or connect to the models; use as a context manager."""

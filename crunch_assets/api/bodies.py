"""The request shapes of the report API's mutations (bodies, identifiers, instants) and the one
checkpoint transition over HTTP: shared by our routes (crunch_assets/api/app.py) and the
reference's /reports paths (crunch_assets/api/reference.py), which import them from here.

No `from __future__ import annotations`: FastAPI and pydantic must see the real annotations.
"""

from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import HTTPException
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from crunch_assets import payouts
from crunch_assets.api.competitions import ReportCompetition
from resources.store.payouts import CheckpointNotFound, TransitionConflict

# Identifiers in paths and filters: printable, bounded (NUL and control characters cannot reach SQL).
# A model id has the registration grammar (resources/model_ids.py): every registered model fits it.
IDENT_PATTERN = r"^[A-Za-z0-9_.:@/+=-]{1,200}$"
SHADOW_SOURCE_MAX_CHARS = 100_000
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2200, 1, 1, tzinfo=timezone.utc)


def _utc_instant(value: datetime) -> datetime:
    try:
        utc = value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("instant out of range") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"instant must be between {EARLIEST.year} and {LATEST.year}")
    return utc


UtcInstant = Annotated[AwareDatetime, AfterValidator(_utc_instant)]
Ident = Annotated[str, Field(pattern=IDENT_PATTERN)]
TxHash = Annotated[str, Field(pattern=payouts.TX_HASH_PATTERN.pattern, description="on-chain transaction hash")]
Note = Annotated[str, Field(max_length=payouts.NOTE_MAX_CHARS)]


def advance_over_http(c: ReportCompetition, checkpoint_id: int, to_status: str, actor: str, tx_hash: str | None,
                      note: str | None):
    """One checkpoint transition for every router (ours and the reference's /reports paths): the gate
    recomputes the payout with the competition's rules and ground truth (the checkpoint must have been
    built under them: its rules fingerprint); each refusal is its HTTP status."""
    try:
        return payouts.advance(c.spec, c.store, c.payouts, c.accounts, checkpoint_id, to_status, actor=actor,
                               tx_hash=tx_hash, note=note, settings=c.settings, rules=c.rules,
                               ground_truth=c.ground_truth)
    except CheckpointNotFound as error:
        raise HTTPException(404, str(error)) from None
    except payouts.InvalidRequest as error:
        raise HTTPException(422, str(error)) from None
    except TransitionConflict as error:
        raise HTTPException(409, {"message": str(error), "status": error.current_status}) from None
    except (payouts.GateFailed, payouts.SkipRefused) as error:
        raise HTTPException(409, {"message": str(error), "reasons": error.reasons, "gate": error.gate}) from None


class ConfirmBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tx_hash: TxHash
    note: Note | None = None


class ResolveCopyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pay: Ident | None = Field(default=None, description="the one member the cluster pays")
    pay_all: bool = Field(default=False, description="the members are not copies: pay every one")
    note: Note | None = None


class CycleRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    first: UtcInstant = Field(description="the first disputed cycle time")
    last: UtcInstant = Field(description="the last disputed cycle time (the same as first: one cycle)")


class DisputeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    claimant: Annotated[str, Field(min_length=1, max_length=payouts.CLAIMANT_MAX_CHARS,
                                   description="who disputes (a participant, a model)")]
    what: Annotated[str, Field(min_length=1, max_length=payouts.NOTE_MAX_CHARS, description="what is disputed")]
    cycles: Annotated[list[CycleRange], Field(min_length=1, max_length=payouts.MAX_DISPUTED_RANGES)]
    note: Note | None = None


class ResolveDisputeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resolution: Annotated[str, Field(min_length=1, max_length=payouts.NOTE_MAX_CHARS,
                                     description="how it was resolved")]


class ShadowBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_source: Annotated[str, Field(min_length=1, max_length=SHADOW_SOURCE_MAX_CHARS,
                                       description="the candidate's model file (Python source)")]
    start: UtcInstant = Field(description="every checkpoint period inside [start, end) is reported")
    end: UtcInstant
    replaces: Ident | None = Field(default=None, description="the candidate takes this model's place in the field")


class StatusBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["PENDING", "SUBMITTED", "CLAIMABLE", "PAID", "SKIPPED"]
    tx_hash: TxHash | None = None
    note: Note | None = Field(default=None, description="kept in the audit; for SKIPPED, required: the reason")

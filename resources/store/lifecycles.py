"""The lifecycles of the stored facts, as `StrEnum`s: each member is its own string, so the database
values, JSON and metadata stay exactly the strings they were ("PENDING" == CheckpointStatus.PENDING).

The database holds the same sets as CHECK constraints (migration 0011); tests/test_lifecycles.py
reads them from PostgreSQL's catalog and requires them equal to these enums. SQL text in this
package may spell the values out; Python code names them here.

Each member's name is its value: an Enum hashes by name, so only then does a member find the plain
string as a dict key (the counts the store returns are keyed by the stored strings).
"""

from __future__ import annotations

from enum import StrEnum


class InputStatus(StrEnum):
    """A cycle's input (crunch.inputs.status): RECEIVED until its truth resolves it or it is voided."""

    RECEIVED = "RECEIVED"  # stored; waiting for its horizon and its truth
    RESOLVED = "RESOLVED"  # its truth is known and its predictions are scored
    VOIDED = "VOIDED"  # no truth, or the rules void it: its predictions are not scored


class PredictionStatus(StrEnum):
    """A prediction as made (crunch.predictions.status), never rewritten."""

    PENDING = "PENDING"  # the model answered (scored once its cycle resolves)
    FAILED = "FAILED"  # the model raised, timed out, returned something invalid, or was quarantined
    ABSENT = "ABSENT"  # the model did not answer at all


class PredictionReportStatus(StrEnum):
    """A prediction's status as reported (the API, the settled check): VOIDED (its input is
    void), SCORED (answered and scored), else as made. Derived, never stored."""

    PENDING = "PENDING"
    SCORED = "SCORED"
    FAILED = "FAILED"
    ABSENT = "ABSENT"
    VOIDED = "VOIDED"


class CheckpointStatus(StrEnum):
    """An emission checkpoint (crunch.checkpoints.status, crunch.checkpoint_audit's from/to):
    PENDING -> SUBMITTED -> CLAIMABLE -> PAID, one step at a time, or PENDING -> SKIPPED (final)."""

    PENDING = "PENDING"
    SUBMITTED = "SUBMITTED"
    CLAIMABLE = "CLAIMABLE"
    PAID = "PAID"
    SKIPPED = "SKIPPED"

"""Who owns each local model: an optional participants file beside the models.

`participants.json` or `participants.toml` in the models directory maps a model id to its
participant, either as a string (the participant's id) or as a table with `participant` (the id)
and an optional `name` (shown as the participant's name):

    {"trend_following": "alice", "mean_reversion": {"participant": "alice", "name": "Alice"}}

    trend_following = "alice"
    [mean_reversion]
    participant = "alice"
    name = "Alice"

A model the file does not name, or every model when there is no file, is its own participant,
named after its model id. A file that is given and wrong (both formats at once, a model that is
not in the directory, an unknown key, an empty id) is refused by name, never half-read. The
orchestrator runner needs none of this: it reports each model's cruncher itself.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

PARTICIPANT_FILES = ("participants.json", "participants.toml")
ENTRY_KEYS = ("participant", "name")


class ParticipantsFileError(ValueError):
    """The participants file is present and wrong; the message names the file and the entry."""


@dataclass(frozen=True)
class Participant:
    participant_id: str
    name: str | None = None


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} declared twice")
    return dict(pairs)


def read_participants(models_dir: Path, model_ids: Iterable[str]) -> dict[str, Participant]:
    """model_id -> its declared participant, from the models directory's participants file
    ({} without one)."""
    present = [models_dir / name for name in PARTICIPANT_FILES if (models_dir / name).is_file()]
    if not present:
        return {}
    if len(present) > 1:
        raise ParticipantsFileError(f"{models_dir} has both {present[0].name} and {present[1].name}: keep one")
    path = present[0]
    try:
        text = path.read_text()
        raw = json.loads(text, object_pairs_hook=_no_duplicates) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ParticipantsFileError(f"{path}: not valid {path.suffix[1:].upper()}: {error}") from error
    if not isinstance(raw, dict):
        raise ParticipantsFileError(f"{path}: must map model ids to participants, got {type(raw).__name__}")
    known = set(model_ids)
    declared: dict[str, Participant] = {}
    for model_id, entry in raw.items():
        if model_id not in known:
            raise ParticipantsFileError(f"{path}: model {model_id!r} is not in {models_dir} "
                                        f"(models: {', '.join(sorted(known)) or 'none'})")
        if isinstance(entry, str):
            entry = {"participant": entry}
        if not isinstance(entry, dict):
            raise ParticipantsFileError(f"{path}: {model_id}: a participant id or a table with 'participant' and "
                                        f"'name', got {entry!r}")
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise ParticipantsFileError(f"{path}: {model_id}: unknown key(s) {', '.join(unknown)} "
                                        f"(allowed: {', '.join(ENTRY_KEYS)})")
        participant_id, name = entry.get("participant"), entry.get("name")
        if not isinstance(participant_id, str) or not participant_id.strip():
            raise ParticipantsFileError(f"{path}: {model_id}: 'participant' must be a non-empty string, "
                                        f"got {participant_id!r}")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ParticipantsFileError(f"{path}: {model_id}: 'name' must be a non-empty string, got {name!r}")
        declared[model_id] = Participant(participant_id.strip(), name.strip() if name else None)
    return declared

"""Each chained root published outside the database as its checkpoint is built.

An operator with a database console could rebuild a whole chain of checkpoints, every root and
chained root, so that `crunch-dagster audit` verifies again; a root published elsewhere when the
checkpoint was built cannot be taken back. The checkpoint asset publishes every checkpoint it
stores (`publish`):
- to an append-only file, one line of RFC 8785 JSON per publication:
  `$CRUNCH_[<SLUG>_]ROOT_PUBLICATION_DIR/<slug>.jsonl` (default: `<data dir>/published_roots/`);
  copy it where the operator cannot rewrite it (a public repository, write-once storage);
- and, with `$CRUNCH_[<SLUG>_]ROOT_PUBLICATION_WEBHOOK_URL` set (a secret: never logged), POSTed
  there as JSON (event "checkpoint_root"); the file's line records whether the webhook took it.

The emission safety gate refuses a checkpoint whose current chained root is not in the file, or
(with a webhook configured) was not delivered to it (`publication_problem`);
`crunch-dagster checkpoints publish <slug> <id>` publishes it again. The audit names a checkpoint
whose stored chained root was never published (`audit_problem`).
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from crunch_assets import merkle
from crunch_assets.settings import CompetitionSettings
from resources import clock
from resources.database_url import default_data_dir
from resources.store.rows import CheckpointRow
from resources.store.lifecycles import CheckpointStatus

DIR_SETTING = "ROOT_PUBLICATION_DIR"
WEBHOOK_SETTING = "ROOT_PUBLICATION_WEBHOOK_URL"
DEFAULT_SUBDIR = "published_roots"
WEBHOOK_EVENT = "checkpoint_root"
# what identifies a publication: the checkpoint and what it committed to
IDENTITY = ("competition", "checkpoint_id", "period_start", "period_end", "commitment_scheme", "merkle_root",
            "previous_chained_root", "chained_root", "entries_sha256")


@dataclass(frozen=True)
class RootSink:
    """Where a competition's chained roots are published: `path` (the append-only file) and the
    optional webhook."""

    slug: str
    path: Path
    webhook_url: str | None = None

    @classmethod
    def from_settings(cls, settings: CompetitionSettings) -> "RootSink":
        configured = settings.get(DIR_SETTING)
        directory = Path(configured).expanduser().resolve() if configured else default_data_dir() / DEFAULT_SUBDIR
        return cls(settings.slug, directory / f"{settings.slug}.jsonl", settings.get(WEBHOOK_SETTING) or None)

    def describe(self) -> str:
        from crunch_assets.defs.housekeeping.observability import redacted

        return str(self.path) + (f" and the webhook {redacted(self.webhook_url)}" if self.webhook_url else "")


def publication_record(slug: str, checkpoint: CheckpointRow) -> dict:
    """What is published of a checkpoint: its period, scheme, roots and entries hash."""
    return {
        "competition": slug,
        "checkpoint_id": checkpoint.id,
        "period_start": checkpoint.period_start.astimezone(timezone.utc).isoformat(),
        "period_end": checkpoint.period_end.astimezone(timezone.utc).isoformat(),
        "commitment_scheme": checkpoint.commitment_scheme,
        "merkle_root": checkpoint.merkle_root,
        "previous_chained_root": checkpoint.meta.get("previous_chained_root"),
        "chained_root": checkpoint.chained_root,
        "entries_sha256": checkpoint.meta.get("entries_sha256"),
    }


def read_publications(sink: RootSink) -> list[dict]:
    """Every publication line of the file (none when there is no file); a line that is not a JSON
    object is skipped: it publishes nothing. Raises OSError when the file cannot be read."""
    try:
        text = sink.path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def _same(record: dict, wanted: dict) -> bool:
    return all(record.get(key) == wanted[key] for key in IDENTITY)


def _delivered(record: dict) -> bool:
    webhook = record.get("webhook")
    return isinstance(webhook, dict) and webhook.get("delivered") is True


def publication_problem(sink: RootSink, checkpoint: CheckpointRow, records: list[dict] | None = None) -> str | None:
    """Why the checkpoint's current chained root does not count as published (None when it does):
    no line of the file names it with these roots, or a webhook is configured and none took it.
    The gate stores and serves this: it names no path or URL."""
    wanted = publication_record(sink.slug, checkpoint)
    fix = f"crunch-dagster checkpoints publish {sink.slug} {checkpoint.id}"
    if records is None:
        try:
            records = read_publications(sink)
        except OSError as error:
            return (f"the publication file ({DIR_SETTING}) cannot be read ({error.strerror or type(error).__name__}): "
                    f"fix it, then {fix}")
    lines = [r for r in records if _same(r, wanted)]
    if not lines:
        return (f"chained root {str(checkpoint.chained_root)[:16]}.. of checkpoint #{checkpoint.id} is not in the "
                f"publication file ({DIR_SETTING}): {fix}")
    if sink.webhook_url and not any(_delivered(r) for r in lines):
        return f"chained root of checkpoint #{checkpoint.id} was not delivered to the publication webhook: {fix}"
    return None


def audit_problem(sink: RootSink, checkpoint: CheckpointRow, records: list[dict]) -> str | None:
    """For the audit: a scheme-3 checkpoint whose stored chained root was never published (the
    webhook cannot be read back: only the file is checked)."""
    if checkpoint.commitment_scheme < merkle.PORTABLE_SCHEME:
        return None  # built before roots were published
    wanted = publication_record(sink.slug, checkpoint)
    if any(_same(r, wanted) for r in records):
        return None
    if checkpoint.status == CheckpointStatus.PENDING:
        return (f"its chained root was never published to {sink.path}: crunch-dagster checkpoints publish "
                f"{sink.slug} {checkpoint.id}")
    return (f"{checkpoint.status}, but its stored chained root is not in the publication file {sink.path}: the "
            "gate only passes a published root, so the checkpoint's roots changed after it was submitted, or the "
            "file lost the line")


@dataclass(frozen=True)
class Publication:
    record: dict
    appended: bool  # False: already published (and delivered), nothing done

    @property
    def delivered(self) -> bool | None:
        webhook = self.record.get("webhook")
        return None if webhook is None else _delivered(self.record)


def publish(sink: RootSink, checkpoint: CheckpointRow, now: datetime | None = None) -> Publication:
    """Publish the checkpoint's roots: POST to the webhook (if any), then append the line, with the
    webhook's outcome, to the file. Idempotent: a checkpoint already published (and delivered, with
    a webhook) is not published again. Raises OSError when the file cannot be written."""
    record = publication_record(sink.slug, checkpoint)
    for existing in read_publications(sink):
        if _same(existing, record) and (not sink.webhook_url or _delivered(existing)):
            return Publication(existing, appended=False)
    line = {**record, "published_at": (now or clock.now()).isoformat(),
            "webhook": _post(sink.webhook_url, record) if sink.webhook_url else None}
    sink.path.parent.mkdir(parents=True, exist_ok=True)
    with open(sink.path, "ab") as handle:  # O_APPEND: each write lands at the end
        fcntl.flock(handle, fcntl.LOCK_EX)  # one line at a time across processes
        try:
            handle.write(merkle.canonical(line) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return Publication(line, appended=True)


def _post(url: str, record: dict) -> dict:
    """The webhook's outcome: {"delivered", "status"} or {"delivered": false, "error"} (never the URL)."""
    import requests

    from crunch_assets.defs.housekeeping.observability import post_alert

    try:
        status = post_alert(url, {"event": WEBHOOK_EVENT, **record})
    except requests.RequestException as error:
        return {"delivered": False, "status": None, "error": type(error).__name__}
    return {"delivered": 200 <= status < 300, "status": status}

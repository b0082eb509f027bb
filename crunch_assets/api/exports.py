"""Streamed exports of a model's predictions and scores: CSV, or Parquet with one row group per page
(never more than a page in memory)."""

from __future__ import annotations

import csv
import io
import json
from typing import Iterable, Iterator

from crunch_assets.failure_reasons import public_reason, public_score_reason
from resources.store.reports import PredictionReport

COLUMNS = ("model_id", "scope_key", "cycle_at", "resolvable_at", "status", "status_reason", "exec_time_ms",
           "inference_output", "score_value", "score_success", "score_failed_reason")


def _row(p: PredictionReport) -> dict:
    return {
        "model_id": p.model_id, "scope_key": p.scope_key, "cycle_at": p.cycle_at, "resolvable_at": p.resolvable_at,
        "status": p.status, "status_reason": public_reason(p.status, p.status_reason), "exec_time_ms": p.exec_time_ms,
        "inference_output": None if p.inference_output is None else json.dumps(p.inference_output, sort_keys=True),
        "score_value": p.score_value, "score_success": p.score_success,
        "score_failed_reason": public_score_reason(p.score_failed_reason),
    }


def csv_chunks(batches: Iterable[list[PredictionReport]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for batch in batches:
        for p in batch:
            row = _row(p)
            row["cycle_at"], row["resolvable_at"] = p.cycle_at.isoformat(), p.resolvable_at.isoformat()
            writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate(0)
    if buffer.getvalue():
        yield buffer.getvalue()


class _Chunks(io.RawIOBase):
    """A write-only sink that hands written bytes on and keeps only the position Parquet needs."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        chunk = bytes(data)
        self.pending.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        data, self.pending = b"".join(self.pending), []
        return data


def parquet_schema():
    import pyarrow as pa

    return pa.schema([
        ("model_id", pa.string()), ("scope_key", pa.string()), ("cycle_at", pa.timestamp("us", tz="UTC")),
        ("resolvable_at", pa.timestamp("us", tz="UTC")), ("status", pa.string()), ("status_reason", pa.string()),
        ("exec_time_ms", pa.float64()), ("inference_output", pa.string()), ("score_value", pa.float64()),
        ("score_success", pa.bool_()), ("score_failed_reason", pa.string()),
    ])


def parquet_chunks(batches: Iterable[list[PredictionReport]]) -> Iterator[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    sink = _Chunks()
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_table(pa.Table.from_pylist([_row(p) for p in batch], schema=schema))
            data = sink.take()
            if data:
                yield data
    yield sink.take()

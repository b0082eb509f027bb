"""JSON for the store's JSONB columns: orjson (several times faster than the standard library on
the hot paths: model inputs, outputs, score results). JSONB normalises what it stores, so the codec
changes no stored value. Tamper-evidence hashes use their own canonical encoding
(crunch_assets/merkle.py), not this one."""

from __future__ import annotations

from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=_OPTIONS).decode()


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)

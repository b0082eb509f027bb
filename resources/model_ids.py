"""The one grammar of a model id: what a model runner may register, and what the report API
accepts in a path or a filter. A model is refused at registration (a local model file, an
orchestrator announcement) when its id does not fit, with the reason, so every model that is
ranked and paid can also be looked up, proved and exported through the API.

An id is 1 to 200 ASCII characters: letters, digits and `_ . : @ + = -`, starting with a letter
or a digit. No `/` (a path segment cannot hold one), no leading `.` (`.` and `..` are path
segments a client collapses), no space, quote, control or non-ASCII character (ids go unescaped
into URLs, file names and logs).
"""

from __future__ import annotations

import re

MODEL_ID_MAX_CHARS = 200
MODEL_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.:@+=-]{{0,{MODEL_ID_MAX_CHARS - 1}}}$"
MODEL_ID_RULE = (f"1 to {MODEL_ID_MAX_CHARS} ASCII letters, digits and _ . : @ + = -, "
                 "starting with a letter or a digit")
_MODEL_ID = re.compile(MODEL_ID_PATTERN)
_ALLOWED = re.compile(r"[A-Za-z0-9_.:@+=-]")


def model_id_problem(model_id: str) -> str | None:
    """Why `model_id` is not a valid model id (None when it is)."""
    if _MODEL_ID.fullmatch(model_id):
        return None
    if not model_id:
        return f"the id is empty: it must be {MODEL_ID_RULE}"
    if len(model_id) > MODEL_ID_MAX_CHARS:
        return f"the id is {len(model_id)} characters long: at most {MODEL_ID_MAX_CHARS}"
    refused = sorted({c for c in model_id if not _ALLOWED.fullmatch(c)})
    if refused:
        shown = ", ".join(repr(c) for c in refused)
        return f"the id {model_id!r} contains {shown}: it must be {MODEL_ID_RULE}"
    return f"the id {model_id!r} starts with {model_id[0]!r}: it must start with a letter or a digit"


def is_model_id(model_id: str) -> bool:
    return model_id_problem(model_id) is None

"""What the public sees of why a prediction failed: what failed, never where in the participant's
code (file, line, function, paths, its exception message) nor what its process printed.

The store keeps the full reason as made (`predictions.status_reason`, `scores.failed_reason`):
the operator reads it (the report API with the bearer token, the database, the run logs) and
passes it on to the participant. Open reads show `public_reason` of it.

The stored reasons are "<kind>: <detail>" (crunch_assets/defs/predictions/assets.py): `timeout`, `error`,
`invalid output` (the competition's validator, not the participant's code), `quarantined`
(the engine); ABSENT reasons come from the runner. Only details the runners write themselves
(timeouts, exit codes, size limits) are shown as they are, matched in full; a model's exception is
reduced to its type; anything not recognised becomes the kind alone. So a reason in a shape this
module does not know shows too little, never too much.
"""

from __future__ import annotations

import re
from resources.store.lifecycles import PredictionStatus

PUBLIC_REASON_MAX_CHARS = 300

# Details written by the runners themselves (resources/model_runners), shown as they are.
_RUNNER_TIMEOUTS = re.compile(
    r"timed out after [0-9.]+ s"
    r"|no answer within the cycle budget of [0-9.]+ ?s"
    r"|(?:[A-Za-z_]\w{0,60}: )?the cycle budget was used up by earlier calls"
    r"|(?:[A-Za-z_]\w{0,60}: )?(?:DEADLINE_EXCEEDED: Deadline Exceeded|TIMEOUT)"
)
_RUNNER_ERRORS = re.compile(
    r"model process (?:exited with code -?[0-9]+|killed by signal [0-9]+ \([A-Za-z0-9_ ]+\)|did not exit)"
    r"|output too large: (?:reply over [0-9]+ bytes|[0-9]+ bytes > [0-9]+)"
)
# The orchestrator: "<method>: <CODE>: <the node's message, the model's own text>" and the like.
_CALL = re.compile(r"([a-z_][a-z0-9_]{0,60}): (.*)", re.DOTALL)
_NODE_CODES = frozenset({"FAILED", "TIMEOUT", "DEADLINE_EXCEEDED", "INVALID_ARGUMENT", "INTERNAL", "UNAVAILABLE",
                         "UNKNOWN"})
# describe_exception (local_worker): "ValueError: message (at model.py:12 in predict)", "ValueError".
_EXCEPTION = re.compile(r"([A-Za-z_][\w.]{0,100})(?:: .*| \(at .*)?", re.DOTALL)
_KINDS = {"error": "the model failed", "timeout": "the model did not answer in time"}


def _error_detail(detail: str) -> str:
    if _RUNNER_ERRORS.fullmatch(detail):
        return detail
    if detail.startswith("could not start"):
        return "the model could not start"
    if detail.startswith("protocol error"):
        return "the model broke the runner's protocol"
    if detail.startswith("output not serialisable") or detail.startswith("unusable answer"):
        return "the model's output is not JSON"
    call = _CALL.fullmatch(detail)
    if call is not None:
        described = _call_failure(*call.groups())
        if described is not None:
            return described
    exception = _EXCEPTION.fullmatch(detail)
    if exception is not None:
        return f"model raised {exception.group(1)}"
    return _KINDS["error"]


def _call_failure(method: str, rest: str) -> str | None:
    if rest.startswith("model-runner-client error"):
        return f"{method}: the model runner client failed on this model"
    if rest.startswith("undecodable answer"):
        return f"{method}: the model's output could not be decoded"
    code = rest.split(":", 1)[0]
    if code == "MODEL_FAILED":
        return f"{method}: the model raised an exception"
    if code in _NODE_CODES:
        return f"{method}: {code}"
    return None


def public_reason(status: str | None, reason: str | None) -> str | None:
    """The public part of a prediction's stored `status_reason`."""
    if reason is None:
        return None
    if status == PredictionStatus.ABSENT:
        return reason[:PUBLIC_REASON_MAX_CHARS]  # the runner's own words: no answer, not connected
    kind, separator, detail = reason.partition(": ")
    if not separator:
        return _KINDS.get(reason, "the model failed")
    if kind in ("invalid output", "quarantined"):
        return reason[:PUBLIC_REASON_MAX_CHARS]
    if kind == "timeout":
        return f"timeout: {detail}" if _RUNNER_TIMEOUTS.fullmatch(detail) else f"timeout: {_KINDS['timeout']}"
    if kind == "error":
        return f"error: {_error_detail(detail)}"[:PUBLIC_REASON_MAX_CHARS]
    return "the model failed"


def public_score_reason(reason: str | None) -> str | None:
    """The public part of a score's stored `failed_reason`: a FAILED or ABSENT prediction's is
    "<status>: <its status_reason>"; a scoring failure's is the competition's own words."""
    if reason is None:
        return None
    status, separator, detail = reason.partition(": ")
    if separator and status in (PredictionStatus.FAILED, PredictionStatus.ABSENT):
        return f"{status}: {public_reason(status, detail)}"
    return reason[:PUBLIC_REASON_MAX_CHARS]

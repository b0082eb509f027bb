"""The model page's receipt widget (templates/receipt_widget.html, which calls `receipt_widget`:
the model's latest receipt) and the files behind it that the API serves: the page's WebCrypto
check (`/static/receipt.js`: the content security policy allows scripts from the page's own origin
only) and the standalone verifier (`/static/verify_receipt.py`, the challenge package's, for
participants of a competition without one: btc_updown, crypto_density)."""

from __future__ import annotations

from importlib import resources
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import Response

from crunch_assets.receipts import latest_receipt_checkpoint

# how far back the page looks for a checkpoint of scheme 3 that ranks the model
RECEIPT_CHECKPOINTS_SEARCHED = 50

VERIFIER_TEMPLATE = "scaffold/templates/competition/verify_receipt.py.j2"


def verifier_source() -> bytes:
    """verify_receipt.py as `crunch-dagster init` writes it into a challenge package (its template
    holds no template syntax: it renders to itself)."""
    return resources.files("crunch_assets").joinpath(VERIFIER_TEMPLATE).read_bytes()


def build_receipt_files_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    script = resources.files("crunch_assets.api").joinpath("static/receipt.js").read_bytes()
    verifier = verifier_source()

    @router.get("/static/receipt.js")
    def receipt_js() -> Response:
        return Response(script, media_type="text/javascript", headers={"Cache-Control": "public, max-age=3600"})

    @router.get("/static/verify_receipt.py")
    def verify_receipt_py() -> Response:
        return Response(verifier, media_type="text/x-python; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="verify_receipt.py"'})

    return router


def receipt_widget(c, model_id: str) -> dict | None:
    """The receipt the model page checks in the browser: the model's latest (of the newest
    checkpoint of scheme 3 that ranks it), or None."""
    cp = latest_receipt_checkpoint(c.reports.checkpoints(limit=RECEIPT_CHECKPOINTS_SEARCHED), model_id)
    if cp is None:
        return None
    return {"checkpoint_id": cp.id,
            "url": f"/competitions/{c.slug}/checkpoints/{cp.id}/models/{quote(model_id, safe='')}/receipt"}

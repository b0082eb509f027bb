"""The files behind receipts that the API serves: the page's WebCrypto check (`/static/receipt.js`,
loaded by the model page's receipt widget: the content security policy allows scripts from the
page's own origin only) and the standalone verifier (`/static/verify_receipt.py`, the challenge
package's, for participants of a competition without one: btc_updown, crypto_density)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

VERIFIER_TEMPLATE = "scaffold/templates/challenge/package/verify_receipt.py.j2"


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

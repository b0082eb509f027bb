"""What every request and response of the report API goes through before and after the routes.

- Body limits, enforced before anything reads or parses a body (so before authentication): a
  mutation (POST, PUT, PATCH, DELETE) may carry MUTATION_BODY_MAX_BYTES, any other request
  READ_BODY_MAX_BYTES. A declared Content-Length above the limit is refused with 413 before the
  app runs; a body streamed without one is counted as it arrives (starlette's
  RequestBodyLimitMiddleware) and refused as soon as it passes the limit. A 413 closes the
  connection, so the rest of the body is never read.
- Security headers on every response, errors included: a strict Content-Security-Policy (only
  the API's own origin; no inline script or style; no framing), nosniff, no referrer, DENY framing.
  The interactive docs (/docs, /redoc) load Swagger UI and ReDoc from the API itself (the files
  the pinned fastapi-offline package bundles), so they work offline: their own policy names no
  other origin, and allows Swagger UI's one inline script by its hash (see docs_routes).
- Validation errors whose input holds NaN or Infinity are answered 422 (JSON has no such numbers:
  they are shown as strings) instead of failing to render.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import math
import re
from pathlib import Path
from typing import Any, Iterable

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The largest valid mutation body is a 1,000-character note (payouts.NOTE_MAX_CHARS) with a
# 130-character tx hash: 4 KB in UTF-8, about 12.2 KB if every character is \u-escaped.
MUTATION_BODY_MAX_BYTES = 16 * 1024
READ_BODY_MAX_BYTES = 1024
MUTATION_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

STRICT_CSP = ("default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
              "object-src 'none'")
STRICT_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", STRICT_CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
)
_MANAGED = frozenset(name.encode() for name, _ in STRICT_HEADERS)

# Swagger UI and ReDoc, served from the package that bundles them (no CDN: the docs work offline).
DOCS_ASSETS_URL = "/docs-assets"
DOCS_ASSETS_PACKAGE = "fastapi_offline"


class SecurityHeaders:
    """Sets the security headers on every response (replacing any the app set); `csp_by_path`
    gives the few paths with a policy of their own. A 413 also closes the connection."""

    def __init__(self, app: ASGIApp, csp_by_path: dict[str, str] | None = None) -> None:
        self.app = app
        self.csp_by_path = dict(csp_by_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = self.csp_by_path.get(scope.get("path", ""), STRICT_CSP)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _MANAGED]
                headers += [(name.encode(), (csp if name == "content-security-policy" else value).encode())
                            for name, value in STRICT_HEADERS]
                if message["status"] == 413:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimits:
    """The body limit of a request by its method, enforced before the app reads the body. A
    mutation whose path ends with one of `by_suffix`'s keys has that limit instead (the shadow
    entry's model file, when the operator enables it)."""

    def __init__(self, app: ASGIApp, mutation_max_bytes: int = MUTATION_BODY_MAX_BYTES,
                 read_max_bytes: int = READ_BODY_MAX_BYTES, by_suffix: dict[str, int] | None = None) -> None:
        self.limits = {True: mutation_max_bytes, False: read_max_bytes}
        self.by_suffix = dict(by_suffix or {})
        self.limited = {limit: RequestBodyLimitMiddleware(app, max_body_size=limit)
                        for limit in {*self.limits.values(), *self.by_suffix.values()}}
        self.app = app

    def _limit(self, scope: Scope) -> int:
        mutation = scope["method"] in MUTATION_METHODS
        if mutation:
            path = scope.get("path", "")
            for suffix, limit in self.by_suffix.items():
                if path.endswith(suffix):
                    return limit
        return self.limits[mutation]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            # Refused before routing: nothing runs, nothing reads the body.
            response = JSONResponse({"detail": f"request body over {limit} bytes"}, 413)
            await response(scope, receive, send)
            return
        await self.limited[limit](scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed one before we get here
    return None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 answer, with non-finite numbers of the input as strings."""
    return JSONResponse({"detail": _json_safe(jsonable_encoder(error.errors()))}, 422)


def _script_hashes(html: str) -> list[str]:
    inline = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline]


def _policy(directives: Iterable[tuple[str, Iterable[str]]]) -> str:
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives)


def docs_assets_dir() -> Path:
    """Swagger UI's bundle and stylesheet, ReDoc's standalone bundle and a favicon, as the pinned
    fastapi-offline package ships them."""
    return Path(str(importlib.resources.files(DOCS_ASSETS_PACKAGE) / "static"))


def docs_routes(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> dict[str, str]:
    """Serve Swagger UI and ReDoc (the pages FastAPI serves) with their files from the API itself
    under DOCS_ASSETS_URL, and return the pages' policies.

    Each page's policy names no origin but the API's own: its scripts and styles are files of the
    API; Swagger UI's one inline script is allowed by its hash; inline styles are allowed (both
    write styles at run time) and, for ReDoc, its search worker (blob:). No other path gets these
    policies."""
    openapi_url = app.openapi_url or "/openapi.json"
    assets = docs_assets_dir()
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")
    swagger = get_swagger_ui_html(
        openapi_url=openapi_url, title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
    ).body.decode()
    redoc = get_redoc_html(
        openapi_url=openapi_url, title=f"{app.title} - ReDoc", redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png", with_google_fonts=False,
    ).body.decode()
    common = [("default-src", ["'self'"]), ("base-uri", ["'none'"]), ("form-action", ["'self'"]),
              ("frame-ancestors", ["'none'"]), ("object-src", ["'none'"]), ("connect-src", ["'self'"]),
              ("img-src", ["'self'", "data:"]), ("style-src", ["'self'", "'unsafe-inline'"])]
    policies = {
        docs_url: _policy(common + [("script-src", ["'self'", *_script_hashes(swagger)])]),
        redoc_url: _policy(common + [("script-src", ["'self'", *_script_hashes(redoc)]),
                                     ("worker-src", ["'self'", "blob:"])]),
    }

    async def swagger_page(request: Request) -> HTMLResponse:
        return HTMLResponse(swagger)

    async def redoc_page(request: Request) -> HTMLResponse:
        return HTMLResponse(redoc)

    app.add_route(docs_url, swagger_page, include_in_schema=False)
    app.add_route(redoc_url, redoc_page, include_in_schema=False)
    return policies


class HardenedAPI(FastAPI):
    """FastAPI whose whole stack (its own 500 answers included) sits inside the body limits and
    the security headers. `csp_by_path` is set by create_app once the docs routes exist."""

    csp_by_path: dict[str, str] = {}
    body_limit_by_suffix: dict[str, int] = {}

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(BodyLimits(super().build_middleware_stack(), by_suffix=self.body_limit_by_suffix),
                               self.csp_by_path)

"""Bodies are bounded before anything reads them, the two inputs that were server errors are 4xx,
and every response carries the security headers, over real HTTP against the replayed store."""

from __future__ import annotations

import base64
import json
import re
import socket

import httpx
import pytest

from crunch_assets.api.hardening import DOCS_ASSETS_URL, MUTATION_BODY_MAX_BYTES, READ_BODY_MAX_BYTES, STRICT_CSP
from crunch_assets.payouts import NOTE_MAX_CHARS
from tests.api.conftest import LiveServer, auth, report_competition

CONFIRM = "/competitions/btc_updown/checkpoints/1/confirm"


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        sock.settimeout(30)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _assert_security_headers(response: httpx.Response, csp: str = STRICT_CSP) -> None:
    headers = response.headers
    assert headers.get_list("content-security-policy") == [csp], (response.url, headers)
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in csp


# --- body limits ---------------------------------------------------------------------------------

def test_a_declared_body_over_the_limit_is_refused_before_authentication(live_api):
    server, client = live_api
    # no token, a 200 MB body announced: 413 at once (not 401 after reading it), connection closed
    answer = _raw(server.port, f"POST {CONFIRM} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
                               f"Content-Length: {200 * 2**20}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower(), answer[:300]
    # one byte over the mutation limit, with the right token: still 413, and nothing changed
    too_big = {"tx_hash": "0x" + "a" * 64, "note": "n" * MUTATION_BODY_MAX_BYTES}
    response = client.post(CONFIRM, content=json.dumps(too_big), headers={**auth(), "Content-Type": "application/json"})
    assert response.status_code == 413
    _assert_security_headers(response)
    assert client.get("/competitions/btc_updown/checkpoints/1").json()["status"] == "PENDING"


def test_a_streamed_body_is_counted_as_it_arrives(live_api):
    server, _ = live_api
    chunk = b"x" * 4096
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"  # 32 KB, no length
    answer = _raw(server.port, f"POST {CONFIRM} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n".encode() + body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]


def test_reads_take_almost_no_body(live_api):
    server, client = live_api
    response = client.request("GET", "/competitions/btc_updown/leaderboard", content=b"x" * (READ_BODY_MAX_BYTES + 1))
    assert response.status_code == 413
    _assert_security_headers(response)
    assert client.request("GET", "/competitions/btc_updown/leaderboard", content=b"{}").status_code == 200


def test_the_largest_valid_mutation_fits(live_api):
    """A 1,000-character note of astral characters, every one \\u-escaped (12 bytes each), and the
    longest tx hash: under the limit, so it reaches the handler (which refuses only the checkpoint's
    gate here: the note and the hash are fine)."""
    _, client = live_api
    body = json.dumps({"tx_hash": "0x" + "a" * 128, "note": "\U0001F600" * NOTE_MAX_CHARS}, ensure_ascii=True)
    assert len(body) <= MUTATION_BODY_MAX_BYTES < 2 * len(body)  # fits, and the limit is not much more
    anonymous = client.post(CONFIRM, content=body, headers={"Content-Type": "application/json"})
    assert anonymous.status_code == 401  # read, then refused for want of a token
    response = client.post(CONFIRM, content=body, headers={**auth(), "Content-Type": "application/json"})
    assert response.status_code in (200, 409), response.text  # the lifecycle answered, not a limit


# --- the two server errors -----------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    '{"t":"2025-01-07T02:00:00+00:00","i":1e400}',      # inf: was OverflowError, a 500
    '{"t":"2025-01-07T02:00:00+00:00","i":-1e400}',
    '{"t":"2025-01-07T02:00:00+00:00","i":NaN}',
    '{"t":"2025-01-07T02:00:00+00:00","i":1.5}',
    '{"t":"2025-01-07T02:00:00+00:00","i":true}',
    '{"t":"2025-01-07T02:00:00+00:00","i":"7"}',
    '{"t":"2025-01-07T02:00:00+00:00","i":99999999999999999999999}',
    '{"t":1e400,"i":1}',
    '[1, 2]',
    '"just a string"',
])
def test_a_forged_cursor_is_a_422(read_api, raw):
    _, client = read_api
    for path in ("/competitions/btc_updown/predictions", "/competitions/btc_updown/snapshots"):
        response = client.get(path, params={"cursor": _cursor(raw)})
        assert response.status_code == 422, (raw, response.text)
        assert "cursor" in response.json()["detail"]
        _assert_security_headers(response)


def test_a_cursor_the_api_returned_still_pages(read_api):
    _, client = read_api
    first = client.get("/competitions/btc_updown/predictions", params={"limit": 5}).json()
    second = client.get("/competitions/btc_updown/predictions", params={"limit": 5, "cursor": first["next_cursor"]})
    assert second.status_code == 200 and second.json()["predictions"][0]["id"] != first["predictions"][0]["id"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_number_in_a_body_is_a_422(live_api, value):
    _, client = live_api
    for method, path, body in (("POST", CONFIRM, f'{{"tx_hash": {value}}}'),
                               ("PATCH", "/competitions/btc_updown/checkpoints/1/status", f'{{"status": "SUBMITTED", "tx_hash": {value}}}')):
        response = client.request(method, path, content=body, headers={**auth(), "Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert any(error["loc"][-1] == "tx_hash" and error["input"] == str(float(value)) for error in detail), detail
        _assert_security_headers(response)
    assert client.get("/competitions/btc_updown/checkpoints/1").json()["status"] == "PENDING"


# --- security headers ----------------------------------------------------------------------------

def test_every_response_carries_the_security_headers(live_api):
    _, client = live_api
    responses = {
        "read": client.get("/competitions/btc_updown/leaderboard"),
        "health": client.get("/health"),
        "schema": client.get("/openapi.json"),
        "page": client.get("/"),
        "model page": client.get("/page/btc_updown/models/mean_reversion"),
        "stylesheet": client.get("/static/page.css"),
        "export": client.get("/competitions/btc_updown/models/mean_reversion/export",
                             params={"start": "2025-01-07T01:00:00Z", "end": "2025-01-07T02:00:00Z"}),
        "404": client.get("/nowhere"),
        "404 model": client.get("/competitions/btc_updown/models/nobody/scores"),
        "405": client.delete("/competitions/btc_updown/leaderboard"),
        "422": client.get("/competitions/btc_updown/predictions", params={"limit": 0}),
        "401": client.post(CONFIRM, json={"tx_hash": "0x" + "a" * 64}),
        "403": client.post(CONFIRM, json={"tx_hash": "0x" + "a" * 64}, headers=auth("wrong-token")),
        "409": client.patch("/competitions/btc_updown/checkpoints/1/status", json={"status": "PAID"}, headers=auth()),
    }
    expected = {"read": 200, "health": 200, "schema": 200, "page": 200, "model page": 200, "stylesheet": 200,
                "export": 200, "404": 404, "404 model": 404, "405": 405, "422": 422, "401": 401, "403": 403, "409": 409}
    assert {name: r.status_code for name, r in responses.items()} == expected
    for response in responses.values():
        _assert_security_headers(response)
    assert "server" not in responses["read"].headers  # no version advertised


def test_a_server_error_carries_the_security_headers(api_database_url):
    """A store that cannot be reached: the route raises, the app answers 500 itself."""
    from crunch_assets.api import create_app
    from resources.store.database import CrunchDatabase

    competition = report_competition(api_database_url)
    unreachable = type(competition)(competition.spec, competition.accounts,
                                    CrunchDatabase(url="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"))
    with LiveServer(create_app([unreachable], api_token=None, read_env=False)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.get("/competitions/btc_updown/leaderboard")
        assert response.status_code == 500
        _assert_security_headers(response)
        # uvicorn closes a connection whose app raised: ask on a new one
        assert httpx.get(f"{server.url}/health", timeout=60).status_code == 503


def test_the_docs_have_a_policy_of_their_own_that_allows_exactly_what_they_load(live_api):
    """The docs load every file from the API itself (offline: no CDN), and their policy names no
    other origin; the one inline script is allowed by its hash."""
    _, client = live_api
    for path in ("/docs", "/redoc"):
        response = client.get(path)
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        _assert_security_headers(response, csp)
        assert "http:" not in csp and "https:" not in csp and "*" not in csp, csp
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'" and directives["object-src"] == "'none'"
        scripts = directives["script-src"].split()
        assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
        files = re.findall(r'<script src="([^"]+)"', response.text) + re.findall(r'<link[^>]+href="([^"]+)"', response.text)
        assert files and "https://" not in response.text and "http://" not in response.text
        for src in files:
            assert src.startswith(DOCS_ASSETS_URL + "/"), src
            served = client.get(src)
            assert served.status_code == 200 and len(served.content) > 1000, src
            _assert_security_headers(served)
            kind = served.headers["content-type"]
            assert kind.startswith({".js": "text/javascript", ".css": "text/css", ".png": "image/png"}[src[src.rindex("."):]]), kind
        for inline in re.findall(r"<script>(.*?)</script>", response.text, flags=re.DOTALL):
            import hashlib

            digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in scripts
    # the docs' policy is the docs' only; nothing else is served under the assets path
    assert client.get("/openapi.json").headers["content-security-policy"] == STRICT_CSP
    assert client.get("/docs/").headers["content-security-policy"] == STRICT_CSP
    assert client.get(f"{DOCS_ASSETS_URL}/../pyproject.toml").status_code == 404
    assert client.get(f"{DOCS_ASSETS_URL}/%2e%2e/core.py").status_code == 404

"""deploy/nginx/api.conf.template, run by a real nginx (Debian's nginx-light; .ci/run installs it)
in front of the real API: what nginx refuses never reaches the API (too large, too slow, too many
connections or mutations from one address), and every answer, nginx's own included, carries the
security headers."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from crunch_assets.api.hardening import STRICT_CSP
from tests.api.conftest import serve

pytestmark = pytest.mark.system

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NGINX_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
HEADER_TIMEOUT_SECONDS = 10  # client_header_timeout and client_body_timeout of the template
CONNECTIONS_PER_ADDRESS = 32
MUTATION_BURST = 5


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _self_signed(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))


@pytest.fixture(scope="module")
def fronted(module_database_url):
    """(nginx's https URL, nginx's port, the API's LiveServer)."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light; .ci/run installs it)")
    root = Path(tempfile.mkdtemp(prefix="crunch-nginx-api-"))
    (root / "certs").mkdir()
    _self_signed(root / "certs")
    for path in (root, root / "certs"):
        path.chmod(0o755)
    port = _free_port()
    with serve(module_database_url) as api:
        text = (PROJECT_ROOT / "deploy" / "nginx" / "api.conf.template").read_text()
        for name, value in {"CRUNCH_API_UPSTREAM": f"127.0.0.1:{api.port}", "CRUNCH_API_LISTEN": f"127.0.0.1:{port}",
                            "CRUNCH_NGINX_DIR": str(root)}.items():
            text = text.replace("${" + name + "}", value)
        assert "${CRUNCH_" not in text
        (root / "nginx.conf").write_text(
            f"worker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n"
            f"events {{ worker_connections 512; }}\n"
            f"http {{\n access_log off;\n client_body_temp_path {root}/body;\n proxy_temp_path {root}/proxy;\n"
            f" fastcgi_temp_path {root}/fastcgi;\n uwsgi_temp_path {root}/uwsgi;\n scgi_temp_path {root}/scgi;\n"
            f"{text}\n}}\n")
        process = subprocess.Popen([binary, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/health", verify=False, timeout=5)
                break
            except httpx.TransportError:
                if process.poll() is not None:
                    raise AssertionError(f"nginx exited: {process.stdout.read().decode()}") from None
                if time.monotonic() > deadline:
                    raise AssertionError("nginx did not answer") from None
                time.sleep(0.1)  # polling for readiness with a deadline
        yield url, port, api
        process.terminate()
        process.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)


def _requests_seen(api) -> int:
    return api.server.server_state.total_requests


def _tls(port: int, source: str = "127.0.0.1") -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    raw = socket.socket()
    raw.bind((source, 0))
    raw.connect(("127.0.0.1", port))
    return context.wrap_socket(raw)


def _until_closed(sock: ssl.SSLSocket, timeout: float) -> tuple[float, float, bytes]:
    """(when the server answered, when it closed the connection, on the monotonic clock; its answer)."""
    data, answered_at = b"", None
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(65536):
            data += chunk
            answered_at = answered_at or time.monotonic()
    except (OSError, ssl.SSLError):
        pass
    closed_at = time.monotonic()
    return answered_at or closed_at, closed_at, data


def _assert_headers(response: httpx.Response, csp: str) -> None:
    assert response.headers.get_list("content-security-policy") == [csp], response.headers
    for name, value in (("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer"),
                        ("x-frame-options", "DENY")):
        assert response.headers.get_list(name) == [value], (name, response.headers)


def test_reads_pass_with_the_api_headers_once(fronted):
    url, _, _ = fronted
    with httpx.Client(base_url=url, verify=False, timeout=30) as client:
        board = client.get("/competitions/btc_updown/leaderboard")
        assert board.status_code == 200 and board.json()["entries"]
        _assert_headers(board, STRICT_CSP)
        assert board.headers["server"] == "nginx"  # no version
        docs = client.get("/docs")  # its own policy, naming no other origin: its files come through nginx too
        csp = docs.headers["content-security-policy"]
        assert docs.status_code == 200 and "'sha256-" in csp and "https:" not in csp and "http:" not in csp
        bundle = client.get("/docs-assets/swagger-ui-bundle.js")
        assert bundle.status_code == 200 and len(bundle.content) > 100_000
        _assert_headers(bundle, STRICT_CSP)
        assert client.get("/nowhere").status_code == 404


def test_a_large_body_is_refused_by_nginx_before_the_api(fronted):
    url, port, api = fronted
    seen = _requests_seen(api)
    response = httpx.post(f"{url}/reports/checkpoints/1/confirm", content=b"x" * (1024 * 1024), verify=False, timeout=30)
    assert response.status_code == 413 and "nginx" in response.text
    _assert_headers(response, NGINX_CSP)
    sock = _tls(port)
    sock.sendall(b"POST /reports/checkpoints/1/confirm HTTP/1.1\r\nHost: api\r\nContent-Length: 209715200\r\n\r\n")
    _, _, answer = _until_closed(sock, 30)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert _requests_seen(api) == seen


def test_mutations_are_rate_limited_per_address(fronted):
    url, _, api = fronted
    with httpx.Client(base_url=url, verify=False, timeout=30) as client:
        answers = [client.post("/reports/checkpoints/1/confirm", json={"tx_hash": "0x" + "a" * 64})
                   for _ in range(MUTATION_BURST + 6)]
        codes = [a.status_code for a in answers]
        assert codes[:MUTATION_BURST + 1] == [401] * (MUTATION_BURST + 1), codes  # the API's: no token
        assert set(codes[MUTATION_BURST + 1:]) == {429}, codes                   # nginx's
        for answer in answers[MUTATION_BURST + 1:]:
            _assert_headers(answer, NGINX_CSP)
        # reads are not mutations
        assert all(client.get("/health").status_code == 200 for _ in range(10))


@pytest.mark.timing
def test_slow_clients_are_cut_off_by_nginx_and_never_reach_the_api(fronted):
    """From one address: a request head trickled a byte a second, and 40 requests whose body never
    comes. nginx holds 32 of the latter (its per-address connection limit; 8 get 429 at once),
    closes all of them after its timeouts, and the API sees none; a normal client is served."""
    url, port, api = fronted
    seen = _requests_seen(api)
    attacker = "127.0.0.3"
    slow_head = _tls(port, attacker)
    opened_at = [time.monotonic()]
    stop = threading.Event()

    def trickle() -> None:
        for byte in b"GET /health HTTP/1.1\r\nHost: api\r\nX-Slow: " + b"a" * 100:
            if stop.wait(1.0):
                return
            try:
                slow_head.send(bytes([byte]))
            except (OSError, ssl.SSLError):
                return

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    bodiless = []
    for _ in range(CONNECTIONS_PER_ADDRESS + 8):
        sock = _tls(port, attacker)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\nContent-Length: 1000\r\n\r\n")
        bodiless.append(sock)
        opened_at.append(time.monotonic())
    results: dict[int, tuple[float, bytes]] = {}

    def watch(index: int, sock: ssl.SSLSocket) -> None:
        results[index] = _until_closed(sock, HEADER_TIMEOUT_SECONDS + 10)

    watchers = [threading.Thread(target=watch, args=(i, s)) for i, s in enumerate([slow_head, *bodiless])]
    for watcher in watchers:
        watcher.start()
    assert httpx.get(f"{url}/health", verify=False, timeout=10).status_code == 200  # others are served
    for watcher in watchers:
        watcher.join()
    stop.set()
    trickler.join()
    for sock in [slow_head, *bodiless]:
        sock.close()
    # seconds from each connection's opening to nginx's answer and to its closing
    after = {i: (answered - opened_at[i], closed - opened_at[i], answer) for i, (answered, closed, answer) in results.items()}
    head_answered, head_closed, head_answer = after[0]
    assert HEADER_TIMEOUT_SECONDS - 1 <= head_closed < HEADER_TIMEOUT_SECONDS + 4, head_closed
    # nginx logs a 408 and closes without a word
    limited = [r for i, r in after.items() if i > 0 and r[2].startswith(b"HTTP/1.1 429")]
    timed_out = [r for i, r in after.items() if i > 0 and r[2] == b""]
    assert len(limited) == 8 and len(timed_out) == CONNECTIONS_PER_ADDRESS, {r[2][:12] for r in after.values()}
    assert head_answer == b"" and all(answered < 2 for answered, _, _ in limited)
    assert all(HEADER_TIMEOUT_SECONDS - 1 <= closed < HEADER_TIMEOUT_SECONDS + 4 for _, closed, _ in timed_out)
    assert _requests_seen(api) == seen + 1  # only the normal client's

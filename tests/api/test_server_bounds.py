"""The API server as `crunch-dagster api` runs it (a subprocess on a copy of the replayed store),
attacked over real sockets: an anonymous 200 MB body (declared, or streamed without a length),
five at once, slow-loris clients trickling their request head or body a byte at a time, clients
that connect and say nothing. The server's memory (RSS) and file descriptors are read with psutil
while it is attacked, and a normal client is served throughout."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.api.conftest import TOKEN, role_env

BODY_BYTES = 200 * 1024 * 1024
REQUEST_TIMEOUT_SECONDS = 2.0
MAX_CONNECTIONS = 64
PER_CLIENT = 16
ATTACKER = "127.0.0.2"  # loopback too, but another address than the normal client's 127.0.0.1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ApiProcess:
    def __init__(self, database_url: str, tmp_path: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "api.log"
        command = [str(Path(sys.executable).with_name("crunch-dagster")), "api", "--port", str(self.port),
                   "--log-level", "warning", "--max-connections", str(MAX_CONNECTIONS),
                   "--max-connections-per-client", str(PER_CLIENT),
                   "--request-timeout-seconds", str(REQUEST_TIMEOUT_SECONDS)]
        # every role's URL on the module's copy of the store, as a deployment configures them
        env = {**os.environ, **role_env(database_url), "CRUNCH_API_TOKEN": TOKEN}
        self.process = subprocess.Popen(command, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.process.pid)
        try:
            self._wait_healthy(deadline=time.monotonic() + 60)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, deadline: float) -> None:
        health = None
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"the API exited: {self.log.read_text()}")
            try:
                health = httpx.get(f"{self.url}/health", timeout=5)
                if health.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the API did not answer: {health.text if health is not None else 'no answer'}; "
                                     f"its log: {self.log.read_text()}")
            time.sleep(0.1)  # polling for readiness with a deadline

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def fds(self) -> int:
        return self.ps.num_fds()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def api_process(module_database_url, tmp_path_factory):
    api = ApiProcess(module_database_url, tmp_path_factory.mktemp("api"))
    yield api
    api.stop()


class Sampler:
    """The largest value of `measure()` seen while the block runs (every 10 ms, in a thread)."""

    def __init__(self, measure):
        self.measure, self.peak, self._stop = measure, measure(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.measure())

    def __enter__(self) -> "Sampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.measure())


def _read_response(sock: socket.socket, timeout: float = 30) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return data


def _post_huge_body(port: int, chunked: bool) -> tuple[bytes, int]:
    """POST a 200 MB body to a mutation without a token; return (the answer, bytes the client got
    to send before the server closed the connection)."""
    sock = socket.create_connection(("127.0.0.1", port))
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BODY_BYTES}"
    sock.sendall(f"POST /reports/checkpoints/1/confirm HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
                 f"{framing}\r\n\r\n".encode())
    piece = b"x" * 65536
    if chunked:
        piece = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sent = 0
    sock.settimeout(30)
    try:
        while sent < BODY_BYTES:
            sent += sock.send(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = _read_response(sock)
    sock.close()
    return answer, sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_anonymous_200_mb_body_is_refused_early_and_costs_no_memory(api_process, chunked):
    before = api_process.rss_mb()
    with Sampler(api_process.rss_mb) as rss:
        answer, sent = _post_huge_body(api_process.port, chunked)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"connection: close" in answer.lower() and b"content-security-policy" in answer.lower()
    # the server closed the connection: the client could not push more than the socket buffers hold
    assert sent < 16 * 2**20, sent
    assert rss.peak - before < 25, f"RSS {before:.0f} MB -> peak {rss.peak:.0f} MB"  # it was +590 MB


def test_five_200_mb_bodies_at_once_cost_no_memory(api_process):
    before = api_process.rss_mb()
    answers: list[bytes] = []
    with Sampler(api_process.rss_mb) as rss:
        threads = [threading.Thread(target=lambda i=i: answers.append(_post_huge_body(api_process.port, i % 2 == 1)[0]))
                   for i in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(answers) == 5 and all(a.startswith(b"HTTP/1.1 413") for a in answers), [a[:40] for a in answers]
    assert rss.peak - before < 25, f"RSS {before:.0f} MB -> peak {rss.peak:.0f} MB"  # it was +2.1 GB
    assert httpx.get(f"{api_process.url}/health", timeout=10).status_code == 200


def _trickler(sockets: list[socket.socket], stop: threading.Event, payload: bytes) -> None:
    """Send one more byte of `payload` on every open socket every 100 ms."""
    position = 0
    while not stop.wait(0.1) and position < len(payload):
        for sock in sockets:
            try:
                sock.send(payload[position:position + 1])
            except OSError:
                pass
        position += 1


def _watch_closes(sockets: list[socket.socket], started: float, limit: float) -> list[tuple[float, bytes]]:
    """For each socket, when the server closed it (seconds since `started`; inf if not within
    `limit` s) and what it sent before."""
    selector = selectors.DefaultSelector()
    received = {sock: b"" for sock in sockets}
    closed_at = {sock: float("inf") for sock in sockets}
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    open_count = len(sockets)
    while open_count and time.monotonic() - started < limit:
        for key, _ in selector.select(timeout=0.05):
            sock = key.fileobj
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                received[sock] += chunk
                continue
            closed_at[sock] = time.monotonic() - started
            selector.unregister(sock)
            open_count -= 1
    selector.close()
    return [(closed_at[sock], received[sock]) for sock in sockets]


@pytest.mark.timing
@pytest.mark.parametrize("what", ["head", "body", "nothing"])
def test_slow_clients_are_cut_off_and_others_served(api_process, what):
    """200 connections from one address trickle a request (its head, or its body after a complete
    head) a byte every 100 ms, or send nothing: PER_CLIENT of them are held until the request
    timeout, then answered 408 and closed; the others are answered 503 at once; the server's open
    file descriptors stay bounded and a normal client is served all along."""
    baseline_fds = api_process.fds()
    payloads = {
        "head": b"GET /reports/leaderboard HTTP/1.1\r\nHost: api\r\nX-Slow: " + b"a" * 1000,
        "body": b"POST /reports/checkpoints/1/confirm HTTP/1.1\r\nHost: api\r\nContent-Length: 1000\r\n\r\n",
        "nothing": b"",
    }
    started = time.monotonic()
    sockets = []
    for _ in range(200):
        sock = socket.socket()
        sock.bind((ATTACKER, 0))
        sock.connect(("127.0.0.1", api_process.port))
        sockets.append(sock)
    head = payloads[what]
    if what == "body":
        for sock in sockets:
            sock.send(head)
        head = b"{" + b" " * 998 + b"}"  # then the body, a byte at a time
    stop = threading.Event()
    trickle = threading.Thread(target=_trickler, args=(sockets, stop, head), daemon=True)
    trickle.start()
    with Sampler(api_process.fds) as fds:
        served = []
        while time.monotonic() - started < REQUEST_TIMEOUT_SECONDS * 0.8:
            served.append(httpx.get(f"{api_process.url}/reports/leaderboard", timeout=10).status_code)
        closes = _watch_closes(sockets, started, REQUEST_TIMEOUT_SECONDS + 10)
    stop.set()
    trickle.join()
    for sock in sockets:
        sock.close()
    assert served and set(served) == {200}, served
    refused = [(at, answer) for at, answer in closes if answer.startswith(b"HTTP/1.1 503")]
    # a client that sent part of a request gets 408; one that sent nothing is just closed
    timed_out = [(at, answer) for at, answer in closes if answer == b"" or answer.startswith(b"HTTP/1.1 408")]
    assert len(refused) == 200 - PER_CLIENT and len(timed_out) == PER_CLIENT, [a[:20] for _, a in closes]
    assert all((answer == b"") == (what == "nothing") for _, answer in timed_out)
    assert all(at < REQUEST_TIMEOUT_SECONDS for at, _ in refused)
    assert all(REQUEST_TIMEOUT_SECONDS * 0.9 <= at < REQUEST_TIMEOUT_SECONDS + 3 for at, _ in timed_out), \
        sorted(at for at, _ in timed_out)
    assert all(b"content-security-policy" in answer.lower() for _, answer in refused + timed_out if answer)
    # at most PER_CLIENT attackers' descriptors at once (plus the normal client's and a few in passing)
    assert fds.peak - baseline_fds <= PER_CLIENT + 8, (baseline_fds, fds.peak)
    assert api_process.fds() <= baseline_fds + 2


def test_many_attacking_addresses_are_bounded_by_max_connections(api_process):
    """Four connections from each of 100 addresses, each trickling its head: at most
    MAX_CONNECTIONS are ever open, the rest answered 503 at once; when the slow ones time out the
    server answers again."""
    baseline_fds = api_process.fds()
    sockets = []
    started = time.monotonic()
    for index in range(400):
        sock = socket.socket()
        sock.bind((f"127.0.1.{index // 4 + 1}", 0))
        sock.connect(("127.0.0.1", api_process.port))
        sockets.append(sock)
    stop = threading.Event()
    trickle = threading.Thread(target=_trickler, args=(sockets, stop, b"GET /health HTTP/1.1\r\nX: " + b"a" * 100),
                               daemon=True)
    trickle.start()
    with Sampler(api_process.fds) as fds:
        closes = _watch_closes(sockets, started, REQUEST_TIMEOUT_SECONDS + 10)
    stop.set()
    trickle.join()
    for sock in sockets:
        sock.close()
    statuses = [answer[:12] for _, answer in closes]
    assert statuses.count(b"HTTP/1.1 408") <= MAX_CONNECTIONS
    assert statuses.count(b"HTTP/1.1 408") + statuses.count(b"HTTP/1.1 503") == 400, set(statuses)
    assert fds.peak - baseline_fds <= MAX_CONNECTIONS + 8, (baseline_fds, fds.peak)
    assert httpx.get(f"{api_process.url}/health", timeout=10).status_code == 200


def test_a_request_that_arrives_in_time_is_served_over_a_slow_link(api_process):
    """Not every slow client is an attacker: a request sent in a few pieces well within the
    timeout, then a second one on the same connection, are both answered."""
    with socket.create_connection(("127.0.0.1", api_process.port)) as sock:
        for piece in (b"GET /health HTTP/1.1\r\n", b"Host: api\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(REQUEST_TIMEOUT_SECONDS / 10)  # a slow link, not synchronisation
        first = sock.recv(65536)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        second = _read_response(sock)
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200"), (first[:40], second[:40])


def test_an_oversized_head_is_refused(api_process):
    """A head still incomplete past 16 KB is refused (h11's limit: a complete head that arrives in
    one read is parsed, so a head never takes more than 16 KB plus one read)."""
    with socket.create_connection(("127.0.0.1", api_process.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\n")
        try:
            for _ in range(64):
                sock.sendall(b"X-Big: " + b"a" * 1000 + b"\r\n")
                time.sleep(0.002)  # separate reads on the server side
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 400") and b"content-security-policy" in answer.lower(), answer[:200]


@pytest.mark.parametrize(("option", "value"), [("--max-connections", "0"), ("--max-connections-per-client", "-1"),
                                               ("--request-timeout-seconds", "0"), ("--keep-alive-seconds", "0")])
def test_the_api_command_refuses_a_bound_that_is_given_and_wrong(option, value):
    from click.testing import CliRunner

    from crunch_assets.cli import main

    result = CliRunner().invoke(main, ["api", option, value])
    assert result.exit_code == 2 and option in result.output, result.output

"""How the report API is served: uvicorn (h11) with bounds on what a client can hold.

uvicorn bounds the idle time between two requests of a connection (`timeout_keep_alive`) and the
size of a request head (`h11_max_incomplete_event_size`), but nothing bounds how long a request
takes to arrive: a client that sends nothing, or one byte of its head every few seconds, holds its
connection (and a file descriptor) for as long as it likes, and `limit_concurrency` counts such a
connection only once its head is complete (uvicorn issue #157). `guarded_protocol` adds what is
missing, in the protocol where the bytes arrive:

- a request must arrive whole (request line, headers and body) within `request_timeout_seconds`
  of the moment the server starts waiting for it (the connection opened, or the previous response
  ended); otherwise the connection is closed, after a 408 when part of a request had arrived;
- at most `max_connections` connections are open, at most `max_connections_per_client` from one
  address: a connection beyond either is answered 503 and closed as soon as it is accepted, so
  its file descriptor is released at once.

Every response the server writes itself (408, 503, uvicorn's 400) carries the same security
headers as the application's (crunch_assets/api/hardening.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from crunch_assets.api.hardening import STRICT_HEADERS


@dataclass(frozen=True)
class ServerLimits:
    """The API server's bounds (`crunch-dagster api` options of the same names)."""

    max_connections: int = 256
    # None: no limit per address (behind a proxy every connection comes from the proxy's address).
    max_connections_per_client: int | None = 32
    request_timeout_seconds: float = 10.0
    keep_alive_seconds: int = 5
    max_head_bytes: int = 16 * 1024
    backlog: int = 256

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")
        if self.max_connections_per_client is not None and self.max_connections_per_client < 1:
            raise ValueError(f"max_connections_per_client must be at least 1 (or None), got {self.max_connections_per_client}")
        if not self.request_timeout_seconds > 0:
            raise ValueError(f"request_timeout_seconds must be positive, got {self.request_timeout_seconds}")
        if self.keep_alive_seconds < 1:
            raise ValueError(f"keep_alive_seconds must be at least 1, got {self.keep_alive_seconds}")


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = message.encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: text/plain; charset=utf-8",
            f"content-length: {len(body)}", "connection: close"]
    head += [f"{name}: {value}" for name, value in STRICT_HEADERS]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


REQUEST_TIMEOUT_RESPONSE = _raw_response(408, "Request Timeout", "the request did not arrive in time")
TOO_MANY_CONNECTIONS_RESPONSE = _raw_response(503, "Service Unavailable", "too many connections")
INVALID_REQUEST_RESPONSE = _raw_response(400, "Bad Request", "Invalid HTTP request received.")
# Their side is done with the request: it arrived whole (MUST_CLOSE: whole, and the last one).
_REQUEST_RECEIVED = (h11.DONE, h11.MUST_CLOSE)


def guarded_protocol(limits: ServerLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on receiving each request and caps on connections."""

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self._over_limit():
                transport.write(TOO_MANY_CONNECTIONS_RESPONSE)
                transport.close()
                self.connections.discard(self)  # counted no more, even before connection_lost
                return
            self._arm()  # a connection that never says anything is closed too

        def _over_limit(self) -> bool:
            if len(self.connections) > limits.max_connections:
                return True
            if limits.max_connections_per_client is None or not self.client:
                return False
            host = self.client[0]
            same = sum(1 for c in self.connections if (getattr(c, "client", None) or ("",))[0] == host)
            return same > limits.max_connections_per_client

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()  # the server waits for the next request from now on

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            self.transport.write(INVALID_REQUEST_RESPONSE)
            self.transport.close()

        def _follow(self) -> None:
            if self.transport.is_closing() or self.conn.their_state in _REQUEST_RECEIVED:
                self._disarm()
            elif self._deadline is None:
                self._arm()  # never extended: the deadline counts from the start of the wait

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(limits.request_timeout_seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.conn.their_state in _REQUEST_RECEIVED:
                return
            cycle = self.cycle
            if cycle is not None and cycle.response_started and not cycle.response_complete:
                # The app answered before reading the whole body and is still writing: the
                # connection closes after this response (h11 will not start another cycle).
                cycle.keep_alive = False
                return
            if self.conn.their_state is h11.SEND_BODY or self.conn.trailing_data[0]:
                # Part of a request arrived (an idle connection is closed without a word, as
                # nginx does: a client may be sending its next request right now).
                self.transport.write(REQUEST_TIMEOUT_RESPONSE)
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the app's late answer, if any, is dropped
                cycle.message_event.set()
            self.transport.close()

    return GuardedH11Protocol


def server_config(app: Any, limits: ServerLimits = ServerLimits(), **options: Any):
    """The uvicorn configuration of the API (`options`: host, port, log_level, ...)."""
    import uvicorn

    return uvicorn.Config(
        app,
        http=guarded_protocol(limits),
        ws="none",  # the API has no websocket: an upgrade is an ordinary (refused) request
        timeout_keep_alive=limits.keep_alive_seconds,
        h11_max_incomplete_event_size=limits.max_head_bytes,
        # 503 for a request arriving while every allowed connection is taken (a backstop: the
        # protocol already refuses connections beyond max_connections when they are accepted).
        limit_concurrency=limits.max_connections,
        backlog=limits.backlog,
        server_header=False,
        **options,
    )


def run_server(app: Any, host: str, port: int, log_level: str = "info", limits: ServerLimits = ServerLimits()) -> None:
    import uvicorn

    uvicorn.Server(server_config(app, limits, host=host, port=port, log_level=log_level)).run()

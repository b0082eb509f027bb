"""Loopback stand-ins for CrunchDAO's model orchestrator and its model nodes (no Docker, no mocks).

- FakeModelNode: a real grpc.server on 127.0.0.1:<free port> serving DynamicSubclassService through
  the servicer base class model-runner-client ships, hosting one Python model object. It behaves like
  the model-side server, crunch-model-runner 0.4.2 (which cannot share our venv: it pins
  protobuf < 6): Setup(className "module.ClassName") accepts the model only if it subclasses that
  base class (else BAD_IMPLEMENTATION); Call answers typed variants, reports a raising model or an
  unencodable return value as MODEL_FAILED and an unknown method as BAD_IMPLEMENTATION; one call at
  a time (a concurrent call is refused with RESOURCE_EXHAUSTED "Server busy"); a gRPC health
  service answers on its own threads, as the client health-checks timed-out models.
- FakeOrchestrator: a websockets server at ws://127.0.0.1:<port>/<crunch_id> that sends the `init`
  event on connection, pushes `update` events on demand and records `report_failure` messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import grpc
import websockets
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from model_runner_client.grpc.generated import dynamic_subclass_pb2_grpc
from model_runner_client.grpc.generated.commons_pb2 import Status, Variant, VariantType
from model_runner_client.grpc.generated.dynamic_subclass_pb2 import (
    CallRequest,
    CallResponse,
    RestResponse,
    SetupRequest,
    SetupResponse,
)
from model_runner_client.utils.datatype_transformer import decode_data, detect_data_type, encode_data

LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------------------------------
# Participant models
# --------------------------------------------------------------------------------------------------


class FakeModelBase:
    """The participant-facing base class of the fake competition."""

    def tick(self, data: Any) -> None:
        pass

    def predict(self, subject: str, horizon_seconds: int, step_seconds: int) -> Any:
        raise NotImplementedError


FAKE_MODEL_BASE_CLASS = f"{FakeModelBase.__module__}:FakeModelBase"


class AnsweringModel(FakeModelBase):
    def __init__(self, value: float = 0.5, delay_seconds: float = 0.0) -> None:
        self.value = value
        self.delay_seconds = delay_seconds
        self.ticks: list[Any] = []

    def tick(self, data: Any) -> None:
        self.ticks.append(data)

    def predict(self, subject: str, horizon_seconds: int, step_seconds: int) -> dict[str, Any]:
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        return {
            "value": self.value,
            "subject": subject,
            "horizon_seconds": horizon_seconds,
            "step_seconds": step_seconds,
            "ticks_seen": len(self.ticks),
        }


class RaisingModel(FakeModelBase):
    def __init__(self, message: str = "the model exploded") -> None:
        self.message = message

    def predict(self, subject: str, horizon_seconds: int, step_seconds: int) -> Any:
        raise RuntimeError(self.message)


class HangingModel(FakeModelBase):
    """Sleeps past any sensible timeout; release() (called when its node stops) wakes it."""

    def __init__(self, hang_seconds: float = 30.0) -> None:
        self.hang_seconds = hang_seconds
        self._released = threading.Event()

    def predict(self, subject: str, horizon_seconds: int, step_seconds: int) -> dict[str, Any]:
        self._released.wait(self.hang_seconds)
        return {"value": 0.5}

    def release(self) -> None:
        self._released.set()


class FixedAnswerModel(FakeModelBase):
    """Returns the given object as is: numpy scalars, sets, anything a broken model returns."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def predict(self, subject: str, horizon_seconds: int, step_seconds: int) -> Any:
        return self.answer


@dataclass(frozen=True)
class RawVariant:
    """Returned by a model, sent on the wire untouched: simulates a node answering bytes that do not
    match their declared type (the real server cannot produce these, a broken node can)."""

    type: int
    value: bytes


class CorruptAnswerModel(FixedAnswerModel):
    def __init__(self) -> None:
        super().__init__(RawVariant(VariantType.JSON, b"\xff{definitely not json"))


class UnrelatedModel:
    """Does not subclass the competition's base class: the node refuses it at Setup."""

    def predict(self, subject: str, horizon_seconds: int, step_seconds: int) -> dict[str, Any]:
        return {"value": 0.5}


# --------------------------------------------------------------------------------------------------
# Model node
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedCall:
    method: str
    args: list[Any]
    kwargs: dict[str, Any]


def _status(code: str, message: str = "") -> Status:
    return Status(code=code, message=message)


class HostedModel:
    """crunch-model-runner's handling of one model, without the transport (shared by the threaded
    node below and the asyncio nodes of the benchmark)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.instance: Any = None
        self.setup_class_names: list[str] = []
        self.received_calls: list[ReceivedCall] = []
        self._method_parameters: dict[str, list[str]] = {}

    def setup(self, request: SetupRequest) -> SetupResponse:
        class_name = request.className.strip()
        self.setup_class_names.append(class_name)
        if self.instance is not None:
            return SetupResponse(status=_status("SUCCESS", "Instance already exists"))
        if not class_name:
            return SetupResponse(status=_status("INVALID_ARGUMENT", "class_name cannot be empty"))
        module_name, _, base_name = class_name.rpartition(".")
        if not module_name:
            return SetupResponse(status=_status("SETUP_FAILED", f"Invalid class name '{class_name}'. Use 'module.ClassName' format."))
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            return SetupResponse(status=_status("BAD_IMPLEMENTATION", str(error)))
        base_class = getattr(module, base_name, None)
        if not inspect.isclass(base_class):
            return SetupResponse(status=_status("SETUP_FAILED", f"Class '{base_name}' not found in module '{module_name}'."))
        if not isinstance(self.model, base_class):
            return SetupResponse(status=_status("BAD_IMPLEMENTATION", f"No Inherited class found from {base_class}."))
        self.instance = self.model
        return SetupResponse(status=_status("SUCCESS", "Instance created successfully"))

    def call(self, request: CallRequest) -> CallResponse:
        if self.instance is None:
            return CallResponse(status=_status("FAILED_PRECONDITION", "Setup has not been called yet"))
        method_name = request.methodName
        if not method_name:
            return CallResponse(status=_status("INVALID_ARGUMENT", "methodName cannot be empty"))
        method = getattr(self.instance, method_name, None)
        if method is None:
            return CallResponse(status=_status(
                "BAD_IMPLEMENTATION", f'Method "{method_name}" not found in class "{type(self.instance).__name__}"'
            ))
        try:
            args = [decode_data(arg.data.value, arg.data.type) for arg in sorted(request.methodArguments, key=lambda arg: arg.position)]
            kwargs = {kwarg.keyword: decode_data(kwarg.data.value, kwarg.data.type) for kwarg in request.methodKwArguments}
            self.received_calls.append(ReceivedCall(method_name, args, kwargs))
            # Like the real node: keyword arguments the method does not declare are dropped.
            parameters = self._method_parameters.setdefault(method_name, list(inspect.signature(method).parameters))
            accepted_kwargs = {key: value for key, value in kwargs.items() if key in parameters[len(args):]}
            result = method(*args, **accepted_kwargs)
            if result is None:
                return CallResponse(status=_status("SUCCESS"))
            if isinstance(result, RawVariant):
                return CallResponse(status=_status("SUCCESS"), methodResponse=Variant(type=result.type, value=result.value))
            result_type = detect_data_type(result)
            encoded = Variant(type=result_type, value=encode_data(result_type, result))
            return CallResponse(status=_status("SUCCESS"), methodResponse=encoded)
        except Exception as error:
            return CallResponse(status=_status("MODEL_FAILED", f"The model raised an exception: {error}"))

    def reset(self) -> RestResponse:
        self.instance = None
        return RestResponse(status=_status("SUCCESS", "Instance successfully reset"))


class _ExclusiveServicer(dynamic_subclass_pb2_grpc.DynamicSubclassServiceServicer):
    def __init__(self, hosted: HostedModel) -> None:
        self.hosted = hosted
        self._busy = threading.Lock()  # per node (the real server's lock is per process: one model each)

    @contextlib.contextmanager
    def _exclusive(self, context: grpc.ServicerContext) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Server busy")
        try:
            yield
        finally:
            self._busy.release()

    def Setup(self, request: SetupRequest, context: grpc.ServicerContext) -> SetupResponse:
        with self._exclusive(context):
            return self.hosted.setup(request)

    def Call(self, request: CallRequest, context: grpc.ServicerContext) -> CallResponse:
        with self._exclusive(context):
            return self.hosted.call(request)

    def Rest(self, request: Any, context: grpc.ServicerContext) -> RestResponse:
        with self._exclusive(context):
            return self.hosted.reset()


class FakeModelNode:
    """One participant model served over gRPC on loopback."""

    def __init__(
        self,
        model_id: str,
        model: Any,
        *,
        model_name: str | None = None,
        cruncher_id: str | None = None,
        cruncher_name: str | None = None,
        deployment_id: str | None = None,
        host: str = LOOPBACK,
    ) -> None:
        self.model_id = model_id
        self.host = host  # the address it listens on and is announced at
        self.model = model
        self.model_name = model_name or f"model-{model_id}"
        self.cruncher_id = cruncher_id or f"cruncher-{model_id}"
        self.cruncher_name = cruncher_name or f"Cruncher {model_id}"
        self.deployment_id = deployment_id or f"deployment-{uuid.uuid4().hex[:8]}"
        self.hosted = HostedModel(model)
        self.port: int | None = None
        self._server: grpc.Server | None = None

    def start(self) -> FakeModelNode:
        # Two workers, as the real node: one call runs, a concurrent one is refused "Server busy".
        server = grpc.server(ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"node-{self.model_id}"))
        health_servicer = health.HealthServicer(
            experimental_non_blocking=True, experimental_thread_pool=ThreadPoolExecutor(max_workers=1)
        )
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        dynamic_subclass_pb2_grpc.add_DynamicSubclassServiceServicer_to_server(_ExclusiveServicer(self.hosted), server)
        self.port = server.add_insecure_port(f"{self.host}:0")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        release = getattr(self.model, "release", None)
        if callable(release):
            release()
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    @property
    def received_calls(self) -> list[ReceivedCall]:
        return list(self.hosted.received_calls)

    def announcement(self, state: str = "RUNNING") -> dict[str, Any]:
        """This node as the orchestrator lists it in `init` / `update` events."""
        return announcement(
            self.model_id, self.host, self.port, state=state, deployment_id=self.deployment_id,
            model_name=self.model_name, cruncher_id=self.cruncher_id, cruncher_name=self.cruncher_name,
        )


def announcement(
    model_id: str,
    ip: str,
    port: int | None,
    *,
    state: str = "RUNNING",
    deployment_id: str,
    model_name: str,
    cruncher_id: str,
    cruncher_name: str,
) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "deployment_id": deployment_id,
        "ip": ip,
        "port": port,
        "state": state,
        "infos": {"model_name": model_name, "cruncher_id": cruncher_id, "cruncher_name": cruncher_name},
    }


# --------------------------------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------------------------------


@dataclass
class _OrchestratorState:
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    connections: set[Any] = field(default_factory=set)
    failure_reports: list[dict[str, Any]] = field(default_factory=list)
    other_messages: list[Any] = field(default_factory=list)
    connections_served: int = 0


class FakeOrchestrator:
    """The orchestrator's WebSocket, on its own event loop in a background thread."""

    def __init__(self, crunch_id: str = "test-crunch", host: str = LOOPBACK, port: int = 0) -> None:
        self.crunch_id = crunch_id
        self.host = host
        self.port: int | None = None
        self._listen_port = port  # 0: any free one
        self._state = _OrchestratorState()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeOrchestrator:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-orchestrator", daemon=True)
        self._thread.start()

        async def serve() -> Any:
            return await websockets.serve(self._serve_connection, self.host, self._listen_port)

        self._server = self._on_loop(serve())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shut_down() -> None:
            self._server.close()
            await self._server.wait_closed()

        with contextlib.suppress(Exception):
            self._on_loop(shut_down())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._loop = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/{self.crunch_id}"

    # ---- what it announces -------------------------------------------------------------------

    def announce(self, *entries: dict[str, Any]) -> None:
        """Sets entries listed in the `init` event of the next connections (pushes nothing)."""
        with self._lock:
            for entry in entries:
                self._state.entries[str(entry["model_id"])] = entry

    def push_update(self, *entries: dict[str, Any]) -> None:
        """Records the entries and sends them as one `update` event to every connected client."""
        self.announce(*entries)
        message = json.dumps({"event": "update", "data": list(entries)})

        async def broadcast() -> None:
            for connection in list(self._state.connections):
                with contextlib.suppress(websockets.ConnectionClosed):
                    await connection.send(message)

        self._on_loop(broadcast())

    # ---- what it received --------------------------------------------------------------------

    @property
    def failure_reports(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._state.failure_reports)

    @property
    def connected_clients(self) -> int:
        return len(self._state.connections)

    @property
    def connections_served(self) -> int:
        return self._state.connections_served

    def wait_for_failure_reports(self, count: int, timeout_seconds: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_seconds
        while len(self.failure_reports) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.failure_reports

    # ---- server side -------------------------------------------------------------------------

    def _on_loop(self, coroutine: Any, timeout_seconds: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_seconds)

    async def _serve_connection(self, connection: Any) -> None:
        if connection.request.path != f"/{self.crunch_id}":
            await connection.close(code=1008, reason="unknown crunch")
            return
        self._state.connections.add(connection)
        self._state.connections_served += 1
        try:
            with self._lock:
                entries = list(self._state.entries.values())
            await connection.send(json.dumps({"event": "init", "data": entries}))
            async for message in connection:
                event = json.loads(message)
                with self._lock:
                    if event.get("event") == "report_failure":
                        self._state.failure_reports.extend(event.get("data") or [])
                    else:
                        self._state.other_messages.append(event)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._state.connections.discard(connection)

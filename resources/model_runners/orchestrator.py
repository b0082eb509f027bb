"""Participant models run by CrunchDAO's model orchestrator, called through model-runner-client.

The orchestrator announces the models over a WebSocket (ws://host:port/<crunch_id>, events `init` and
`update`); each model is a gRPC node serving DynamicSubclassService (Setup(className) once, then
Call(methodName, args, kwargs)). model-runner-client's DynamicSubclassModelConcurrentRunner keeps the
connections, calls models concurrently and applies its own penalties: a timed-out model is skipped
for a few calls (PREEMPTIVE_SKIP), a model failing or timing out too often in a row is reported to the
orchestrator (`report_failure`) and dropped, a model lacking the called method is dropped at once.
Answers are then held to the local runner's rules: plain JSON (no NaN), at most max_output_bytes.

The client is asyncio-only while the engine calls run_cycle synchronously, so each session runs the
client on its own event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import json
import logging
import struct
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, Sequence, TypeVar

import numpy as np
import pandas as pd
import websockets
from pydantic import Field

from model_runner_client.grpc.generated.commons_pb2 import Argument, KwArgument, Variant, VariantType
from model_runner_client.model_concurrent_runners import (
    DynamicSubclassModelConcurrentRunner,
    ModelPredictResult,
)
from model_runner_client.model_runners import DynamicSubclassModelRunner
from model_runner_client.security.credentials import SecureCredentials

from resources.model_ids import model_id_problem

from .base import (
    CallStatus,
    MethodCall,
    ModelCallResult,
    ModelInfo,
    ModelInterface,
    ModelRunnerResource,
    ModelSession,
)
# Stdlib-only: the local worker's rules of what a model may answer, shared by both runners.
from .local_worker import find_unserialisable

logger = logging.getLogger(__name__)

T = TypeVar("T")

# After a cycle's deadline the client still does some bookkeeping for timed-out models (a health
# check, its counters); this much slack lets it finish before we stop waiting.
_CYCLE_MARGIN_SECONDS = 0.5
_SHUTDOWN_TIMEOUT_SECONDS = 5.0
# Failure reports the client is still sending when a session closes get this long to go out.
_CLIENT_TASKS_GRACE_SECONDS = 0.5

_STOPPED, _RECOVERING = "STOPPED", "RECOVERING"


# --------------------------------------------------------------------------------------------------
# Announcements, arguments and answers
# --------------------------------------------------------------------------------------------------


def model_info_from_announcement(entry: dict[str, Any], previous: ModelInfo | None = None) -> ModelInfo:
    """One entry of an `init`/`update` event as a ModelInfo; fields an update leaves out keep their
    previous values."""
    infos = entry.get("infos") or {}
    model_id = str(entry["model_id"])

    def pick(value: Any, previous_value: Any) -> Any:
        return previous_value if value is None else value

    meta = dict(previous.meta) if previous else {}
    meta.update({key: value for key, value in infos.items() if key not in ("model_name", "cruncher_id", "cruncher_name")})
    for key in ("ip", "port"):
        if entry.get(key) is not None:
            meta[key] = entry[key]

    return ModelInfo(
        model_id=model_id,
        name=str(pick(infos.get("model_name") or entry.get("model_name"), previous.name if previous else model_id)),
        player_id=_optional_str(pick(infos.get("cruncher_id"), previous.player_id if previous else None)),
        player_name=_optional_str(pick(infos.get("cruncher_name"), previous.player_name if previous else None)),
        deployment_id=_optional_str(pick(entry.get("deployment_id"), previous.deployment_id if previous else None)),
        state=str(pick(entry.get("state"), previous.state if previous else "RUNNING")),
        meta=meta,
    )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def to_node_class_name(base_class: str) -> str:
    """ModelInterface says `module:ClassName`; model nodes resolve `module.ClassName`."""
    module_name, separator, class_name = base_class.strip().rpartition(":")
    if not separator:
        module_name, _, class_name = base_class.strip().rpartition(".")
    if not module_name or not class_name:
        raise ValueError(f"base class {base_class!r} must look like 'module:ClassName'")
    return f"{module_name}.{class_name}"


def _json_default(value: Any) -> Any:
    # Coordinator data often carries numpy values and timestamps; models receive plain JSON.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (dt.datetime, dt.date, pd.Timestamp)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_variant(value: Any) -> Variant:
    """A Python value as the protocol's typed variant, decoded by the node with the same rules as
    model-runner-client's decode_data."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return Variant(type=VariantType.NONE, value=b"")
    # bool is an int to the client's detect_data_type (True would arrive as 1); JSON keeps it a bool.
    if isinstance(value, (bool, dict, list, tuple)):
        try:
            text = json.dumps(value, default=_json_default)
        except (TypeError, ValueError) as error:
            raise ValueError(f"cannot be sent as JSON: {error}") from error
        return Variant(type=VariantType.JSON, value=text.encode("utf-8"))
    if isinstance(value, float):
        return Variant(type=VariantType.DOUBLE, value=struct.pack("d", value))
    if isinstance(value, int):
        try:
            return Variant(type=VariantType.INT, value=value.to_bytes(8, byteorder="little", signed=True))
        except OverflowError as error:
            raise ValueError("integer does not fit in 64 bits") from error
    if isinstance(value, str):
        return Variant(type=VariantType.STRING, value=value.encode("utf-8"))
    if isinstance(value, pd.DataFrame):
        from model_runner_client.utils.datatype_transformer import encode_data

        return Variant(type=VariantType.PARQUET, value=encode_data(VariantType.PARQUET, value))
    raise ValueError(f"{type(value).__name__} has no protocol variant (NONE/DOUBLE/INT/STRING/PARQUET/JSON)")


@dataclass(frozen=True)
class _EncodedCall:
    method: str
    args: list[Argument]
    kwargs: list[KwArgument]


def _encode_call(call: MethodCall) -> _EncodedCall:
    try:
        args = [Argument(position=position, data=encode_variant(value)) for position, value in enumerate(call.args, start=1)]
    except ValueError as error:
        raise ValueError(f"{call.method}: a positional argument cannot be sent to models: {error}") from error
    kwargs = []
    for keyword, value in call.kwargs.items():
        try:
            kwargs.append(KwArgument(keyword=keyword, data=encode_variant(value)))
        except ValueError as error:
            raise ValueError(f"{call.method}: argument {keyword!r} cannot be sent to models: {error}") from error
    return _EncodedCall(call.method, args, kwargs)


def _json_compatible(output: Any) -> Any:
    # A PARQUET answer decodes to a DataFrame; results are stored as JSON.
    if isinstance(output, pd.DataFrame):
        return json.loads(output.to_json(orient="records", date_format="iso"))
    return output


# --------------------------------------------------------------------------------------------------
# model-runner-client extensions
# --------------------------------------------------------------------------------------------------


class _ModelRunnerKeepingFailureDetail(DynamicSubclassModelRunner):
    """The client reports a failed call only as "FAILED"; this keeps the node's own reason (e.g.
    "MODEL_FAILED: The model raised an exception: ...") or the decoding error, for the last call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_failure_detail: str | None = None

    async def setup(self, grpc_channel: Any):
        outcome = await super().setup(grpc_channel)
        self._record_call_statuses()
        return outcome

    def _record_call_statuses(self) -> None:
        send_call = self.grpc_stub.Call

        async def call_recording_status(request: Any, **call_options: Any) -> Any:
            response = await send_call(request, **call_options)
            if response is not None and response.status.code != "SUCCESS":
                self.last_failure_detail = f"{response.status.code}: {response.status.message}"
            return response

        self.grpc_stub.Call = call_recording_status

    async def call(self, method_name: str, arguments: Any = ([], []), timeout: float | None = None):
        self.last_failure_detail = None
        try:
            return await super().call(method_name, arguments, timeout)
        except ValueError as error:  # raised by the client's decode_data: the answer is unusable
            self.last_failure_detail = f"undecodable answer: {error}"
            raise


class _ConcurrentRunner(DynamicSubclassModelConcurrentRunner):
    def create_model_runner(self, **kwargs: Any) -> _ModelRunnerKeepingFailureDetail:
        return _ModelRunnerKeepingFailureDetail(
            self.base_classname,
            self.instance_args,
            self.instance_kwargs,
            secure_credentials=self.secure_credentials,
            gateway_credentials=self.gateway_credentials,
            **kwargs,
        )


def _run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # Called from code already inside an event loop: run on a helper thread instead.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


# --------------------------------------------------------------------------------------------------
# Resource and session
# --------------------------------------------------------------------------------------------------


class OrchestratorModelRunner(ModelRunnerResource):
    """Models deployed by CrunchDAO's model orchestrator (production)."""

    host: str = Field(description="Host of the model orchestrator's WebSocket.")
    port: int = Field(description="Port of the model orchestrator's WebSocket.")
    crunch_id: str = Field(description="Crunch id: the WebSocket path is /<crunch_id>.")
    connect_timeout_seconds: float = Field(
        default=30.0,
        description="How long a session start waits for the orchestrator's announcement and the "
        "initial model connections; models still connecting after that are ABSENT until ready.",
    )
    max_consecutive_failures: int = Field(
        default=100,
        description="Client removes and reports a model after this many failed calls in a row "
        "(client default 3; the reference coordinator used 100). 0 disables.",
    )
    max_consecutive_timeouts: int = Field(
        default=100,
        description="Same for timeouts in a row (client default 3; reference 100). 0 disables.",
    )
    report_failure: bool = Field(
        default=True,
        description="Let the client report misbehaving models to the orchestrator (which stops "
        "them) and drop them. Off keeps every model, useful when debugging.",
    )
    tls_ca_cert_path: str | None = Field(default=None, description="mTLS to model nodes: CA certificate.")
    tls_cert_path: str | None = Field(default=None, description="mTLS: the coordinator's certificate.")
    tls_key_path: str | None = Field(default=None, description="mTLS: the coordinator's private key.")

    @property
    def orchestrator_url(self) -> str:
        return f"ws://{self.host}:{self.port}/{self.crunch_id}"

    def list_models(self) -> list[ModelInfo]:
        return _run_blocking(self._fetch_announced_models())

    async def _fetch_announced_models(self) -> list[ModelInfo]:
        async with websockets.connect(self.orchestrator_url, open_timeout=self.connect_timeout_seconds) as websocket:
            message = await asyncio.wait_for(websocket.recv(), timeout=self.connect_timeout_seconds)
        event = json.loads(message)
        if event.get("event") != "init" or not isinstance(event.get("data"), list):
            raise ConnectionError(f"{self.orchestrator_url} sent {event.get('event')!r} first, expected an 'init' event")
        return [model_info_from_announcement(entry) for entry in event["data"]
                if model_id_problem(str(entry["model_id"])) is None]

    def open_session(self, interface: ModelInterface) -> OrchestratorModelSession:
        return OrchestratorModelSession(self, interface)

    def secure_credentials(self) -> SecureCredentials | None:
        paths = (self.tls_ca_cert_path, self.tls_cert_path, self.tls_key_path)
        if all(path is None for path in paths):
            return None
        if any(path is None for path in paths):
            raise ValueError("mTLS needs tls_ca_cert_path, tls_cert_path and tls_key_path together")
        return SecureCredentials.from_files(*paths)


class OrchestratorModelSession(ModelSession):
    """The client connected to the orchestrator and its models for a series of cycles."""

    def __init__(self, settings: OrchestratorModelRunner, interface: ModelInterface) -> None:
        self._settings = settings
        self._node_class_name = to_node_class_name(interface.base_class)
        self._secure_credentials = settings.secure_credentials()
        self._announced: dict[str, ModelInfo] = {}
        self._announced_lock = threading.Lock()
        self._closed = False
        self._runner: _ConcurrentRunner | None = None
        self._init_task: asyncio.Task | None = None
        self._sync_task: asyncio.Task | None = None
        self._first_announcement: asyncio.Event | None = None

        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name=f"model-runner-client:{settings.crunch_id}", daemon=True
        )
        self._loop_thread.start()
        try:
            self._run_on_loop(self._start(), timeout_seconds=settings.connect_timeout_seconds + _CYCLE_MARGIN_SECONDS)
        except BaseException:
            self.close()
            raise

    # ---- ModelSession ----------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Every model the orchestrator announced during this session, with its latest state (a
        model announced after the start is included; one no longer announced becomes STOPPED)."""
        with self._announced_lock:
            return list(self._announced.values())

    def run_cycle(
        self,
        calls: Sequence[MethodCall],
        timeout_seconds: float,
        skip_model_ids: frozenset[str] = frozenset(),
    ) -> dict[str, ModelCallResult]:
        if self._closed:
            raise RuntimeError("the model session is closed")
        if not calls:
            raise ValueError("run_cycle needs at least one call")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        encoded_calls = [_encode_call(call) for call in calls]
        # Taken once: a model announced during the cycle is called from the next one on.
        called_models = [info for info in self.models() if info.model_id not in skip_model_ids]

        results: dict[str, ModelCallResult] = {}  # filled on the loop thread as models finish
        future = asyncio.run_coroutine_threadsafe(
            self._run_cycle(called_models, encoded_calls, timeout_seconds, results), self._loop
        )
        missing_detail = "the model runner did not finish the cycle"
        try:
            future.result(timeout=timeout_seconds + 2 * _CYCLE_MARGIN_SECONDS)
        except concurrent.futures.TimeoutError:
            future.cancel()
            missing_detail = f"the model runner's event loop did not answer within {timeout_seconds}s"
            logger.error("Cycle on %s exceeded its budget of %ss", self._settings.orchestrator_url, timeout_seconds)
        except Exception:
            logger.exception("Cycle on %s failed in the model runner", self._settings.orchestrator_url)
        answered = dict(results)  # a C-level copy: safe while the loop thread may still write
        max_output_bytes = self._settings.max_output_bytes
        return {
            info.model_id: within_output_limits(answered[info.model_id], max_output_bytes)
            if info.model_id in answered
            else ModelCallResult(info.model_id, CallStatus.ABSENT, detail=missing_detail)
            for info in called_models
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            try:
                self._run_on_loop(self._shutdown(), timeout_seconds=_SHUTDOWN_TIMEOUT_SECONDS)
            except Exception:
                logger.warning("Model session shutdown did not complete cleanly", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=_SHUTDOWN_TIMEOUT_SECONDS)
        if not self._loop_thread.is_alive():
            self._loop.close()

    # ---- diagnostics ----------------------------------------------------------------------------

    def connected_model_ids(self) -> set[str]:
        """Models the client is connected to right now (set up and callable)."""
        if self._closed:
            return set()

        async def read() -> set[str]:
            return {str(model_id) for model_id in self._runner.model_cluster.models_run}

        return self._run_on_loop(read(), timeout_seconds=_SHUTDOWN_TIMEOUT_SECONDS)

    # ---- event loop side ------------------------------------------------------------------------

    def _run_on_loop(self, coroutine: Coroutine[Any, Any, T], timeout_seconds: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout=timeout_seconds)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def _start(self) -> None:
        settings = self._settings
        self._runner = _ConcurrentRunner(
            timeout=settings.call_timeout_seconds,
            crunch_id=settings.crunch_id,
            host=settings.host,
            port=settings.port,
            base_classname=self._node_class_name,
            max_consecutive_failures=settings.max_consecutive_failures,
            max_consecutive_timeouts=settings.max_consecutive_timeouts,
            secure_credentials=self._secure_credentials,
            report_failure=settings.report_failure,
        )
        websocket_client = self._runner.model_cluster.ws_client
        websocket_client.event_handler = self._recording_announcements(websocket_client.event_handler)
        self._first_announcement = asyncio.Event()

        # init() connects, reads the `init` event and connects every announced model; sync() then
        # follows `update` events. They share one WebSocket, so sync starts only after init.
        self._init_task = asyncio.create_task(self._runner.init())
        self._sync_task = asyncio.create_task(self._sync_after_init())

        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.connect_timeout_seconds
        announced = asyncio.create_task(self._first_announcement.wait())
        await asyncio.wait(
            {announced, self._init_task}, timeout=settings.connect_timeout_seconds, return_when=asyncio.FIRST_COMPLETED
        )
        announced.cancel()
        if not self._first_announcement.is_set():
            reason = ""
            if self._init_task.done() and not self._init_task.cancelled() and self._init_task.exception():
                reason = f": {self._init_task.exception()}"
            raise ConnectionError(
                f"the model orchestrator at {settings.orchestrator_url} announced no models "
                f"within {settings.connect_timeout_seconds}s{reason}"
            )
        # Let the initial connections finish within the budget; slower models keep connecting in
        # the background and are ABSENT until they are ready.
        remaining_seconds = deadline - loop.time()
        if remaining_seconds > 0:
            await asyncio.wait({self._init_task}, timeout=remaining_seconds)

    async def _sync_after_init(self) -> None:
        try:
            await self._init_task
        except Exception:
            logger.exception("Model orchestrator init failed; listening for updates anyway")
        await self._runner.sync()  # runs until close; reconnects on its own

    def _recording_announcements(
        self, handle_event: Callable[[str, Any], Awaitable[None]]
    ) -> Callable[[str, Any], Awaitable[None]]:
        async def record_then_handle(event_type: str, data: Any) -> None:
            # Recorded before the client handles it: connecting models can take long and we want
            # models() to reflect the orchestrator meanwhile.
            if event_type in ("init", "update") and isinstance(data, list):
                self._record_announcements(event_type, data)
            await handle_event(event_type, data)

        return record_then_handle

    def _record_announcements(self, event_type: str, entries: list[dict[str, Any]]) -> None:
        with self._announced_lock:
            announced_ids = set()
            for entry in entries:
                if not isinstance(entry, dict) or entry.get("model_id") is None:
                    logger.warning("Ignoring malformed model announcement: %r", entry)
                    continue
                model_id = str(entry["model_id"])
                problem = model_id_problem(model_id)
                if problem is not None:  # the API could not serve it: never registered, never called
                    logger.warning("Ignoring model announcement: %s", problem)
                    continue
                announced_ids.add(model_id)
                self._announced[model_id] = model_info_from_announcement(entry, self._announced.get(model_id))
            if event_type == "init":
                # A (re)connection's `init` lists every model; the client drops the others.
                for model_id, info in self._announced.items():
                    if model_id not in announced_ids:
                        self._announced[model_id] = dataclasses.replace(info, state=_STOPPED)
        if event_type == "init":
            self._first_announcement.set()

    async def _run_cycle(
        self,
        called_models: list[ModelInfo],
        calls: list[_EncodedCall],
        timeout_seconds: float,
        results: dict[str, ModelCallResult],
    ) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_seconds
        cluster = self._runner.model_cluster
        connected = {str(model_id): model_runner for model_id, model_runner in cluster.models_run.items()}
        connecting_ids = {str(model_id) for model_id in cluster.pending_model_runs}

        chains: dict[asyncio.Task, str] = {}
        for info in called_models:
            model_runner = connected.get(info.model_id)
            if model_runner is None:
                results[info.model_id] = ModelCallResult(
                    info.model_id, CallStatus.ABSENT, detail=_absence_reason(info, connecting_ids)
                )
            else:
                chain = asyncio.create_task(self._call_in_order(info.model_id, model_runner, calls, deadline))
                chains[chain] = info.model_id
        if not chains:
            return

        done, unfinished = await asyncio.wait(chains, timeout=timeout_seconds + _CYCLE_MARGIN_SECONDS)
        for chain in unfinished:
            chain.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        for chain, model_id in chains.items():
            if chain in done:
                results[model_id] = chain.result()
            else:
                results[model_id] = ModelCallResult(
                    model_id, CallStatus.TIMEOUT, detail=f"no answer within the cycle budget of {timeout_seconds}s"
                )

    async def _call_in_order(
        self, model_id: str, model_runner: _ModelRunnerKeepingFailureDetail, calls: list[_EncodedCall], deadline: float
    ) -> ModelCallResult:
        loop = asyncio.get_running_loop()
        exec_time_us = 0

        def outcome(status: CallStatus, detail: str | None = None, output: Any = None) -> ModelCallResult:
            return ModelCallResult(model_id, status, output=output, exec_time_ms=exec_time_us / 1000, detail=detail)

        output: Any = None
        for call in calls:
            remaining_seconds = deadline - loop.time()
            if remaining_seconds <= 0:
                return outcome(CallStatus.TIMEOUT, f"{call.method}: the cycle budget was used up by earlier calls")
            try:
                # Exactly this model: the client reads an empty model_runs as "every connected model".
                answers = await self._runner.call(
                    call.method, (call.args, call.kwargs), timeout=remaining_seconds, model_runs=[model_runner]
                )
            except Exception as error:  # the client itself failed on this model (e.g. an auth error)
                return outcome(CallStatus.FAILED, f"{call.method}: model-runner-client error: {error!r}")
            answer = answers.get(model_runner)
            if answer is None:
                return outcome(CallStatus.ABSENT, f"{call.method}: the client gave no answer (model dropped during the call)")
            exec_time_us += answer.exec_time_us
            if answer.status is ModelPredictResult.Status.SUCCESS:
                output = answer.result
            elif answer.status is ModelPredictResult.Status.FAILED:
                reason = model_runner.last_failure_detail or answer.detail or "FAILED"
                return outcome(CallStatus.FAILED, f"{call.method}: {reason}")
            else:
                return outcome(CallStatus.TIMEOUT, f"{call.method}: {answer.detail or 'TIMEOUT'}")
        try:
            return outcome(CallStatus.SUCCESS, output=_json_compatible(output))
        except Exception as error:
            return outcome(CallStatus.FAILED, f"unusable answer: {error}")

    async def _shutdown(self) -> None:
        runner = self._runner
        own_tasks = [task for task in (self._sync_task, self._init_task) if task is not None]
        if runner is not None:
            runner.model_cluster.ws_client.listening = False
        for task in own_tasks:
            task.cancel()
        await asyncio.gather(*own_tasks, return_exceptions=True)

        if runner is not None:
            # The client fires background tasks (failure reports, reconnections); give the reports a
            # moment to go out while the WebSocket is still open.
            cluster_tasks = [task for task in asyncio.all_tasks() if _is_model_cluster_task(task)]
            if cluster_tasks:
                await asyncio.wait(cluster_tasks, timeout=_CLIENT_TASKS_GRACE_SECONDS)
            cluster = runner.model_cluster
            model_runners = [*cluster.models_run.values(), *cluster.pending_model_runs.values()]
            await asyncio.gather(*(model_runner.close() for model_runner in model_runners), return_exceptions=True)
            cluster.models_run.clear()
            cluster.pending_model_runs.clear()
            websocket_client = cluster.ws_client
            try:
                await websocket_client.disconnect()
            except Exception:
                logger.debug("WebSocket close failed", exc_info=True)
            websocket_client.websocket = None
            # The client's __del__ registers disconnect_sync with atexit, which fails at exit ("no
            # current event loop"): the connection is closed already, so make it a no-op.
            websocket_client.disconnect_sync = _do_nothing

        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)


def within_output_limits(result: ModelCallResult, max_output_bytes: int) -> ModelCallResult:
    """A successful answer that is not plain JSON, or whose compact JSON encoding is larger than
    `max_output_bytes`, becomes FAILED: the same rules and details as the local runner's worker."""
    if result.status is not CallStatus.SUCCESS:
        return result
    problem = find_unserialisable(result.output)
    if problem is not None:
        return dataclasses.replace(result, status=CallStatus.FAILED, output=None, detail=f"output not serialisable: {problem}")
    output_bytes = len(json.dumps(result.output, allow_nan=False, separators=(",", ":")))  # ASCII: escaped
    if output_bytes > max_output_bytes:
        return dataclasses.replace(
            result, status=CallStatus.FAILED, output=None, detail=f"output too large: {output_bytes} bytes > {max_output_bytes}"
        )
    return result


def _is_model_cluster_task(task: asyncio.Task) -> bool:
    return getattr(task.get_coro(), "__qualname__", "").startswith("ModelCluster.")


def _do_nothing() -> None:
    pass


def _absence_reason(info: ModelInfo, connecting_ids: set[str]) -> str:
    if info.state == _STOPPED:
        return "the orchestrator reports the model STOPPED"
    if info.state == _RECOVERING:
        return "the orchestrator reports the model RECOVERING"
    if info.model_id in connecting_ids:
        return "still connecting to the model node"
    return "not connected: the model node could not be reached or set up, or the client dropped it after failures"

"""The Open Inference Protocol's `inference.GRPCInferenceService` over the data plane: health,
metadata, ModelInfer, Triton's ModelStreamInfer and its model repository extension, with the
logic, checks and error messages of the /v2 HTTP routes (`api/v2_protocol.py`).

The caller is the API key in the `authorization` metadata ("Bearer <key>"), or with keys off the
peer's address, as on HTTP; a stream authenticates once, when it opens. Typed errors become gRPC
statuses in `grpc_status` only; their details are the /v2 error message ("<code>: <message>")
and their HTTP headers (retry-after, www-authenticate) go back as trailing metadata. On a
stream, a failed request is answered with `error_message` and the stream goes on.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import NoReturn, TypeVar
from urllib.parse import unquote

import grpc

from sarnn_serve.api import grpc_predict_v2_pb2 as pb
from sarnn_serve.api import grpc_predict_v2_pb2_grpc as pb_grpc
from sarnn_serve.api import v2_protocol
from sarnn_serve.api.grpc_codec import infer_request, infer_response, model_metadata_response
from sarnn_serve.auth import Principal
from sarnn_serve.errors import ModelNotFound, ServiceError
from sarnn_serve.repository import ModelRepository
from sarnn_serve.service import DataPlane

log = logging.getLogger("sarnn.grpc")
T = TypeVar("T")
SERVICE = "inference.GRPCInferenceService"
STREAM_WINDOW = 64  # requests of one stream in flight; the stream is read no further meanwhile
# HTTP status of a typed error -> gRPC status (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,  # a sequencer check failed: retry from the expected seq
    410: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    421: grpc.StatusCode.FAILED_PRECONDITION,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def grpc_status(exc: ServiceError) -> grpc.StatusCode:
    """The gRPC status of a typed error (the one place it is decided)."""
    fallback = grpc.StatusCode.INVALID_ARGUMENT if exc.status < 500 else grpc.StatusCode.INTERNAL
    return STATUS.get(exc.status, fallback)


def peer_host(peer: str) -> str | None:
    """The client address of a gRPC peer ("ipv4:127.0.0.1:5000", "ipv6:%5B::1%5D:5000")."""
    kind, _, address = unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    return address.rpartition(":")[0].strip("[]") or None


def sequence_key(msg: pb.ModelInferRequest) -> Hashable | None:
    """What orders a stream's request: its model and sequence id (None: not in a sequence)."""
    if "sequence_id" not in msg.parameters:
        return None
    parameter = msg.parameters["sequence_id"]
    kind = parameter.WhichOneof("parameter_choice")
    value = getattr(parameter, kind) if kind else None
    if value in (None, 0, ""):
        return None
    return msg.model_name, isinstance(value, str), value


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The served methods; any other method of the protocol answers UNIMPLEMENTED."""

    def __init__(
        self, plane: DataPlane, repository: ModelRepository, name: str, version: str
    ) -> None:
        self.dp = plane
        self.repository = repository
        self.name, self.version = name, version
        self.running: set[asyncio.Task] = set()  # stream requests in flight (a stream may end)

    def _caller(self, context: grpc.aio.ServicerContext) -> Principal:
        metadata = dict(context.invocation_metadata() or ())
        return self.dp.authenticate(metadata.get("authorization"), peer_host(context.peer()))

    async def _abort(self, context: grpc.aio.ServicerContext, exc: ServiceError) -> NoReturn:
        self.dp.record_error(exc)
        headers = exc.http_headers() or {}
        context.set_trailing_metadata(tuple((k.lower(), v) for k, v in headers.items()))
        await context.abort(grpc_status(exc), v2_protocol.error_message(exc))

    async def _answer(
        self, context: grpc.aio.ServicerContext, method: str, work: Callable[[], Awaitable[T]]
    ) -> T:
        """`work`'s answer; its typed error as the call's status. Counted like an HTTP call."""
        started, status = time.perf_counter(), 200
        try:
            return await work()
        except ServiceError as exc:
            status = exc.status
            await self._abort(context, exc)
        finally:
            self.dp.record_message(f"GRPC {method}", status, time.perf_counter() - started)

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        """The process is up."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        """Models are loaded and the session store answers."""
        try:
            await self.dp.ready()
        except ServiceError:
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        """The model (at this version, if one is named) is served."""

        async def ready() -> pb.ModelReadyResponse:
            self._caller(context)
            try:
                self.dp.served_model(request.name, request.version or None)
            except ModelNotFound:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._answer(context, "ModelReady", ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        """Server name, version and the protocol extensions it speaks."""

        async def metadata() -> pb.ServerMetadataResponse:
            self._caller(context)
            return pb.ServerMetadataResponse(
                name=self.name, version=self.version, extensions=v2_protocol.EXTENSIONS
            )

        return await self._answer(context, "ServerMetadata", metadata)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        """The model's input and outputs: names, datatypes and shapes (-1: any size)."""

        async def metadata() -> pb.ModelMetadataResponse:
            self._caller(context)
            model = self.dp.served_model(request.name, request.version or None)
            return model_metadata_response(v2_protocol.model_metadata(model.card))

        return await self._answer(context, "ModelMetadata", metadata)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """One inference, as POST /v2/models/{name}/infer."""
        return await self._answer(
            context, "ModelInfer", lambda: self._infer(self._caller(context), request)
        )

    async def _infer(self, who: Principal, msg: pb.ModelInferRequest) -> pb.ModelInferResponse:
        model = self.dp.served_model(msg.model_name, msg.model_version or None)
        req, binary = infer_request(msg)
        return infer_response(*await v2_protocol.infer(self.dp, who, model, req, binary))

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Inferences on one stream: requests of different sequences run concurrently (answers
        may come back in another order: match them by request id), those of one sequence one
        after another in the order sent."""
        try:
            who = self._caller(context)
        except ServiceError as exc:
            await self._abort(context, exc)

        async def answer(msg: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            started, status = time.perf_counter(), 200
            try:
                return pb.ModelStreamInferResponse(infer_response=await self._infer(who, msg))
            except ServiceError as exc:
                status = exc.status
                self.dp.record_error(exc)
                return pb.ModelStreamInferResponse(error_message=v2_protocol.error_message(exc))
            finally:
                elapsed = time.perf_counter() - started
                self.dp.record_message("GRPC ModelStreamInfer", status, elapsed)

        async for response in in_sequence_order(requests, answer, self.running):
            yield response

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        """Every model version served or draining, and every model in the model dir not
        served."""

        async def index() -> pb.RepositoryIndexResponse:
            self._caller(context)
            entries = self.repository.index(ready_only=request.ready)
            models = [pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in entries]
            return pb.RepositoryIndexResponse(models=models)

        return await self._answer(context, "RepositoryIndex", index)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        """Load or reload a model from its folder in the model dir."""

        async def load() -> pb.RepositoryModelLoadResponse:
            await self.repository.load(self._caller(context), request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await self._answer(context, "RepositoryModelLoad", load)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        """Stop serving a model to new work; its sessions drain."""

        async def unload() -> pb.RepositoryModelUnloadResponse:
            await self.repository.unload(self._caller(context), request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._answer(context, "RepositoryModelUnload", unload)


async def in_sequence_order(
    requests: AsyncIterator[pb.ModelInferRequest],
    answer: Callable[[pb.ModelInferRequest], Awaitable[pb.ModelStreamInferResponse]],
    running: set[asyncio.Task],
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    """The answers to a stream's requests as they finish: at most STREAM_WINDOW at once, those
    of one sequence (`sequence_key`) each after the one before it. A request whose stream ends
    first still runs to its end (as an HTTP request whose client left), held in `running`."""
    answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
    room = asyncio.Semaphore(STREAM_WINDOW)
    last: dict[Hashable, asyncio.Task] = {}
    mine: set[asyncio.Task] = set()

    async def one(msg: pb.ModelInferRequest, before: asyncio.Task | None) -> None:
        try:
            if before is not None:
                await asyncio.wait([before])
            answers.put_nowait(await answer(msg))
        except Exception as exc:
            log.exception("stream request failed", extra={"model": msg.model_name})
            answers.put_nowait(pb.ModelStreamInferResponse(error_message=f"internal: {exc!r}"))
        finally:
            room.release()

    def forget(task: asyncio.Task, key: Hashable | None) -> None:
        running.discard(task)
        mine.discard(task)
        if key is not None and last.get(key) is task:
            del last[key]

    async def read() -> None:
        try:
            async for msg in requests:
                await room.acquire()
                key = sequence_key(msg)
                task = asyncio.create_task(one(msg, last.get(key) if key else None))
                running.add(task)
                mine.add(task)
                task.add_done_callback(lambda t, k=key: forget(t, k))
                if key is not None:
                    last[key] = task
            if mine:
                await asyncio.wait(list(mine))
        finally:
            answers.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (response := await answers.get()) is not None:
            yield response
        await reader
    finally:
        reader.cancel()

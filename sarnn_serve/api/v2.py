"""The Open Inference Protocol (KServe v2 REST) with Triton's binary tensor data and sequence
extensions, beside the native API and over the same data plane (the protocol's logic, shared with
the gRPC service, is `api/v2_protocol.py`). Every answer under /v2, an unknown path or a
method a path does not take included, has its errors as {"error": "<code>: <message>"} with the
typed error's HTTP status, rendered in one place (`api/v2_route.py`). The repository
extension's routes (`api/v2_repository.py`) are a router of their own, served before this one.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.routing import Match

from sarnn_serve.api import v2_protocol, v2_repository
from sarnn_serve.api.codec import HEADER_LENGTH, encode_response, parse_request
from sarnn_serve.api.deps import Caller, Plane
from sarnn_serve.api.v2_route import V2Route
from sarnn_serve.errors import NoRoute, ServiceError
from sarnn_serve.registry import LoadedModel


def served_model(request: Request) -> LoadedModel:
    """The model the path names, checked against the version it names, if any."""
    name, version = request.path_params["name"], request.path_params.get("version")
    return request.app.state.plane.served_model(name, version)


Model = Annotated[LoadedModel, Depends(served_model)]
router = APIRouter(prefix="/v2", route_class=V2Route, include_in_schema=False)


@router.get("")
async def server_metadata(request: Request, _: Caller) -> dict:
    """Server name, version and the protocol extensions it speaks."""
    return {
        "name": request.app.title,
        "version": request.app.version,
        "extensions": v2_protocol.EXTENSIONS,
    }


@router.get("/health/live")
async def server_live() -> Response:
    """The process is up."""
    return Response()


@router.get("/health/ready")
async def server_ready(dp: Plane) -> Response:
    """Models are loaded and the session store answers."""
    await dp.ready()
    return Response()


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(_: Caller, model: Model) -> dict:
    """The model's input and outputs: names, datatypes and shapes (-1: any size)."""
    return v2_protocol.model_metadata(model.card)


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(_: Caller, model: Model) -> Response:
    """The model (at this version) is served."""
    return Response()


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, dp: Plane, who: Caller, model: Model) -> Response:
    """Run one input tensor `x` [N, T, F]: a chunk of a sequence (N = 1) with a sequence_id
    parameter, otherwise N whole sequences from a zero state."""
    if request.headers.get("content-encoding", "identity") != "identity":
        raise ServiceError("a compressed request body (Content-Encoding) is not supported")
    req, binary = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
    body, json_length = encode_response(*await v2_protocol.infer(dp, who, model, req, binary))
    if json_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)}
    )


METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


@router.api_route("", methods=list(METHODS))
@router.api_route("/{path:path}", methods=list(METHODS))
async def no_route(request: Request) -> Response:
    """Any other path or method under /v2: 404, or 405 naming the methods the path takes (the
    repository extension's routes included)."""
    routes = [r for r in router.routes if getattr(r, "endpoint", None) is not no_route]
    routes += v2_repository.router.routes
    allowed = [
        method
        for method in METHODS
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    ]
    raise NoRoute(allowed)

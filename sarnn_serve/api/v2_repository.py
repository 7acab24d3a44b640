"""The Open Inference Protocol's model repository extension (as Triton and KServe write it):
index, load and unload under /v2/repository, with the protocol's error body. Loading and
unloading need an admin key when keys are on."""

import json
from typing import TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict

from sarnn_serve.api.deps import Caller
from sarnn_serve.api.v2_route import V2Route
from sarnn_serve.errors import InvalidJson
from sarnn_serve.repository import ModelRepository
from sarnn_serve.validation import validate_request

router = APIRouter(prefix="/v2/repository", route_class=V2Route, include_in_schema=False)


class IndexRequest(BaseModel):
    """`ready`: list only the model versions ready for new work."""

    model_config = ConfigDict(extra="ignore")

    repository_name: str = ""
    ready: bool = False


class ControlRequest(BaseModel):
    """Load and unload take optional parameters; none changes what sarnn-serve does."""

    model_config = ConfigDict(extra="ignore")

    parameters: dict = {}


Body = TypeVar("Body", IndexRequest, ControlRequest)


def _repository(request: Request) -> ModelRepository:
    return request.app.state.repository


async def _body(request: Request, model: type[Body]) -> Body:
    """The optional JSON body, whatever the Content-Type (tritonclient sends none, curl -d a
    form's); empty: the defaults."""
    raw = await request.body()
    if not raw.strip():
        return model()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidJson(str(exc)) from None
    return validate_request(model, data)


@router.post("/index")
async def index(request: Request, caller: Caller) -> list[dict[str, str]]:
    """Every model version served or draining and every model in the model dir not served."""
    body = await _body(request, IndexRequest)
    return _repository(request).index(ready_only=body.ready)


@router.post("/models/{name}/load")
async def load(request: Request, name: str, caller: Caller) -> Response:
    """Load or reload the model from its folder in the model dir."""
    await _body(request, ControlRequest)
    await _repository(request).load(caller, name)
    return Response()


@router.post("/models/{name}/unload")
async def unload(request: Request, name: str, caller: Caller) -> Response:
    """Stop serving the model to new work; its sessions drain."""
    await _body(request, ControlRequest)
    await _repository(request).unload(caller, name)
    return Response()

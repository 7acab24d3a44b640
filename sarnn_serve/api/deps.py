"""Shared objects for route handlers, taken from the app built by create_app."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from sarnn_serve.auth import Principal
from sarnn_serve.service import DataPlane

# Documents the Bearer scheme in OpenAPI; the key itself is checked by the data plane.
bearer = HTTPBearer(auto_error=False, description="An API key, when the server has keys on.")


async def plane(request: Request) -> DataPlane:
    return request.app.state.plane


# async, as FastAPI would run a plain function in a worker thread on every request
async def caller(request: Request, _: Annotated[object, Depends(bearer)] = None) -> Principal:
    """Who is calling: their API key's principal, or (keys off) their client address."""
    host = request.client.host if request.client else None
    return request.app.state.plane.authenticate(request.headers.get("authorization"), host)


Plane = Annotated[DataPlane, Depends(plane)]
Caller = Annotated[Principal, Depends(caller)]

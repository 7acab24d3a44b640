"""Shared objects for route handlers, taken from the app built by create_app."""

from typing import Annotated

from fastapi import Depends, Request, WebSocket

from sarnn_serve.service import DataPlane


def plane(request: Request) -> DataPlane:
    return request.app.state.plane


def ws_plane(websocket: WebSocket) -> DataPlane:
    return websocket.app.state.plane


Plane = Annotated[DataPlane, Depends(plane)]

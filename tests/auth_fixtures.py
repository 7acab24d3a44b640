"""Helpers of the API-key suites (test_auth, test_tenant_isolation): the keys, the REST routes a
key is checked on, clients that send a key, and the checks of an error answer or a refused
socket.
"""

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.service_fixtures import TINY_MODEL, LiveServer

FEATURES = 6
TIMEOUT = 10
CHUNK = [[0.1 * (t + f) for f in range(FEATURES)] for t in range(5)]
ALICE, BOB, CAROL, ROOT = "alice-key", "bob-key", "carol-key", "root-key"

REST_ROUTES = [
    ("GET", "/v1/sessions", None),
    ("POST", "/v1/sessions", {}),
    ("GET", "/v1/sessions/{sid}", None),
    ("POST", "/v1/sessions/{sid}/chunks", {"seq": 1, "inputs": CHUNK}),
    ("DELETE", "/v1/sessions/{sid}", None),
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{TINY_MODEL}", None),
    ("GET", f"/v1/models/{TINY_MODEL}/stats", None),
    ("POST", f"/v1/models/{TINY_MODEL}/predict", {"inputs": [CHUNK]}),
]
SESSION_ROUTES = [route for route in REST_ROUTES if "{sid}" in route[1]]


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def as_key(server: LiveServer, key: str | None) -> httpx.Client:
    """A REST client of `server` that sends `key` (None: no Authorization header)."""
    return httpx.Client(base_url=server.url, headers=bearer(key), timeout=30)


def created(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    return response.json()["id"]


def error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code and body["message"], body
    return body


def masked(value: object, sid: str) -> object:
    """A JSON value with the session id replaced, to compare answers about different ids."""
    text = value if isinstance(value, str) else json.dumps(value)
    return json.loads(text.replace(sid, "<id>"))


async def recv(ws: ClientConnection) -> dict:
    frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(frame, str), "server frames are JSON text"
    return json.loads(frame)


def ws_connect(url: str, authorization: str | None = None, **kwargs: object) -> connect:
    headers = {"Authorization": authorization} if authorization else None
    return connect(url, additional_headers=headers, compression=None, **kwargs)


async def refused(url: str, authorization: str | None = None) -> tuple[dict, int]:
    """The error frame and close code of a socket the server shuts after the handshake."""
    async with ws_connect(url, authorization) as ws:
        frame = await recv(ws)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert frame["type"] == "error", frame
        return frame, ws.close_code

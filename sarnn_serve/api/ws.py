"""The WebSocket handshake every socket route shares: Origin, API key, connection slot.

Close codes: a browser Origin that is not allowed gets the handshake refused (HTTP 403); after
the handshake, 4400 bad query parameters, 4401 missing or unknown API key, 4404 unknown session,
4429 too many connections (server-wide or for this key). Each close is preceded by an error
frame {"type": "error", "status", "error": {...}}.
"""

from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from urllib.parse import urlsplit

from fastapi import WebSocket

from sarnn_serve.auth import Principal
from sarnn_serve.errors import ServiceError, TooManyRequests, Unauthorized
from sarnn_serve.service import DataPlane
from sarnn_serve.settings import Settings

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_MANY = 4429


class Refused(Exception):
    """The socket was closed during the handshake; the route has nothing more to do."""


def origin_allowed(ws: WebSocket, settings: Settings) -> bool:
    """No Origin (not a browser), the same origin, or one listed in SARNN_ALLOWED_ORIGINS."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    allowed = {o.strip().rstrip("/") for o in settings.allowed_origins.split(",") if o.strip()}
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    return urlsplit(origin).netloc == ws.headers.get("host")


async def send_error(ws: WebSocket, dp: DataPlane, exc: ServiceError) -> None:
    """An error frame (counted once, as the HTTP handler counts errors)."""
    dp.record_error(exc)
    await ws.send_text(exc.json(type="error", status=exc.status))


async def refuse(ws: WebSocket, dp: DataPlane, exc: ServiceError, code: int) -> None:
    await send_error(ws, dp, exc)
    await ws.close(code)


@asynccontextmanager
async def handshake(ws: WebSocket, dp: DataPlane) -> AsyncIterator[Principal]:
    """Accept the socket for an allowed Origin and a known key, holding a connection slot for
    the body of the `async with`; raises Refused after closing the socket otherwise."""
    if not origin_allowed(ws, dp.settings):
        await ws.close(1008)
        raise Refused
    await ws.accept()
    try:
        key = ws.headers.get("authorization")
        token = ws.query_params.get("access_token")
        who = dp.authenticate(key or (f"Bearer {token}" if token else None), _host(ws))
    except Unauthorized as exc:
        await refuse(ws, dp, exc, CLOSE_UNAUTHORIZED)
        raise Refused from None
    with ExitStack() as slot:
        try:
            slot.enter_context(dp.stream_slot(who))
        except TooManyRequests as exc:
            await refuse(ws, dp, exc, CLOSE_TOO_MANY)
            raise Refused from None
        yield who


def _host(ws: WebSocket) -> str | None:
    return ws.client.host if ws.client else None

"""JSON bodies as every transport parses them: orjson first, Python's json as the fallback."""

import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from sarnn_serve.errors import InvalidJson


def parse_json(data: bytes | str) -> Any:
    """orjson first; on failure Python's json, which also reads NaN, Infinity and overflowing
    numbers, so that the request model names the bad field (InvalidJson if neither can)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise InvalidJson(f"not valid JSON: {exc}") from None


class _FastJsonRequest(Request):
    async def json(self) -> Any:
        """orjson; a body it refuses goes to Starlette's parser (Python's json), so that NaN
        is read and bad JSON fails exactly as it would without this class."""
        if not hasattr(self, "_json"):
            try:
                self._json = orjson.loads(await self.body())
            except orjson.JSONDecodeError:
                return await super().json()
        return self._json


class FastJsonRoute(APIRoute):
    """A route whose JSON body orjson parses (FastAPI then validates it as usual)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_fast_json(request: Request) -> Response:
            return await handler(_FastJsonRequest(request.scope, request.receive))

        return with_fast_json

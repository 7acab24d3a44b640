"""The Open Inference Protocol's error answer: every /v2 route renders its typed errors (its
dependencies' and its request validation's too) as {"error": "<code>: <message>"} here."""

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from sarnn_serve.api import v2_protocol
from sarnn_serve.errors import ServiceError
from sarnn_serve.validation import error_from

PREFIX = "/v2/"


def error_body(exc: ServiceError) -> bytes:
    """The protocol's error body: {"error": "<code>: <message>"} as ASCII JSON."""
    return json.dumps({"error": v2_protocol.error_message(exc)}, ensure_ascii=True).encode()


def error_response(request: Request, exc: ServiceError) -> Response:
    """{"error": "<message>"} with the error's status and headers, counted once."""
    request.app.state.plane.record_error(exc)
    return Response(
        error_body(exc),
        status_code=exc.status,
        headers=exc.http_headers(),
        media_type="application/json",
    )


class V2Route(APIRoute):
    """A route whose typed errors (its dependencies' too) get the protocol's error body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                return error_response(request, exc)
            except RequestValidationError as exc:  # a malformed body or parameter
                return error_response(request, error_from(exc.errors()))

        return answer

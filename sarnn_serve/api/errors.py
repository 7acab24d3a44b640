"""Map typed errors to HTTP responses: the one place HTTP status codes are decided."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from sarnn_serve.errors import InvalidJson, ServiceError
from sarnn_serve.schemas import ErrorBody
from sarnn_serve.validation import error_from

ERROR_RESPONSES = {
    401: {"model": ErrorBody, "description": "API keys are on and the key is missing or unknown."},
    404: {"model": ErrorBody, "description": "Unknown model, or a session unknown/expired."},
    409: {"model": ErrorBody, "description": "Chunk seq out of order (body names expected_seq)."},
    410: {"model": ErrorBody, "description": "The session's model is no longer served."},
    421: {
        "model": ErrorBody,
        "description": "The session lives in another worker process (--workers N with the "
        "memory store); use its WebSocket, or SARNN_STORE=redis.",
    },
    413: {"model": ErrorBody, "description": "Body or chunk over the configured limit."},
    422: {"model": ErrorBody, "description": "Malformed field (body names it) or invalid JSON."},
    429: {"model": ErrorBody, "description": "A per-key quota; Retry-After says when to retry."},
    503: {
        "model": ErrorBody,
        "description": "The session store is unreachable, or too many chunks wait for the "
        "model (overloaded, with Retry-After); nothing was applied; retry.",
    },
    500: {
        "model": ErrorBody,
        "description": "The session's stored record cannot be read here (session_unreadable): "
        "that session only; DELETE removes it.",
    },
    507: {"model": ErrorBody, "description": "The session store is out of memory."},
}
PARSE_FAILURE = "There was an error parsing the body"
METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def render(request: Request, exc: ServiceError) -> Response:
    """The response for a typed error, counted once."""
    request.app.state.plane.record_error(exc)
    return Response(
        exc.json(),
        status_code=exc.status,
        headers=exc.http_headers(),
        media_type="application/json",
    )


def raw_headers(exc: ServiceError) -> list[tuple[bytes, bytes]]:
    """A typed error's extra HTTP headers as ASGI header pairs (for the pure ASGI paths)."""
    return [(k.lower().encode(), v.encode()) for k, v in (exc.http_headers() or {}).items()]


def allowed_methods(request: Request) -> str:
    """Every method some route takes at the request's path (the router's 405 names only those
    of the first route there: GET /v1/sessions and POST /v1/sessions are two routes)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in METHODS
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn errors into {"error": {...}} bodies."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        return render(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == PARSE_FAILURE:
            return render(request, InvalidJson("not valid UTF-8 JSON"))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        request.app.state.plane.count_error(code)
        body = {"error": {"code": code, "message": str(exc.detail)}}
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return render(request, error_from(exc.errors()))

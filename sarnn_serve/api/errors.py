"""Map typed errors to HTTP responses: the one place status codes are decided."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sarnn_serve.errors import ServiceError
from sarnn_serve.schemas import ErrorBody

ERROR_RESPONSES = {
    404: {"model": ErrorBody, "description": "Unknown model, or a session unknown/expired."},
    409: {"model": ErrorBody, "description": "Chunk seq out of order (body names expected_seq)."},
    413: {"model": ErrorBody, "description": "Body or chunk over the configured limit."},
    422: {"model": ErrorBody, "description": "Malformed field (body names the field)."},
}


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = parts[0] if parts else "body"
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def install(app: FastAPI) -> None:
    """Register the handlers that turn errors into {"error": {...}} bodies."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        request.app.state.prom.errors.labels(exc.code).inc()
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        request.app.state.prom.errors.labels(code).inc()
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        bad_json = first.get("type") == "json_invalid"
        # a JSON syntax error's loc is ("body", <char offset>): the field at fault is the body
        field = "body" if bad_json else _field(tuple(first.get("loc", ())))
        code = "invalid_json" if bad_json else "invalid_input"
        request.app.state.prom.errors.labels(code).inc()
        body = {"error": {"code": code, "message": f"{field}: {first['msg']}", "field": field}}
        return JSONResponse(body, status_code=422)

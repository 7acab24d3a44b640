"""The OpenAPI document, completed with the limits that depend on the served models and the
settings (row length = the models' feature count, steps per chunk, sequences per call), so
that it says what the server enforces and a schema-driven client produces valid chunks."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from sarnn_serve.schemas import MAX_SEQ


def _limit_rows(steps: dict[str, Any], n_features: int | None, max_steps: int) -> None:
    steps["maxItems"] = max_steps
    if n_features is not None:
        steps["items"]["minItems"] = steps["items"]["maxItems"] = n_features


def install(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, after models load)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            plane, settings = app.state.plane, app.state.settings
            widths = plane.feature_widths()
            n_features = widths.pop() if len(widths) == 1 else None
            schemas = doc["components"]["schemas"]
            chunk = schemas["ChunkRequest"]["properties"]["inputs"]
            _limit_rows(chunk, n_features, settings.max_chunk_steps)
            batch = schemas["PredictRequest"]["properties"]["inputs"]
            batch["maxItems"] = settings.max_predict_sequences
            _limit_rows(batch["items"], n_features, settings.max_chunk_steps)
            # FastAPI writes numeric bounds as floats: 2**63 - 1 would read as 2**63
            schemas["ChunkRequest"]["properties"]["seq"] |= {"minimum": 0, "maximum": MAX_SEQ}
            if plane.default_model() is None:  # several models and none the default
                create = schemas["SessionCreate"]
                create["required"] = sorted({*create.get("required", ()), "model"})
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi

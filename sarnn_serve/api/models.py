"""REST routes for models: list, card, stateless prediction, live stats."""

from fastapi import APIRouter, Response

from sarnn_serve.api import codec
from sarnn_serve.api.deps import Caller, Plane
from sarnn_serve.api.errors import ERROR_RESPONSES
from sarnn_serve.api.json_body import FastJsonRoute
from sarnn_serve.schemas import PredictRequest, PredictResponse

router = APIRouter(
    prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES, route_class=FastJsonRoute
)


@router.get("")
async def list_models(dp: Plane, _: Caller) -> list[dict]:
    """Every served model with its card."""
    return dp.list_models()


@router.get("/{name}")
async def get_model(name: str, dp: Plane, _: Caller) -> dict:
    """The model card: cell, sizes, labels, training recipe, evaluation, cost per step."""
    return dp.describe(name)


@router.get("/{name}/stats")
async def model_stats(name: str, dp: Plane, _: Caller) -> dict:
    """Update rate and savings overall and over the last minute, steps/s, active sessions."""
    return dp.model_stats(name)


@router.post("/{name}/predict", response_model=PredictResponse)
async def predict(name: str, body: PredictRequest, dp: Plane, _: Caller) -> Response:
    """Classify whole sequences from a zero state (nothing is stored)."""
    result = await dp.predict(name, body)
    return Response(codec.dumps(codec.predict_body(result)), media_type="application/json")

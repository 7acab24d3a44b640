"""REST routes for sessions and their chunks."""

from fastapi import APIRouter, Response, status

from sarnn_serve.api.deps import Plane
from sarnn_serve.api.errors import ERROR_RESPONSES
from sarnn_serve.schemas import ChunkRequest, ChunkResponse, SessionCreate, SessionSummary

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses=ERROR_RESPONSES)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SessionSummary)
async def create_session(body: SessionCreate, dp: Plane) -> dict:
    """Open a session: a hidden state of one model that chunks advance in seq order."""
    return await dp.create_session(body.model, body.threshold, body.idle_timeout_s)


@router.get("", summary="Sessions recently active on this replica")
async def recent_sessions(dp: Plane) -> list[dict]:
    """Ids and models of up to 100 sessions that advanced most recently here (newest first)."""
    return [{"id": sid, "model": model} for sid, model in reversed(dp.recent.items())]


@router.get("/{session_id}", response_model=SessionSummary)
async def get_session(session_id: str, dp: Plane) -> dict:
    """Totals of a session: steps, updates, update rate, multiply-adds, next expected seq."""
    return await dp.get_session(session_id)


@router.delete("/{session_id}", response_model=SessionSummary)
async def delete_session(session_id: str, dp: Plane) -> dict:
    """End a session and return its final summary."""
    return await dp.delete_session(session_id)


@router.post("/{session_id}/chunks", response_model=ChunkResponse)
async def post_chunk(session_id: str, body: ChunkRequest, dp: Plane):
    """Advance the session by one or more steps. `seq` must be the session's next_seq; repeating
    the last seq with the same inputs returns the stored answer without advancing."""
    payload = await dp.advance(session_id, body.seq, body.inputs, body.include_mask)
    return Response(payload, media_type="application/json")

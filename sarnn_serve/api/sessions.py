"""REST routes for sessions and their chunks."""

from fastapi import APIRouter, Response, status

from sarnn_serve.api import codec
from sarnn_serve.api.deps import Caller, Plane
from sarnn_serve.api.errors import ERROR_RESPONSES
from sarnn_serve.api.json_body import FastJsonRoute
from sarnn_serve.schemas import (
    ChunkColumns,
    ChunkRequest,
    ChunkResponse,
    ErrorBody,
    SessionCreate,
    SessionDeleted,
    SessionRef,
    SessionSummary,
)

router = APIRouter(
    prefix="/v1/sessions", tags=["sessions"], responses=ERROR_RESPONSES, route_class=FastJsonRoute
)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SessionSummary)
async def create_session(body: SessionCreate, dp: Plane, who: Caller) -> dict:
    """Open a session: a hidden state of one model that chunks advance in seq order."""
    return await dp.create_session(who, body)


@router.get(
    "",
    summary="Sessions recently active on this replica",
    response_model=list[SessionRef],
    responses={403: {"model": ErrorBody, "description": "Listing is off (the default)."}},
)
async def recent_sessions(dp: Plane, who: Caller) -> list[dict]:
    """Ids and models of up to 100 sessions that advanced most recently here (newest first):
    with API keys, the caller's own (every session for an admin key); with keys off, only if
    SARNN_LIST_SESSIONS is true."""
    return await dp.list_sessions(who)


@router.get("/{session_id}", response_model=SessionSummary)
async def get_session(session_id: str, dp: Plane, who: Caller) -> dict:
    """Totals of a session: steps, updates, update rate, multiply-adds, next expected seq."""
    return await dp.get_session(who, session_id)


@router.delete("/{session_id}", response_model=SessionSummary | SessionDeleted)
async def delete_session(session_id: str, dp: Plane, who: Caller) -> dict:
    """End a session and return its final summary (or, for a session whose record cannot be
    read here or whose model is no longer served, why there is none)."""
    return await dp.delete_session(who, session_id)


@router.post("/{session_id}/chunks", response_model=ChunkResponse | ChunkColumns)
async def post_chunk(session_id: str, body: ChunkRequest, dp: Plane, who: Caller) -> Response:
    """Advance the session by one or more steps. `seq` must be the session's next_seq; repeating
    the last seq with the same inputs returns the stored answer without advancing. The answer
    is per step (answer=steps, the default) or the lean columns (answer=columns)."""
    result = await dp.advance(who, session_id, body)
    return Response(codec.chunk_json(result, body), media_type="application/json")

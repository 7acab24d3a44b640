"""A Python client for sarnn-serve (runtime install only: no torch).

    from sarnn_serve.client import Client

    with Client("http://127.0.0.1:8000", api_key=KEY) as client:
        with client.open("watch-gru", threshold=0.3) as session:  # deleted on exit
            for answer in session.stream_csv("recording.csv", size=16):
                print(answer.first_index, answer.labels, answer.updates)

Chunks carry the session's seq; a dropped connection or a restarted replica is met by sending
the unanswered chunk again with the same seq, which the server applies once (see `aio`).
`AsyncClient` is the same for asyncio code.
"""

from sarnn_serve.client.aio import AsyncClient, AsyncSession
from sarnn_serve.client.chunks import array_chunks, csv_chunks
from sarnn_serve.client.sync import Client, Session
from sarnn_serve.client.types import (
    Answer,
    ApiError,
    ClientError,
    ProtocolError,
    RetriesExhausted,
    Retry,
    SessionInfo,
    SessionLost,
)

__all__ = [
    "Answer",
    "ApiError",
    "AsyncClient",
    "AsyncSession",
    "Client",
    "ClientError",
    "ProtocolError",
    "RetriesExhausted",
    "Retry",
    "Session",
    "SessionInfo",
    "SessionLost",
    "array_chunks",
    "csv_chunks",
]

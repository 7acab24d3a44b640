"""The blocking client: the asyncio client run on an event loop of its own (asyncio.Runner), so
both behave the same. Use AsyncClient from code that already runs an event loop."""

import asyncio
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sarnn_serve.client.aio import AsyncClient, AsyncSession, Transport
from sarnn_serve.client.chunks import array_chunks, csv_chunks
from sarnn_serve.client.types import Answer, Retry, SessionInfo
from sarnn_serve.client.wire import Encoding


class Client:
    """A connection to one sarnn-serve; see AsyncClient for the arguments."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retry: Retry | None = None,
    ) -> None:
        self._runner = asyncio.Runner()
        self._aio = AsyncClient(url, api_key=api_key, timeout=timeout, retry=retry)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._runner.run(self._aio.aclose())
        self._runner.close()

    def models(self) -> list[dict[str, Any]]:
        """The cards of the server's models."""
        return self._runner.run(self._aio.models())

    def model(self, name: str | None = None) -> dict[str, Any]:
        """The card of model `name` (default: the one sessions get when they name none)."""
        return self._runner.run(self._aio.model(name))

    def open(
        self,
        model: str | None = None,
        *,
        threshold: float | None = None,
        target_update_rate: float | None = None,
        degrade: bool = False,
        idle_timeout_s: float | None = None,
        transport: Transport = "websocket",
        encoding: Encoding = "binary",
        include_probabilities: bool = False,
        include_mask: bool = False,
    ) -> "Session":
        """Open a new session (see AsyncClient.open)."""
        opened = self._aio.open(
            model,
            threshold=threshold,
            target_update_rate=target_update_rate,
            degrade=degrade,
            idle_timeout_s=idle_timeout_s,
            transport=transport,
            encoding=encoding,
            include_probabilities=include_probabilities,
            include_mask=include_mask,
        )
        return Session(self._runner, self._runner.run(opened))

    def resume(
        self,
        session_id: str,
        *,
        transport: Transport = "websocket",
        encoding: Encoding = "binary",
        include_probabilities: bool = False,
        include_mask: bool = False,
    ) -> "Session":
        """Continue an existing session at its next seq."""
        resumed = self._aio.resume(
            session_id,
            transport=transport,
            encoding=encoding,
            include_probabilities=include_probabilities,
            include_mask=include_mask,
        )
        return Session(self._runner, self._runner.run(resumed))

    def session_info(self, session_id: str) -> SessionInfo:
        return self._runner.run(self._aio.session_info(session_id))


class Session:
    """One session (see AsyncSession): `send`, `stream`, `summary`, `delete`."""

    def __init__(self, runner: asyncio.Runner, session: AsyncSession) -> None:
        self._runner = runner
        self._aio = session
        self.id = session.id
        self.info = session.info
        self.card = session.card
        self.labels = session.labels
        self.features = session.features

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def next_seq(self) -> int:
        return self._aio.next_seq

    @property
    def resent(self) -> int:
        """Chunks sent again after the server's store lost them (409 session_rolled_back)."""
        return self._aio.resent

    def send(self, x: Any) -> Answer:
        """Send steps x [T, F] (or one step [F]) as the next chunk; its answer."""
        return self._runner.run(self._aio.send(x))

    def stream(self, chunks: Iterable[Any]) -> Iterator[Answer]:
        """Send each chunk in turn; yield each answer."""
        for chunk in chunks:
            yield self.send(chunk)

    def stream_array(self, x: Any, size: int = 1) -> Iterator[Answer]:
        """Stream the steps of x [T, F] in chunks of `size` steps."""
        return self.stream(array_chunks(x, size))

    def stream_csv(self, path: str | Path, size: int = 1) -> Iterator[Answer]:
        """Stream a CSV recording (the card's feature columns, by name) `size` steps a time."""
        return self.stream(csv_chunks(path, self.features, size))

    def summary(self) -> SessionInfo:
        return self._runner.run(self._aio.summary())

    def detach(self) -> None:
        """Close the socket; the session stays (resume it by id)."""
        self._runner.run(self._aio.detach())

    def delete(self) -> SessionInfo:
        """End the session; its final summary."""
        return self._runner.run(self._aio.delete())

    def close(self) -> None:
        """Delete the session (if it still exists) and close its socket."""
        self._runner.run(self._aio.close())

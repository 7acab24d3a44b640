"""The asyncio client: sessions, chunks in seq order, retries that neither lose nor double a step.

A session sends one chunk at a time. Each chunk gets the session's next seq; when the connection
fails or the server answers that it may retry (503, 429, a concurrent update), the same chunk
goes again with the same seq, on a new connection if needed, until `Retry.timeout_s` has
passed. The server applies a seq once: a resent chunk that it had already applied is answered
from its stored answer (`Answer.replayed`), so a dropped connection or a restarted replica costs
a resend, never a lost or doubled step. If the server's Redis fails over to a replica that lacked
the last answered chunks, the next chunk gets 409 session_rolled_back naming the first chunk the
session lacks: the session sends its kept chunks again from there (`Retry.keep_chunks`).
"""

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx
import numpy as np

from sarnn_serve.client.chunks import array_chunks, csv_chunks
from sarnn_serve.client.links import (
    NOT_SENT,
    TRANSPORT_ERRORS,
    RestLink,
    SocketLink,
    raise_for_answer,
)
from sarnn_serve.client.types import Answer, ApiError, RetriesExhausted, Retry, SessionInfo
from sarnn_serve.client.wire import ENCODINGS, ChunkOptions, Encoding, as_steps

log = logging.getLogger("sarnn.client")
T = TypeVar("T")
Transport = Literal["websocket", "rest"]


def base_urls(url: str) -> tuple[str, str]:
    """(http base, ws base) of a server URL given as http(s):// or ws(s)://."""
    parts = urlsplit(url)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"a server URL looks like http://HOST:PORT, got {url!r}")
    path = parts.path.rstrip("/")
    secure = parts.scheme in ("https", "wss")
    http = urlunsplit(("https" if secure else "http", parts.netloc, path, "", ""))
    return http, urlunsplit((schemes[parts.scheme], parts.netloc, path, "", ""))


class AsyncClient:
    """A connection to one sarnn-serve (or a load balancer in front of replicas sharing a
    Redis store). `url`: http(s):// or ws(s)://; `api_key`: sent as a Bearer token."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retry: Retry | None = None,
    ) -> None:
        self.http_url, self.ws_url = base_urls(url)
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.retry = retry or Retry()
        self.http = httpx.AsyncClient(
            base_url=self.http_url, headers=self.headers, timeout=timeout, trust_env=False
        )
        self._cards: dict[str, dict[str, Any]] = {}

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # requests --------------------------------------------------------------------------

    async def retrying(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        repeatable: bool = True,
        on_failure: Callable[[], Awaitable[None]] | None = None,
        context: dict[str, Any] | None = None,
    ) -> T:
        """`attempt()` until it succeeds, fails for good, or the retry time is over. A request
        that is not `repeatable` is sent again only if it never left (or the server said so);
        `context` (e.g. session and seq) goes into the log line of each retry."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry.timeout_s
        delay = self.retry.first_delay_s
        while True:
            try:
                return await attempt()
            except ApiError as exc:
                if not exc.retryable:
                    raise
                failure, wait = exc, max(delay, exc.retry_after_s)
            except TRANSPORT_ERRORS as exc:
                if not repeatable and not isinstance(exc, NOT_SENT):
                    raise
                failure, wait = exc, delay
                if on_failure is not None:
                    await on_failure()
            if loop.time() + wait > deadline:
                raise RetriesExhausted(
                    f"gave up after {self.retry.timeout_s:g} s: {type(failure).__name__}: {failure}"
                ) from failure
            error = f"{type(failure).__name__}: {failure}"
            log.info("retrying", extra={**(context or {}), "error": error, "wait_s": wait})
            await asyncio.sleep(wait)
            delay = min(2 * delay, self.retry.max_delay_s)

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, repeatable: bool = True
    ) -> Any:
        """A JSON request with retries; its JSON answer, or ApiError."""

        async def attempt() -> Any:
            response = await self.http.request(method, path, json=body)
            raise_for_answer(response)
            return response.json()

        return await self.retrying(attempt, repeatable=repeatable)

    # models ----------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        """The cards of the server's models (GET /v1/models)."""
        return await self.request("GET", "/v1/models")

    async def model(self, name: str | None = None) -> dict[str, Any]:
        """The card of model `name`, or of the model sessions get when they name none (the
        only one, or the server's default); cached."""
        if name is None:
            cards = await self.models()
            chosen = [c for c in cards if c.get("default")] if len(cards) > 1 else cards
            if len(chosen) != 1:
                names = ", ".join(c["name"] for c in cards) or "none"
                raise ValueError(f"the server has several models ({names}) and no default")
            self._cards[chosen[0]["name"]] = chosen[0]
            return chosen[0]
        if name not in self._cards:
            self._cards[name] = await self.request("GET", f"/v1/models/{quote(name, safe='')}")
        return self._cards[name]

    # sessions --------------------------------------------------------------------------

    async def open(
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
    ) -> "AsyncSession":
        """Open a new session (POST /v1/sessions). `threshold` or `target_update_rate` set its
        gate (default: the card's threshold); `transport` and `encoding` say how its chunks
        travel: binary frames, JSON or msgpack over a WebSocket, or JSON over REST."""
        _check_link(transport, encoding)
        options = {
            "model": model,
            "threshold": threshold,
            "target_update_rate": target_update_rate,
            "idle_timeout_s": idle_timeout_s,
        }
        body: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
        if degrade:
            body["degrade"] = True
        # a lost answer may leave an unused session behind (it expires when idle), never two
        # sessions in use: creation is retried only when the request did not reach the server
        info = SessionInfo.from_json(
            await self.request("POST", "/v1/sessions", body, repeatable=False)
        )
        chunk = ChunkOptions(include_probabilities, include_mask)
        return AsyncSession(self, info, await self.model(info.model), transport, encoding, chunk)

    async def resume(
        self,
        session_id: str,
        *,
        transport: Transport = "websocket",
        encoding: Encoding = "binary",
        include_probabilities: bool = False,
        include_mask: bool = False,
    ) -> "AsyncSession":
        """Continue an existing session at its next seq (GET /v1/sessions/{id})."""
        _check_link(transport, encoding)
        info = await self.session_info(session_id)
        chunk = ChunkOptions(include_probabilities, include_mask)
        return AsyncSession(self, info, await self.model(info.model), transport, encoding, chunk)

    async def session_info(self, session_id: str) -> SessionInfo:
        """A session's summary: totals and next seq."""
        path = f"/v1/sessions/{quote(session_id, safe='')}"
        return SessionInfo.from_json(await self.request("GET", path))


def _check_link(transport: str, encoding: str) -> None:
    if transport not in ("websocket", "rest"):
        raise ValueError(f"transport is websocket or rest, got {transport!r}")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding is one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if transport == "rest" and encoding != "json":
        raise ValueError("REST chunks are JSON; binary and msgpack need transport='websocket'")


class AsyncSession:
    """One session: `send` chunks in order, `stream` many; `close` deletes it."""

    def __init__(
        self,
        client: AsyncClient,
        info: SessionInfo,
        card: dict[str, Any],
        transport: Transport,
        encoding: Encoding,
        options: ChunkOptions,
    ) -> None:
        self.client = client
        self.info = info
        self.id = info.id
        self.card = card
        self.next_seq = info.next_seq
        self._kept: dict[int, np.ndarray] = {}  # seq -> rows of the last answered chunks
        self.resent = 0  # chunks sent again after the server's store lost them
        self.options = options
        self.labels: list[str] = list(card["class_labels"])
        self.features: list[str] = list(card["feature_names"])
        if transport == "rest":
            self.link: RestLink | SocketLink = RestLink(client.http, self.id, self.labels)
        else:
            query = urlencode({"answer": "columns"})
            url = f"{client.ws_url}/v1/sessions/{quote(self.id, safe='')}/stream?{query}"
            self.link = SocketLink(url, client.headers, encoding, self.labels, client.timeout)

    async def __aenter__(self) -> "AsyncSession":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, x: Any) -> Answer:
        """Send steps x [T, F] (or one step [F]) as the next chunk; its answer. Retried with the
        same seq until answered (see the module docstring); ApiError if the server refuses it
        (e.g. SessionLost, or session_rolled_back reaching past the kept chunks),
        RetriesExhausted if it cannot be reached for Retry.timeout_s."""
        rows = as_steps(x, len(self.features))
        seq = self.next_seq
        answer = await self._deliver(seq, rows)
        if self.client.retry.keep_chunks:
            self._kept[seq] = rows.copy()
            while len(self._kept) > self.client.retry.keep_chunks:
                del self._kept[next(iter(self._kept))]
        self.next_seq = seq + 1
        return answer

    async def _deliver(self, seq: int, rows: np.ndarray) -> Answer:
        """Chunk `seq`, retried; after 409 session_rolled_back (the server's store lost chunks
        it had answered, in a failover), the kept chunks from the store's next seq go again
        first (their answers are the ones already returned), then this one."""
        while True:
            try:
                return await self.client.retrying(
                    lambda: self.link.exchange(seq, rows, self.options),
                    on_failure=self.link.reset,
                    context={"session": self.id, "model": self.info.model, "seq": seq},
                )
            except ApiError as exc:
                first = int(exc.detail.get("expected_seq", seq))
                if exc.code != "session_rolled_back" or not (
                    first < seq and all(s in self._kept for s in range(first, seq))
                ):
                    raise
                log.warning(
                    "the server lost answered chunks; sending them again",
                    extra={"session": self.id, "from_seq": first, "seq": seq},
                )
                for lost in range(first, seq):
                    await self._deliver(lost, self._kept[lost])
                    self.resent += 1

    async def stream(self, chunks: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Answer]:
        """Send each chunk in turn; yield each answer."""
        if isinstance(chunks, AsyncIterable):
            async for chunk in chunks:
                yield await self.send(chunk)
        else:
            for chunk in chunks:
                yield await self.send(chunk)

    def stream_array(self, x: Any, size: int = 1) -> AsyncIterator[Answer]:
        """Stream the steps of x [T, F] in chunks of `size` steps."""
        return self.stream(array_chunks(x, size))

    def stream_csv(self, path: str | Path, size: int = 1) -> AsyncIterator[Answer]:
        """Stream a CSV recording (a header row of column names; the card's feature columns
        are read by name) in chunks of `size` steps."""
        return self.stream(csv_chunks(path, self.features, size))

    async def summary(self) -> SessionInfo:
        """The session's current totals and next seq."""
        return await self.client.session_info(self.id)

    async def detach(self) -> None:
        """Close the socket; the session stays (resume it by id)."""
        await self.link.close()

    async def delete(self) -> SessionInfo:
        """End the session; its final summary."""
        await self.link.close()
        path = f"/v1/sessions/{quote(self.id, safe='')}"
        return SessionInfo.from_json(await self.client.request("DELETE", path))

    async def close(self) -> None:
        """Delete the session (if it still exists) and close its socket."""
        try:
            await self.delete()
        except ApiError as exc:
            if exc.status != 404:
                raise

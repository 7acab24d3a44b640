"""Slow clients against a real sarnn-serve (uvicorn with httptools) on loopback, over raw sockets.

A connection that sends its headers slower than SARNN_HEADER_TIMEOUT_S allows (1 s here), or its
body slower than SARNN_BODY_TIMEOUT_S + received / SARNN_BODY_MIN_RATE (1 s + 1 s per 1000
bytes), is answered 408 and closed, and /healthz stays answerable meanwhile, also when the slow
connections outnumber the descriptors the process may open. Clients at a fair rate, and
WebSockets idle past the header deadline, are not cut.
"""

import json
import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.service_fixtures import LiveServer, start_server, stop_server

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
BODY_MIN_RATE = 1000
MAX_HEADER_BYTES = 4096
LIMITS = {
    "SARNN_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "SARNN_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "SARNN_BODY_MIN_RATE": str(BODY_MIN_RATE),
    "SARNN_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
}
DRIBBLE_S = 0.2  # one byte per this many seconds: 5 bytes/s
SLACK_S = 1.5  # scheduling on two busy cores


@pytest.fixture(scope="module")
def server(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(served_models, tmp_path_factory.mktemp("slowloris"), LIMITS)
    yield live
    stop_server(live)


def _port(server: LiveServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _open(port: int, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(first)
    sock.setblocking(False)
    return sock


def _closed(sock: socket.socket, received: bytearray) -> bool:
    """Whether the server closed `sock` (what it sent before is added to `received`)."""
    try:
        while data := sock.recv(65536):
            received += data
        return True  # EOF
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def _dribble(
    socks: list[socket.socket], until_s: float, probe: Callable[[], None] | None = None
) -> tuple[list[float | None], list[bytes]]:
    """Send each socket one more byte every DRIBBLE_S until the server closes it or `until_s`
    passes; per socket, seconds until it was closed (None: still open) and what it received.
    `probe()` runs once, DRIBBLE_S in, while every socket is open."""
    started = time.monotonic()
    closed_at: list[float | None] = [None] * len(socks)
    received = [bytearray() for _ in socks]
    while (elapsed := time.monotonic() - started) < until_s and None in closed_at:
        for i, sock in enumerate(socks):
            if closed_at[i] is None and _closed(sock, received[i]):
                closed_at[i] = elapsed
            elif closed_at[i] is None:
                try:
                    sock.send(b"a")
                except BlockingIOError:
                    pass
                except OSError:
                    closed_at[i] = elapsed
        if probe is not None and elapsed >= DRIBBLE_S:
            probe()
            probe = None
        time.sleep(DRIBBLE_S)
    for sock in socks:
        sock.close()
    return closed_at, [bytes(r) for r in received]


def _healthz(url: str, timeout: float = 2.0) -> int:
    return httpx.get(f"{url}/healthz", timeout=timeout).status_code


def test_fifty_connections_dribbling_headers_are_closed_and_healthz_answers(
    server: LiveServer,
) -> None:
    socks = [
        _open(_port(server), b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(50)
    ]
    during = []
    closed_at, received = _dribble(
        socks, HEADER_TIMEOUT_S + 4, probe=lambda: during.append(_healthz(server.url))
    )
    assert during == [200], "/healthz did not answer beside the slow connections"
    assert None not in closed_at, f"{closed_at.count(None)} of 50 still open after 5 s"
    assert max(closed_at) <= HEADER_TIMEOUT_S + SLACK_S, f"closed after {max(closed_at):.2f} s"
    assert min(closed_at) >= HEADER_TIMEOUT_S - DRIBBLE_S, "closed before the deadline"
    assert all(r.startswith(b"HTTP/1.1 408 ") for r in received), received[0][:80]
    body = received[0].split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert _healthz(server.url) == 200


def test_an_idle_connection_is_closed_without_an_answer(server: LiveServer) -> None:
    sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=HEADER_TIMEOUT_S + 5)
    started = time.monotonic()
    assert sock.recv(1024) == b""  # closed, nothing said
    assert time.monotonic() - started <= HEADER_TIMEOUT_S + SLACK_S
    sock.close()


def _response(sock: socket.socket) -> bytes:
    """One whole response (headers and its Content-Length of body) from a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(
        next(
            line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        ).split(b":")[1]
    )
    while len(body) < length:
        body += sock.recv(4096)
    return data


def test_kept_alive_connection_must_send_its_next_headers_in_time(server: LiveServer) -> None:
    sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _response(sock).startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request, never finished
    started = time.monotonic()
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert time.monotonic() - started <= HEADER_TIMEOUT_S + SLACK_S
    sock.close()


def test_headers_over_the_size_limit_are_refused(server: LiveServer) -> None:
    sock = _open(_port(server), b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 2 * MAX_HEADER_BYTES)
    _, (received,) = _dribble([sock], HEADER_TIMEOUT_S / 2)
    assert received.startswith(b"HTTP/1.1 431 "), received[:80]


@pytest.mark.parametrize(
    "path", ["/v1/sessions", "/v1/sessions/abc/chunks", "/v2/models/watch-tiny/infer"]
)
def test_a_body_dribbled_below_the_rate_is_answered_408_and_closed(
    server: LiveServer, path: str
) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{"
    )
    socks = [_open(_port(server), head.encode()) for _ in range(5)]
    closed_at, received = _dribble(socks, BODY_TIMEOUT_S + 4)
    assert None not in closed_at, "a slow body kept its connection"
    # due at 1 s + about 10 bytes / 1000 bytes per s
    assert max(closed_at) <= BODY_TIMEOUT_S + SLACK_S
    for answer in received:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert b"connection: close" in answer.lower()
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert _healthz(server.url) == 200


def test_a_body_at_a_fair_rate_takes_as_long_as_it_needs(server: LiveServer) -> None:
    body = b"{" + b" " * 2998 + b"}"  # 3000 bytes in 300-byte pieces, 3000 bytes/s
    head = (
        "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=10)
    sock.sendall(head.encode())
    started = time.monotonic()
    for k in range(0, len(body), 300):
        sock.sendall(body[k : k + 300])
        time.sleep(0.1)
    answer = sock.recv(65536)
    assert time.monotonic() - started > BODY_TIMEOUT_S  # longer than the base timeout
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]
    sock.close()


def test_a_websocket_idle_past_the_header_deadline_stays_open(server: LiveServer) -> None:
    with connect(f"{server.ws_url}/v1/stream", compression=None) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session"
        time.sleep(HEADER_TIMEOUT_S + 1)
        ws.send(json.dumps({"seq": 0, "inputs": [[0.0] * 6]}))
        assert json.loads(ws.recv(timeout=10))["type"] == "chunk"


def test_slow_connections_beyond_the_descriptor_limit_do_not_starve_healthz(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The audit's case: more slow connections than the process has descriptors."""
    live = start_server(served_models, tmp_path_factory.mktemp("slowloris-fds"), LIMITS)
    try:
        used = len(list(Path(f"/proc/{live.process.pid}/fd").iterdir()))
        limit = used + 40
        resource.prlimit(live.process.pid, resource.RLIMIT_NOFILE, (limit, limit))
        socks = [
            _open(_port(live), b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(120)
        ]
        answered: list[float] = []

        def probe() -> None:
            started = time.monotonic()
            while time.monotonic() - started < 4 * HEADER_TIMEOUT_S + 2 * SLACK_S:
                try:
                    if _healthz(live.url, timeout=0.5) == 200:
                        answered.append(time.monotonic() - started)
                        return
                except httpx.TransportError:
                    time.sleep(0.1)

        _dribble(socks, DRIBBLE_S * 2, probe=probe)
        assert answered, f"/healthz unanswered with 120 slow connections and {limit} descriptors"
    finally:
        stop_server(live)

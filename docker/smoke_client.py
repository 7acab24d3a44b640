"""Smoke checks of a running sarnn-serve, standard library only (any python3 >= 3.11 runs it).

    python3 docker/smoke_client.py ready URL            # wait for /readyz
    python3 docker/smoke_client.py rest URL MODEL       # session, chunk 0, its retry, delete
    python3 docker/smoke_client.py stack LB URL1 URL2 MODEL
        # through a load balancer and across two replicas sharing Redis: chunks of one session
        # alternate between replicas, and a WebSocket through the balancer streams into it

Used by docker/build-and-smoke.sh; exits non-zero with a reason on any failure.
"""

import base64
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

SAMPLES = [[0.1, 0.9, -0.2, 0.0, 0.1, 0.0], [0.2, 0.8, -0.1, 0.1, 0.0, 0.0]]


def call(base: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_ready(base: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, body = call(base, "GET", "/readyz")
            if status == 200:
                return body
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"smoke: {base}/readyz did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.5)


def check_chunk(answer: dict, seq: int, steps: int) -> None:
    assert answer.get("type") == "chunk", answer
    assert len(answer["steps"]) == steps and answer["session"]["next_seq"] == seq + 1, answer
    for step in answer["steps"]:
        assert abs(sum(step["probabilities"]) - 1) < 1e-3 and step["updates"] >= 0, step


def rest(base: str, model: str) -> None:
    ready = wait_ready(base)
    assert model in json.dumps(ready["models"]), ready
    status, session = call(base, "POST", "/v1/sessions", {"model": model})
    assert status in (200, 201), session
    sid = session["id"]
    chunk = {"seq": 0, "inputs": SAMPLES}
    status, answer = call(base, "POST", f"/v1/sessions/{sid}/chunks", chunk)
    assert status == 200 and not answer["replayed"], answer
    check_chunk(answer, 0, len(SAMPLES))
    # the retry of seq 0 is answered again, not applied twice
    _, again = call(base, "POST", f"/v1/sessions/{sid}/chunks", chunk)
    assert again["replayed"] and again["steps"] == answer["steps"], again
    status, final = call(base, "DELETE", f"/v1/sessions/{sid}")
    assert status == 200 and final["steps"] == len(SAMPLES), final
    labels = [s["label"] for s in answer["steps"]]
    updates = [s["updates"] for s in answer["steps"]]
    print(f"smoke: chunk 0 -> labels {labels}, updates {updates}; retry replayed; deleted")


class WebSocket:
    """Just enough of RFC 6455 for text frames: a client that masks, a server that does not."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("websocket: connection closed")
        return data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self._recv()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, obj: dict, opcode: int = 1) -> None:
        payload = json.dumps(obj).encode() if opcode == 1 else obj["raw"]
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = bytes([0x80 | opcode, 0x80 | n])
        elif n < 65536:
            header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def recv(self) -> dict:
        first, second = self._take(2)
        n = second & 0x7F
        if n == 126:
            n = int.from_bytes(self._take(2), "big")
        elif n == 127:
            n = int.from_bytes(self._take(8), "big")
        payload = self._take(n)
        assert first & 0x0F == 1, f"websocket: expected a text frame, got opcode {first & 0x0F}"
        return json.loads(payload)

    def close(self) -> None:
        self.send({"raw": (1000).to_bytes(2, "big")}, opcode=8)
        self.sock.close()


def stack(lb: str, one: str, two: str, model: str) -> None:
    for base in (one, two, lb):
        wait_ready(base)
    status, session = call(lb, "POST", "/v1/sessions", {"model": model})
    assert status in (200, 201), session
    sid = session["id"]
    # chunks of one session alternate between the replicas: the state is in Redis
    for seq, base in enumerate((one, two, one, two)):
        status, answer = call(
            base, "POST", f"/v1/sessions/{sid}/chunks", {"seq": seq, "inputs": SAMPLES}
        )
        assert status == 200, (base, answer)
        check_chunk(answer, seq, len(SAMPLES))
    # a chunk raced to both replicas is applied once: the second is a replay (or a conflict)
    chunk = {"seq": 4, "inputs": SAMPLES}
    (s1, a1), (s2, a2) = (call(b, "POST", f"/v1/sessions/{sid}/chunks", chunk) for b in (one, two))
    assert s1 == 200 and s2 == 200 and a2["replayed"] and a2["steps"] == a1["steps"], (a1, a2)
    # and a WebSocket through the balancer streams into the same session
    ws_url = lb.replace("http://", "ws://", 1) + f"/v1/sessions/{sid}/stream"
    ws = WebSocket(ws_url)
    hello = ws.recv()
    assert hello["type"] == "session" and hello["session"]["next_seq"] == 5, hello
    ws.send({"seq": 5, "inputs": SAMPLES})
    check_chunk(ws.recv(), 5, len(SAMPLES))
    ws.close()
    _, final = call(lb, "DELETE", f"/v1/sessions/{sid}")
    assert final["steps"] == 6 * len(SAMPLES), final
    print(
        "smoke: stack: one session's chunks across both replicas, a raced chunk applied once, "
        f"a WebSocket through the balancer; {final['steps']} steps in all"
    )


def main(argv: list[str]) -> None:
    commands = {"ready": (wait_ready, 1), "rest": (rest, 2), "stack": (stack, 4)}
    if not argv or argv[0] not in commands or len(argv) - 1 != commands[argv[0]][1]:
        sys.exit(__doc__)
    func, _ = commands[argv[0]]
    func(*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])

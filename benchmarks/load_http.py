"""Closed-loop HTTP/1.1 load generator for sarnn-serve's REST sessions and v2 inference peers.

    .venv/bin/python benchmarks/load_http.py --target sarnn --url http://127.0.0.1:8000 \\
        --clients 16 --chunk 4 --duration 20 [--answer columns] [--model NAME] [--json out.json]
    .venv/bin/python benchmarks/load_http.py --target v2 --url http://127.0.0.1:8080 \\
        --model watch-gru --clients 16 --chunk 4 --duration 20 [--server-pid PID]

Each of --clients clients holds one keep-alive connection and one stream, and sends its next
request as soon as the last one is answered (one request in flight per client). Client i streams
held-out watch recording i mod 28 (export.data.load_watch().test, as benchmarks/load_ws.py does),
looping over it, --chunk samples per request:

  --target sarnn  a session opened by the Python client (sarnn_serve.client, not measured),
                  then POST /v1/sessions/{id}/chunks
                  {"seq": k, "inputs": [[F floats] x chunk]} (+ "answer": "columns" with
                  --answer columns); an answer counts when its status is 200 and it carries
                  "seq":k. Deleted at the end (the client): its final step count must equal the
                  steps answered.
  --target v2     POST /v2/models/{model}/infer with x FP32 [1,T,F] and state FP32 [1,S] (flat
                  data, Open Inference Protocol JSON). The client carries the state, as a
                  stateless server makes it: zeros first, then the "state" output of the last
                  answer, whose data bytes are cut from the answer and sent back unparsed. S is
                  read from GET /v2/models/{model} (the peer's metadata).

A failed answer (non-2xx, wrong seq, no state) counts as an error and the same request is sent
again (a safe retry for both targets); an exception ends that client. The client is cheap per
request: requests are written in one piece from pre-encoded parts, and answers are read by
their status line and Content-Length only (no chunked encoding).

Only the window [t0 + warmup, t0 + duration] is scored: latencies of requests sent in it (send
to last body byte), throughput from answers received in it; the client's own CPU share (and,
with --server-pid, the server's, summed over its process tree, e.g. MLServer's workers) over the
same window. Requests in flight at the end get --drain seconds. Loopback URLs only.
"""

import argparse
import asyncio
import collections
import contextlib
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_ws import (
    Plan,
    RecordingChunks,
    StartGate,
    StreamStats,
    check_window,
    cpu_seconds,
    cpu_share,
    load_recordings,
    loopback_url,
    publish,
    report_lines,
    runner,
)

from sarnn_serve.client import AsyncClient, AsyncSession, ClientError  # on the path: load_ws

SEQ_PREFIX = b'"seq":'
STATE_OUTPUT = b'"name":"state"'
REQUEST_HEAD = b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: "


# ---------------------------------------------------------------------------------------------
# arguments


def http_endpoint(url: str) -> tuple[str, int]:
    """(host, port) of an http:// base URL on a loopback address; ValueError else."""
    if urlsplit(url).scheme != "http":
        raise ValueError(f"--url must start with http://, got {url!r}")
    _, host, port = loopback_url("ws" + url[4:])
    return host, port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", choices=("sarnn", "v2"), default="sarnn", help="server API")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (loopback)")
    p.add_argument("--clients", type=int, default=16, help="concurrent connections (streams)")
    p.add_argument("--chunk", type=int, default=1, help="samples per request")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of sending")
    p.add_argument("--warmup", type=float, default=2.0, help="first seconds not scored")
    p.add_argument("--drain", type=float, default=10.0, help="seconds for the last answers")
    p.add_argument("--model", help="model name (v2: required; sarnn: default the server's)")
    p.add_argument("--threshold", type=float, help="threshold τ (default: the card's)")
    p.add_argument("--answer", choices=("columns",), help="sarnn: chunk answer mode")
    p.add_argument("--json", dest="json_path", help="write the figures to this JSON file")
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    p.add_argument("--server-pid", type=int, help="report this server's CPU (process tree)")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 10_000 or args.chunk < 1:
        p.error("need 1 <= --clients <= 10000 and --chunk >= 1")
    check_window(p, args)
    if args.target == "v2" and not args.model:
        p.error("--target v2 needs --model")
    if args.target == "v2" and args.answer:
        p.error("--answer is a sarnn option")
    try:
        http_endpoint(args.url)
    except ValueError as exc:
        p.error(str(exc))
    return args


# ---------------------------------------------------------------------------------------------
# data and HTTP


def chunks_of(recordings: list[np.ndarray], chunk: int, flat: bool) -> RecordingChunks:
    """JSON arrays of the recordings' chunks, nested [T][F] or flat [T*F]."""

    def encode(x: np.ndarray) -> bytes:
        return orjson.dumps(x.ravel() if flat else x, option=orjson.OPT_SERIALIZE_NUMPY)

    return RecordingChunks(recordings, chunk, encode)


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader = reader
        self.writer = writer
        self.host = host.encode()

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, host)

    def head(self, method: str, path: str) -> bytes:
        """The request line and headers up to the Content-Length value, encoded once."""
        return REQUEST_HEAD % (method.encode(), path.encode(), self.host)

    async def exchange(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        """Write one request (`head` from head()) and read its answer: (status, body)."""
        self.writer.write(b"%s%d\r\n\r\n%s" % (head, len(body), body))
        header = await self.reader.readuntil(b"\r\n\r\n")
        start = header.lower().find(b"\r\ncontent-length:")
        if start < 0:
            raise ConnectionError("answer without Content-Length")
        end = header.index(b"\r\n", start + 2)
        return int(header[9:12]), await self.reader.readexactly(int(header[start + 17 : end]))

    async def json(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """A request with a JSON body (or none) whose answer is parsed."""
        payload = b"" if body is None else orjson.dumps(body)
        status, answer = await self.exchange(self.head(method, path), payload)
        return status, orjson.loads(answer) if answer else {}

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------------------------
# the two targets: open, body of request k, check of its answer, close


class SarnnStream:
    """A session of sarnn-serve's REST API: opened and deleted by the Python client (not
    measured), its chunks sent on the stream's own connection."""

    def __init__(
        self,
        conn: Connection,
        args: argparse.Namespace,
        chunks: RecordingChunks,
        rec: int,
        api: AsyncClient,
    ):
        self.conn, self.chunks, self.rec, self.api = conn, chunks, rec, api
        self.extra = b',"answer":"%s"' % args.answer.encode() if args.answer else b""
        self.model, self.threshold = args.model, args.threshold
        self.session: AsyncSession | None = None
        self.head = b""

    async def open(self) -> str | None:
        try:
            self.session = await self.api.open(
                self.model, threshold=self.threshold, transport="rest", encoding="json"
            )
        except ClientError as exc:
            return f"open: {exc}"
        self.head = self.conn.head("POST", f"/v1/sessions/{self.session.id}/chunks")
        return None

    def body(self, k: int) -> bytes:
        return b'{"seq":%d,"inputs":%b%b}' % (k, self.chunks.get(self.rec, k), self.extra)

    def check(self, k: int, status: int, answer: bytes) -> str | None:
        if status != 200:
            return f"status {status}"
        if answer.find(b"%b%d," % (SEQ_PREFIX, k), 0, 400) < 0:
            return "wrong seq"
        return None

    async def close(self, steps: int) -> str | None:
        assert self.session is not None
        try:
            final = await self.session.delete()
        except ClientError as exc:
            return f"delete: {exc}"
        return None if final.steps == steps else "session steps != steps answered"


class V2Stream:
    """A stream whose state the client carries through POST /v2/models/{model}/infer."""

    def __init__(
        self,
        conn: Connection,
        args: argparse.Namespace,
        chunks: RecordingChunks,
        rec: int,
        api: AsyncClient,
    ):
        self.conn, self.chunks, self.rec = conn, chunks, rec
        self.head = conn.head("POST", f"/v2/models/{args.model}/infer")
        features = chunks.recordings[rec].shape[1]
        self.before_x = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,%d,%d],"data":' % (
            chunks.chunk,
            features,
        )
        self.before_state = b'},{"name":"state","datatype":"FP32","shape":[1,%d],"data":' % (
            args.state_size
        )
        self.end = b"}]}"
        if args.threshold is not None:
            self.end = b'},{"name":"threshold","datatype":"FP32","shape":[1],"data":[%r]}]}' % (
                args.threshold
            )
        self.state = orjson.dumps([0.0] * args.state_size)

    async def open(self) -> str | None:
        return None

    def body(self, k: int) -> bytes:
        rows = self.chunks.get(self.rec, k)
        return b"".join((self.before_x, rows, self.before_state, self.state, self.end))

    def check(self, k: int, status: int, answer: bytes) -> str | None:
        if status != 200:
            return f"status {status}"
        at = answer.find(STATE_OUTPUT)
        start = answer.find(b'"data":[', at) if at >= 0 else -1
        end = answer.find(b"]", start) if start >= 0 else -1
        if end < 0:
            return "no state in answer"
        self.state = answer[start + 7 : end + 1]
        return None

    async def close(self, steps: int) -> str | None:
        return None


async def state_size(host: str, port: int, model: str) -> int:
    """S from the v2 model metadata: the shape [-1, S] of its input "state"."""
    conn = await Connection.open(host, port)
    try:
        status, meta = await conn.json("GET", f"/v2/models/{model}")
    finally:
        conn.close()
    shapes = {t["name"]: t["shape"] for t in meta.get("inputs", [])}
    if status != 200 or len(shapes.get("state", [])) != 2:
        raise SystemExit(f"GET /v2/models/{model}: {status}, no input state [B,S] in {meta}")
    return shapes["state"][1]


# ---------------------------------------------------------------------------------------------
# one client


@dataclass
class ClientStats(StreamStats):
    verified: bool = False


async def run_client(
    i: int, gate: StartGate, args: argparse.Namespace, chunks: RecordingChunks, api: AsyncClient
) -> ClientStats:
    """Open a stream, wait for the common start, loop until the window ends, close."""
    st = ClientStats()
    stream_class = SarnnStream if args.target == "sarnn" else V2Stream
    conn = None
    try:
        try:
            conn = await Connection.open(*http_endpoint(args.url))
            stream = stream_class(conn, args, chunks, i % len(chunks.recordings), api)
            if error := await stream.open():
                st.errors[error] += 1
                return st
            st.connected = True
        finally:
            gate.settle()
        plan = await gate.plan
        left = plan.window[1] + plan.drain - time.perf_counter()
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + left):
            await stream_loop(stream, plan, st)
            if error := await stream.close(st.answered_steps):
                st.errors[error] += 1
            else:
                st.verified = args.target == "sarnn"
    except TimeoutError:
        st.errors["no answer before the drain ended"] += 1
    except Exception as exc:
        st.errors[f"exception: {type(exc).__name__}: {exc}"] += 1
    finally:
        if conn is not None:
            conn.close()
    return st


async def stream_loop(stream: SarnnStream | V2Stream, plan: Plan, st: ClientStats) -> None:
    """Closed loop: request k as soon as request k-1 is answered; a failed one is resent."""
    lo, hi = plan.window
    exchange, head, check = stream.conn.exchange, stream.head, stream.check
    k = 0
    await asyncio.sleep(max(0.0, plan.t0 - time.perf_counter()))
    while (sent_at := time.perf_counter()) < hi:
        status, answer = await exchange(head, stream.body(k))
        now = time.perf_counter()
        st.sent += 1
        if error := check(k, status, answer):
            st.errors[error] += 1
            continue
        k += 1
        st.answered += 1
        st.answered_steps += plan.chunk
        if sent_at >= lo:
            st.latencies.append(now - sent_at)
        if lo <= now < hi:
            st.steps_in_window += plan.chunk
            st.msgs_in_window += 1


# ---------------------------------------------------------------------------------------------
# the whole run


def percentiles(latencies: list[float]) -> dict:
    """p50, p90, p99 and max in ms (None without samples)."""
    if not latencies:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    lat = np.asarray(latencies) * 1000
    return {f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 99)} | {"max": float(lat.max())}


async def measure(args: argparse.Namespace) -> dict:
    host, port = http_endpoint(args.url)
    if args.target == "v2":
        args.state_size = await state_size(host, port, args.model)
    chunks = chunks_of(load_recordings(), args.chunk, flat=args.target == "v2")
    gate = StartGate(args.clients)
    started = time.perf_counter()
    api = AsyncClient(args.url, timeout=30)  # opens and deletes the sarnn sessions
    tasks = [
        asyncio.create_task(run_client(i, gate, args, chunks, api)) for i in range(args.clients)
    ]
    # every client opens its stream (or fails) first; then all start together
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gate.all_settled.wait(), 60)
    connect_seconds = time.perf_counter() - started
    t0 = time.perf_counter() + 0.2
    window = (t0 + args.warmup, t0 + args.duration)
    gate.plan.set_result(Plan(t0, window, 0.0, args.chunk, 1, args.drain))
    await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
    cpu_w0 = cpu_seconds(), args.server_pid and cpu_seconds(args.server_pid)
    await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
    cpu_w1 = cpu_seconds(), args.server_pid and cpu_seconds(args.server_pid)
    results = await asyncio.gather(*tasks)
    await api.aclose()
    return figures(args, results, window[1] - window[0], connect_seconds, cpu_w0, cpu_w1)


def figures(
    args: argparse.Namespace,
    results: list[ClientStats],
    span: float,
    connect_seconds: float,
    cpu_w0: tuple,
    cpu_w1: tuple,
) -> dict:
    """The run's figures; keys shared with benchmarks/load_ws.py mean the same there."""
    errors: collections.Counter = collections.Counter()
    for r in results:
        errors.update(r.errors)
    latencies = [x for r in results for x in r.latencies]
    return {
        "target": args.target,
        "sessions": args.clients,
        "sessions_open": sum(r.connected for r in results),
        "sessions_verified": sum(r.verified for r in results) if args.target == "sarnn" else None,
        "chunk": args.chunk,
        "rate_per_session": 0.0,  # closed loop, as load_ws.py's --rate 0
        "format": "json",
        "answer": (args.answer or "steps") if args.target == "sarnn" else "tensors",
        "client": "asyncio streams",
        "duration_s": args.duration,
        "window_s": span,
        "connect_s": connect_seconds,
        "achieved_steps_per_s": sum(r.steps_in_window for r in results) / span,
        "messages_per_s": sum(r.msgs_in_window for r in results) / span,
        "latency_ms": percentiles(latencies),
        "latency_samples": len(latencies),
        "messages_sent": sum(r.sent for r in results),
        "messages_answered": sum(r.answered for r in results),
        "steps_answered": sum(r.answered_steps for r in results),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "client_cpu": cpu_share(cpu_w0[0], cpu_w1[0], span),
        "server_cpu": cpu_share(cpu_w0[1], cpu_w1[1], span) if args.server_pid else None,
        "client_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "url": args.url,
        "model": args.model,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }


def report(f: dict) -> str:
    shared = report_lines(f, "requests")
    verified = "" if f["sessions_verified"] is None else f", {f['sessions_verified']} verified"
    lines = [
        f"target          {f['target']} at {f['url']}, model {f['model'] or '(default)'}",
        f"clients         {f['sessions']} ({f['sessions_open']} opened in {f['connect_s']:.1f} s"
        f"{verified}), closed loop, {f['chunk']} sample(s)/request, {f['format']} -> "
        f"{f['answer']}",
        *(shared[k] for k in ("window", "achieved", "latency", "errors", "cpu", "machine")),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures_ = runner(args.no_uvloop)(measure(args))
    publish(figures_, report(figures_), args.json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""WebSocket load generator: many concurrent sessions streaming real watch recordings.

    .venv/bin/python benchmarks/load_ws.py --url ws://127.0.0.1:8000 --sessions 100 --rate 50 \\
        --chunk 1 --duration 20 [--format json|msgpack|raw] [--answer steps|columns] \\
        [--client websockets|raw] [--model NAME] [--json out.json]
    .venv/bin/python benchmarks/load_ws.py --spawn-server --model-dir /tmp/models ...

Each of --sessions sessions opens its own connection to /v1/stream?delete_on_close=true (a new
session per connection) and streams one held-out watch recording (export.data.load_watch().test,
session i takes recording i mod 28, looping over it when it ends, so every chunk has exactly
--chunk samples) in messages of --chunk samples:

  --rate R > 0   each session offers R samples per second: message k is due at
                 t0 + phase + k * chunk / R (absolute deadlines, phases spread evenly over one
                 interval). Sending and receiving are separate tasks, so a slow answer does not
                 delay the next message (answers come back in order on a socket and are matched
                 FIFO; at most --max-inflight unanswered messages per session).
  --rate 0       as fast as possible: one message in flight per session.

Latency is measured per message from just before the send to the arrival of its answer. Only the
measurement window [t0 + warmup, t0 + duration] is scored: latencies of messages sent in it, and
throughput from answers received in it. After --duration nothing more is sent; answers still
missing after --drain seconds count as errors, as do error frames, answers out of sequence,
exceptions and sockets that close. At the end the session totals of each last answer are checked
against the steps that session had answered.

Per-message compression is off (compression=None): websockets clients offer permessage-deflate by
default, and it costs about 2x per message on this server (docs/architecture.md, "Measured on a
2-core machine"); the server does not enable it either (sarnn-serve passes
ws_per_message_deflate=False to uvicorn), so the client offering it would only add work, and a
benchmark should state what it measures. Client and server share the same CPU cores here (same
section); the client process CPU time is reported beside the figures (and the server's, with
--spawn-server) so the split is visible.

Only loopback URLs are accepted (127.0.0.0/8, ::1, localhost): this is a load generator, not a
tool for other people's hosts. It stops by itself after --duration (+ --drain).
"""

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import msgpack
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ws_raw  # noqa: E402  (benchmarks/, next to this file)

from sarnn_serve import frames  # noqa: E402

CHUNK_PREFIX = b'{"type":"chunk"'


# ---------------------------------------------------------------------------------------------
# arguments and safety


def loopback_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a ws:// URL whose host is a loopback address; ValueError else."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"--url must start with ws:// or wss://, got {url!r}")
    host = parts.hostname or ""
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"refusing to load {host!r}: only loopback addresses (127.0.0.1, ::1, localhost) "
                "are allowed"
            ) from None
    if parts.path not in ("", "/"):
        raise ValueError(f"--url is the server's base URL (no path), got path {parts.path!r}")
    return parts.scheme, host, parts.port or (443 if parts.scheme == "wss" else 80)


def check_window(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--duration and --warmup make a scored window (or the parser exits)."""
    if not 0 < args.duration <= 3600 or not 0 <= args.warmup < args.duration:
        p.error("need 0 < --duration <= 3600 and 0 <= --warmup < --duration")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="ws://127.0.0.1:8000", help="server base URL (loopback only)")
    p.add_argument("--sessions", type=int, default=100, help="concurrent sessions (connections)")
    p.add_argument("--rate", type=float, default=50.0, help="samples/s per session; 0 = max")
    p.add_argument("--chunk", type=int, default=1, help="samples per message")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of sending")
    p.add_argument("--warmup", type=float, default=2.0, help="first seconds not scored")
    p.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late answers")
    p.add_argument("--max-inflight", type=int, default=256, help="unanswered messages/session")
    p.add_argument(
        "--format",
        choices=("json", "msgpack", "raw"),
        default="json",
        help="client frames: JSON text, msgpack, or the raw binary protocol (binary answers)",
    )
    p.add_argument(
        "--answer",
        choices=("steps", "columns"),
        default="steps",
        help="answer mode of JSON and msgpack frames (the socket's answer parameter)",
    )
    p.add_argument(
        "--client",
        choices=("websockets", "raw"),
        default="websockets",
        help="the websockets library's client, or the minimal one of benchmarks/ws_raw.py",
    )
    p.add_argument("--model", help="model name (default: the server's only model)")
    p.add_argument("--threshold", type=float, help="session threshold (default: the card's)")
    p.add_argument(
        "--session-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another parameter of the sessions' /v1/stream (e.g. degrade=true)",
    )
    p.add_argument("--json", dest="json_path", help="write the figures to this JSON file")
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    p.add_argument("--server-pid", type=int, help="report this (local) server's CPU use too")
    p.add_argument("--spawn-server", action="store_true", help="start a local sarnn-serve")
    p.add_argument("--model-dir", help="with --spawn-server: models directory to serve")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --spawn-server: extra environment (e.g. SARNN_BATCH_WAIT_MS=2)",
    )
    args = p.parse_args(argv)
    if args.sessions < 1 or args.chunk < 1 or args.rate < 0 or args.max_inflight < 1:
        p.error("--sessions, --chunk and --max-inflight must be >= 1 and --rate >= 0")
    check_window(p, args)
    if args.sessions > 10_000:
        p.error("--sessions is limited to 10000")
    try:
        loopback_url(args.url)
    except ValueError as exc:
        p.error(str(exc))
    return args


# ---------------------------------------------------------------------------------------------
# data


class RecordingChunks:
    """Encoded chunks of the held-out recordings, made on first use and cached.

    Recording r is streamed as an endless loop; chunk k holds samples k*c .. k*c+c-1 (mod T),
    so the loop repeats after T / gcd(T, c) chunks. `encode` turns a chunk's rows [c, F]
    into bytes."""

    def __init__(
        self, recordings: list[np.ndarray], chunk: int, encode: Callable[[np.ndarray], bytes]
    ) -> None:
        self.recordings = recordings
        self.chunk = chunk
        self.encode = encode
        self.period = [len(x) // math.gcd(len(x), chunk) for x in recordings]
        self._cache: dict[tuple[int, int], bytes] = {}

    def get(self, rec: int, k: int) -> bytes:
        """The encoded rows of chunk k of recording `rec`."""
        key = (rec, k % self.period[rec])
        rows = self._cache.get(key)
        if rows is None:
            x = self.recordings[rec]
            rows = self.encode(x[(np.arange(self.chunk) + key[1] * self.chunk) % len(x)])
            self._cache[key] = rows
        return rows


ROW_ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "raw": lambda x: np.ascontiguousarray(x, "<f4").tobytes(),
    "msgpack": lambda x: msgpack.packb(x.tolist(), use_single_float=True),
    "json": lambda x: orjson.dumps(x, option=orjson.OPT_SERIALIZE_NUMPY),
}


class Messages:
    """Messages of the held-out recordings in one format: seq k and chunk k's rows (the
    encoded rows are cached; only the seq is encoded per message)."""

    def __init__(self, recordings: list[np.ndarray], chunk: int, fmt: str) -> None:
        self.recordings = recordings
        self.chunk = chunk
        self.format = fmt
        self.binary = fmt != "json"
        self.rows = RecordingChunks(recordings, chunk, ROW_ENCODERS[fmt])

    def get(self, rec: int, k: int) -> bytes:
        """Message k of a session streaming recording `rec`."""
        rows = self.rows.get(rec, k)
        if self.format == "raw":
            return frames.REQUEST.pack(frames.MAGIC, frames.VERSION, 0, k, self.chunk) + rows
        if self.format == "msgpack":
            return b"\x82" + msgpack.packb("seq") + msgpack.packb(k) + INPUTS_KEY + rows
        return b'{"seq":%d,"inputs":%b}' % (k, rows)

    def is_answer(self, frame: bytes) -> bool:
        """Whether a server frame answers a chunk (else it is an error frame)."""
        return frame.startswith(frames.MAGIC if self.format == "raw" else CHUNK_PREFIX)

    def session_steps(self, answer: bytes) -> int:
        """The session's total steps reported by a chunk answer."""
        if self.format == "raw":
            return frames.decode_answer(answer)["session_steps"]
        body = orjson.loads(answer)
        return body["session_steps"] if "session_steps" in body else body["session"]["steps"]


INPUTS_KEY = msgpack.packb("inputs")


def load_recordings() -> list[np.ndarray]:
    try:
        from export.data import load_watch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(f"needs the training extra (seglearn) for the watch data: {exc}") from None
    return [np.ascontiguousarray(r.x, dtype=np.float32) for r in load_watch().test]


# ---------------------------------------------------------------------------------------------
# one session


@dataclass
class StreamStats:
    """What one client counted (load_ws and load_http alike)."""

    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    answered: int = 0
    answered_steps: int = 0
    steps_in_window: int = 0
    msgs_in_window: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    connected: bool = False


@dataclass
class SessionStats(StreamStats):
    sent_in_window: int = 0
    max_send_lag: float = 0.0
    last_answer: bytes | None = None


@dataclass
class Plan:
    t0: float
    window: tuple[float, float]
    interval: float
    chunk: int
    max_inflight: int
    drain: float


class StartGate:
    """Counts sessions that are open (or gave up) and releases them all with one plan."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.settled = 0
        self.all_settled = asyncio.Event()
        self.plan: asyncio.Future[Plan] = asyncio.get_running_loop().create_future()

    def settle(self) -> None:
        self.settled += 1
        if self.settled >= self.n:
            self.all_settled.set()


def _closed(exc: Exception) -> str:
    rcvd = getattr(exc, "rcvd", None)
    code = rcvd.code if rcvd else getattr(exc, "code", None)
    return f"socket closed ({code or 'no close frame'})"


async def open_socket(ws_url: str, client: str):
    """A connected client of the chosen kind (both have send(data, text=), recv() and close())."""
    if client == "raw":
        parts = urlsplit(ws_url)
        target = f"{parts.path}?{parts.query}"
        return await ws_raw.RawWebSocket.connect(parts.hostname, parts.port or 80, target)
    from websockets.asyncio.client import connect

    return await connect(
        ws_url,
        compression=None,
        proxy=None,
        ping_interval=None,
        max_size=16 * 1024 * 1024,
        open_timeout=30,
        close_timeout=5,
    )


async def _recv(ws) -> bytes:
    if isinstance(ws, ws_raw.RawWebSocket):
        return await ws.recv()
    return await ws.recv(decode=False)


async def run_session(
    i: int, n: int, gate: StartGate, messages: Messages, ws_url: str, client: str = "websockets"
) -> SessionStats:
    """Open one session, wait for the common start, stream until the window ends, drain."""
    from websockets.exceptions import ConnectionClosed

    closed = (ConnectionClosed, ws_raw.Closed)
    st = SessionStats()
    rec = i % len(messages.recordings)
    try:
        ws = await open_socket(ws_url, client)
    except Exception as exc:
        st.errors[f"connect: {type(exc).__name__}"] += 1
        gate.settle()
        return st
    pending: collections.deque[tuple[float, int]] = collections.deque()
    try:
        try:
            first = orjson.loads(await asyncio.wait_for(_recv(ws), 30))
            if first.get("type") != "session":
                st.errors[f"open: {first.get('error', {}).get('code', first.get('type'))}"] += 1
                return st
            st.connected = True
        finally:
            gate.settle()
        plan = await gate.plan
        lo, hi = plan.window
        slots = asyncio.Semaphore(plan.max_inflight if plan.interval else 1)
        drained = asyncio.Event()
        drained.set()

        async def sender() -> None:
            phase = plan.interval * i / n
            k = 0
            while True:
                due = plan.t0 + phase + k * plan.interval
                if due >= hi:
                    return
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                await slots.acquire()
                data = messages.get(rec, k)
                sent_at = time.perf_counter()
                if sent_at >= hi:
                    return
                if plan.interval:
                    st.max_send_lag = max(st.max_send_lag, sent_at - due)
                pending.append((sent_at, plan.chunk))
                drained.clear()
                await ws.send(data, text=not messages.binary)
                st.sent += 1
                st.sent_in_window += lo <= sent_at
                k += 1

        async def receiver() -> None:
            while True:
                answer = await _recv(ws)
                now = time.perf_counter()
                if not pending:
                    st.errors["unexpected frame"] += 1
                    continue
                sent_at, steps = pending.popleft()
                if not pending:
                    drained.set()
                slots.release()
                if messages.is_answer(answer):
                    if lo <= sent_at < hi:
                        st.latencies.append(now - sent_at)
                    if lo <= now < hi:
                        st.steps_in_window += steps
                        st.msgs_in_window += 1
                    st.answered += 1
                    st.answered_steps += steps
                    st.last_answer = answer
                else:
                    try:
                        body = orjson.loads(answer)
                        code = body.get("error", {}).get("code") or body.get("type", "?")
                    except orjson.JSONDecodeError:
                        code = "unparsable frame"
                    st.errors[f"error frame: {code}"] += 1

        recv_task = asyncio.create_task(receiver())
        send_task = asyncio.create_task(sender())
        deadline = hi + plan.drain
        done, _ = await asyncio.wait(
            {send_task, recv_task},
            timeout=max(0.0, deadline - time.perf_counter()),
            return_when=asyncio.FIRST_EXCEPTION,
        )
        if send_task in done and send_task.exception() is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), max(0.0, deadline - time.perf_counter()))
        for task in (send_task, recv_task):
            task.cancel()
        await asyncio.gather(send_task, recv_task, return_exceptions=True)
        failures = {
            t.exception() for t in (send_task, recv_task) if not t.cancelled() and t.exception()
        }
        for exc in failures:
            if isinstance(exc, closed):
                st.errors[_closed(exc)] += 1
            else:
                st.errors[f"exception: {type(exc).__name__}: {exc}"] += 1
    except closed as exc:
        st.errors[_closed(exc)] += 1
    except Exception as exc:
        st.errors[f"exception: {type(exc).__name__}: {exc}"] += 1
    finally:
        if pending:
            st.errors["unanswered"] += len(pending)
        with contextlib.suppress(Exception):
            await ws.close()
    if st.last_answer is not None and messages.session_steps(st.last_answer) != st.answered_steps:
        st.errors["session steps != steps answered"] += 1
    return st


# ---------------------------------------------------------------------------------------------
# the whole run


def cpu_seconds(pid: int | None = None) -> tuple[float, float] | None:
    """(user, system) CPU seconds of this process, or of `pid` and its descendants from /proc
    with the time of their reaped children (cutime, cstime): a server's workers count too
    (Linux only; None if `pid` is gone)."""
    if pid is None:
        t = os.times()
        return t.user, t.system
    children: dict[int, list[int]] = collections.defaultdict(list)
    stats: dict[int, list[str]] = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = path.read_text().rsplit(")", 1)[1].split()
            stats[int(path.parent.name)] = fields
            children[int(fields[1])].append(int(path.parent.name))
    if pid not in stats:
        return None
    user = system = 0
    todo = [pid]
    while todo:
        proc = todo.pop()
        if fields := stats.get(proc):
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
        todo += children.get(proc, [])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def cpu_share(before: tuple | None, after: tuple | None, span: float) -> dict | None:
    """Share of one core used over `span` seconds: user, system and total."""
    if before is None or after is None:
        return None
    user, system = (after[0] - before[0]) / span, (after[1] - before[1]) / span
    return {"user": user, "system": system, "total": user + system}


async def measure(args: argparse.Namespace, server_pid: int | None = None) -> dict:
    recordings = load_recordings()
    messages = Messages(recordings, args.chunk, args.format)
    query = {"delete_on_close": "true", "answer": args.answer}
    if args.model:
        query["model"] = args.model
    if args.threshold is not None:
        query["threshold"] = str(args.threshold)
    for item in args.session_param:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--session-param needs KEY=VALUE, got {item!r}")
        query[key] = value
    ws_url = f"{args.url.rstrip('/')}/v1/stream?{urlencode(query)}"

    loop = asyncio.get_running_loop()
    gate = StartGate(args.sessions)
    connect_started = time.perf_counter()
    tasks = [
        asyncio.create_task(run_session(i, args.sessions, gate, messages, ws_url, args.client))
        for i in range(args.sessions)
    ]
    # every session opens (or fails) first; then all start together
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gate.all_settled.wait(), 60)
    connect_seconds = time.perf_counter() - connect_started
    t0 = time.perf_counter() + 0.2
    interval = args.chunk / args.rate if args.rate else 0.0
    window = (t0 + args.warmup, t0 + args.duration)
    gate.plan.set_result(Plan(t0, window, interval, args.chunk, args.max_inflight, args.drain))
    await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
    cpu_w0, srv_w0 = cpu_seconds(), cpu_seconds(server_pid) if server_pid else None
    await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
    cpu_w1, srv_w1 = cpu_seconds(), cpu_seconds(server_pid) if server_pid else None
    results = await asyncio.gather(*tasks)

    span = window[1] - window[0]
    lat = np.asarray([x for r in results for x in r.latencies]) * 1000
    errors: collections.Counter = collections.Counter()
    for r in results:
        errors.update(r.errors)
    pct = (
        {f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 99)} | {"max": float(lat.max())}
        if len(lat)
        else {"p50": None, "p90": None, "p99": None, "max": None}
    )
    figures = {
        "sessions": args.sessions,
        "sessions_open": sum(r.connected for r in results),
        "chunk": args.chunk,
        "rate_per_session": args.rate,
        "format": args.format,
        "answer": "binary" if args.format == "raw" else args.answer,
        "client": args.client,
        "duration_s": args.duration,
        "window_s": span,
        "connect_s": connect_seconds,
        "offered_steps_per_s": args.sessions * args.rate if args.rate else None,
        "sent_steps_per_s": sum(r.sent_in_window for r in results) * args.chunk / span,
        "achieved_steps_per_s": sum(r.steps_in_window for r in results) / span,
        "messages_per_s": sum(r.msgs_in_window for r in results) / span,
        "latency_ms": pct,
        "latency_samples": len(lat),
        "max_send_lag_ms": max(r.max_send_lag for r in results) * 1000,
        "messages_sent": sum(r.sent for r in results),
        "messages_answered": sum(r.answered for r in results),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "client_cpu": cpu_share(cpu_w0, cpu_w1, span),
        "server_cpu": cpu_share(srv_w0, srv_w1, span),
        "client_loop": type(loop).__module__.split(".")[0],
        "url": args.url,
        "model": args.model,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }
    return figures


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def report_lines(f: dict, unit: str) -> dict[str, str]:
    """The report lines load_ws and load_http share, by name; `unit`: messages or requests."""
    lat = f["latency_ms"]
    cpu = ", ".join(
        f"{who} {c['total']:.0%} of a core (user {c['user']:.0%}, sys {c['system']:.0%})"
        for who, c in (("client", f["client_cpu"]), ("server", f["server_cpu"]))
        if c
    )
    kinds = f"  {f['error_kinds']}" if f["error_kinds"] else ""
    return {
        "window": f"window          {f['window_s']:.1f} s scored (after "
        f"{f['duration_s'] - f['window_s']:.1f} s warm-up)",
        "achieved": f"achieved        {f['achieved_steps_per_s']:,.0f} steps/s, "
        f"{f['messages_per_s']:,.0f} {unit}/s",
        "latency": f"latency ms      p50 {fmt_ms(lat['p50'])}  p90 {fmt_ms(lat['p90'])}  "
        f"p99 {fmt_ms(lat['p99'])}  max {fmt_ms(lat['max'])}  ({f['latency_samples']} {unit})",
        "errors": f"errors          {f['errors']}{kinds}",
        "cpu": f"cpu             {cpu}",
        "machine": f"machine         {f['cpus']} cpus, load avg {f['load_avg_1m']:.2f} at the "
        f"end, client loop {f['client_loop']}",
    }


def report(f: dict) -> str:
    shared = report_lines(f, "messages")
    offered = "max" if f["offered_steps_per_s"] is None else f"{f['offered_steps_per_s']:,.0f}"
    lines = [
        f"sessions        {f['sessions']} ({f['sessions_open']} opened in {f['connect_s']:.1f} s),"
        f" {f['chunk']} sample(s)/message, {f['format']} -> {f['answer']}, {f['client']} client,"
        f" rate {f['rate_per_session']:g}/s each",
        shared["window"],
        f"offered         {offered} steps/s (sent {f['sent_steps_per_s']:,.0f} steps/s)",
        shared["achieved"],
        shared["latency"],
        f"send lag        max {f['max_send_lag_ms']:.1f} ms behind schedule",
        shared["errors"],
        shared["cpu"],
        shared["machine"],
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# optional local server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def spawned_server(model_dir: str | None, extra_env: list[str]):
    """Run `python -m sarnn_serve.cli serve` on a free loopback port until the block ends."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "sarnn_serve.cli", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port)]
    if model_dir:
        cmd += ["--model-dir", model_dir]
    # every simulated client shares one IP: lift the per-client creation quotas
    env = {**os.environ, "SARNN_SESSION_CREATE_BURST": "100000", "SARNN_SESSION_CREATE_RATE": "1e5"}
    env.setdefault("SARNN_GRPC_PORT", "0")  # not on 8001, which a running server may hold
    if not model_dir:  # the shipped models: requests that name none get watch-gru, as `make serve`
        env.setdefault("SARNN_DEFAULT_MODEL", "watch-gru")
    for item in extra_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--server-env needs KEY=VALUE, got {item!r}")
        env[key] = value
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
        "w+", prefix=f"sarnn-serve-{port}-", suffix=".log", delete=False
    )
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited early:\n{Path(log.name).read_text()}")
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1, trust_env=False)
                # and calibrated: it runs beside the first requests, which it would slow
                if r.status_code == 200 and not r.json()["calibrating"]:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"server not ready after 60 s:\n{Path(log.name).read_text()}")
            time.sleep(0.2)
        print(f"spawned sarnn-serve pid {proc.pid} on port {port} (log {log.name})")
        yield f"ws://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def runner(no_uvloop: bool) -> Callable:
    """asyncio.run, or uvloop's when it is installed and wanted."""
    if not no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.run
    return asyncio.run


def publish(figures: dict, text: str, json_path: str | None) -> None:
    """Print the report; write the figures as JSON if asked."""
    print(text)
    if json_path:
        Path(json_path).write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        print(f"wrote {json_path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server_pid = args.server_pid
    with contextlib.ExitStack() as stack:
        if args.spawn_server:
            args.url, server_pid = stack.enter_context(
                spawned_server(args.model_dir, args.server_env)
            )
        figures = runner(args.no_uvloop)(measure(args, server_pid))
    publish(figures, report(figures), args.json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A cluster under faults, on this machine: redis-server (AOF), 3 sarnn-serve replicas and
haproxy on loopback; sessions stream recordings through the balancer (half REST, half
WebSocket) with retrying clients while a replica is killed, every replica is restarted in turn
and Redis is restarted. Every answer must equal a clean run through one memory-store process,
with no chunk lost or applied twice.

    python scripts/cluster_faults.py --sessions 20 --steps 400 --json faults.json
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import websockets

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# the test servers' settings: lifted quotas, and the dense graph (bit-reproducible answers)
from tests.service_fixtures import UNLIMITED, _pong, free_port  # noqa: E402

REQUEST_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 40  # per chunk; backoff doubles from 50 ms up to 2 s
HAPROXY_CFG = """\
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout tunnel 1h
    timeout client-fin 5s
    retries 3
    option redispatch

frontend http
    bind 127.0.0.1:{port}
    default_backend sarnn

backend sarnn
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server check inter 300 fall 2 rise 1
{servers}
"""


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early (rc {proc.returncode}) serving {url}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Cluster:
    """redis-server with AOF, sarnn-serve replicas on fixed ports and haproxy in front."""

    def __init__(self, models: Path, workdir: Path, replicas: int = 3) -> None:
        self.models, self.workdir = models, workdir
        self.redis_port = free_port()
        self.ports = [free_port() for _ in range(replicas)]
        self.lb_port = free_port()
        self.url = f"http://127.0.0.1:{self.lb_port}"
        self.ws_url = f"ws://127.0.0.1:{self.lb_port}"
        self.redis: subprocess.Popen | None = None
        self.replicas: list[subprocess.Popen | None] = [None] * replicas
        self.haproxy: subprocess.Popen | None = None

    def start_redis(self) -> None:
        """Start (or restart) redis-server on its port; its AOF lives in the work dir."""
        log = self.workdir / "redis.log"
        self.redis = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.redis_port),
             "--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--logfile", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while not _pong(self.redis_port):
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {log}")
            time.sleep(0.02)

    def start_replica(self, i: int, wait: bool = True) -> None:
        """Start replica i on its port (its log is appended to) and wait until it is ready."""
        env = {
            **os.environ,
            **UNLIMITED,
            "SARNN_STORE": "redis",
            "SARNN_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "SARNN_MODEL_DIR": str(self.models),
            "SARNN_PORT": str(self.ports[i]),
            "SARNN_GRPC_PORT": "0",  # replicas on one host: gRPC on a free port each
            "SARNN_LOG_LEVEL": "warning",
        }
        with (self.workdir / f"replica{i}.log").open("a") as log:
            self.replicas[i] = subprocess.Popen(
                [sys.executable, "-m", "sarnn_serve.cli", "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_replica(i)

    def wait_replica(self, i: int) -> None:
        proc = self.replicas[i]
        assert proc is not None
        _wait_ready(f"http://127.0.0.1:{self.ports[i]}", proc)

    def start(self) -> None:
        """Start everything and wait until the balancer answers /readyz."""
        self.start_redis()
        for i in range(len(self.ports)):
            self.start_replica(i, wait=False)
        for i in range(len(self.ports)):
            self.wait_replica(i)
        servers = "\n".join(f"    server r{i} 127.0.0.1:{p}" for i, p in enumerate(self.ports))
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(port=self.lb_port, servers=servers))
        with (self.workdir / "haproxy.log").open("w") as log:
            self.haproxy = subprocess.Popen(
                ["haproxy", "-f", str(cfg), "-db"], stdout=log, stderr=subprocess.STDOUT
            )
        _wait_ready(self.url, self.haproxy)

    def stop(self) -> None:
        """Stop every process that is still running."""
        for proc in [self.haproxy, *self.replicas, self.redis]:
            if proc is not None:
                _stop(proc)


@dataclass
class Stats:
    """What the clients saw, shared by every session."""

    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    retries: int = 0
    replayed: int = 0
    lost_chunks: int = 0
    errors: Counter = field(default_factory=Counter)
    fatal: list[str] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)
    error_times: list[float] = field(default_factory=list)


class Retry(Exception):
    """A retryable failure of one attempt; `kind` names it in the report."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Fatal(Exception):
    """A failure a client must not retry (and the server should never cause here)."""


def _check(status: int, body: dict) -> dict:
    """The answer of a chunk; raises Retry for retryable failures, returns error details for
    a 409 seq_conflict or session_rolled_back, raises Fatal for the rest."""
    if status == 200:
        return body
    error = body.get("error") or {}
    code = error.get("code", "")
    if status >= 500 and status != 507:
        raise Retry(f"{status} {code or 'no_body'}")
    if status == 409 and code == "concurrent_update":
        raise Retry(f"409 {code}")
    if status == 409 and code in ("seq_conflict", "session_rolled_back"):
        return {"conflict": error["expected_seq"], "code": code}
    raise Fatal(f"{status} {code}: {error.get('message', body)}")


def _parse(text: str | bytes) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        return {}


class Session:
    """One session streamed through the balancer with exactly-once retries: every failed
    attempt resends the same seq (an applied chunk is answered again by replay)."""

    def __init__(self, cluster: Cluster, sid: str, chunks: list[list], websocket: bool) -> None:
        self.cluster, self.sid, self.chunks, self.websocket = cluster, sid, chunks, websocket
        self.answers: list[list[dict] | None] = [None] * len(chunks)
        self.ws: websockets.ClientConnection | None = None

    async def _send_rest(self, client: httpx.AsyncClient, body: dict) -> dict:
        url = f"{self.cluster.url}/v1/sessions/{self.sid}/chunks"
        try:
            r = await client.post(url, json=body)
        except httpx.TimeoutException as exc:
            raise Retry("timeout") from exc
        except httpx.TransportError as exc:
            raise Retry(f"connection {type(exc).__name__}") from exc
        return _check(r.status_code, _parse(r.content))

    async def _send_ws(self, body: dict) -> dict:
        try:
            if self.ws is None:
                url = f"{self.cluster.ws_url}/v1/sessions/{self.sid}/stream"
                ws = await websockets.connect(url, compression=None, open_timeout=5)
                first = _parse(await asyncio.wait_for(ws.recv(), REQUEST_TIMEOUT_S))
                if first.get("type") != "session":
                    await ws.close()
                    _check(first.get("status", 0), first)
                    raise Retry("ws_refused")
                self.ws = ws
            await self.ws.send(json.dumps(body))
            frame = _parse(await asyncio.wait_for(self.ws.recv(), REQUEST_TIMEOUT_S))
        except (Retry, Fatal):
            raise
        except TimeoutError as exc:
            await self._drop_ws()
            raise Retry("timeout") from exc
        except websockets.InvalidStatus as exc:
            raise Retry(f"ws_handshake {exc.response.status_code}") from exc
        except (OSError, websockets.WebSocketException) as exc:
            await self._drop_ws()
            raise Retry(f"ws_dropped {type(exc).__name__}") from exc
        if frame.get("type") == "error":
            return _check(frame["status"], frame)
        return frame

    async def _drop_ws(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            await ws.close()

    async def run(self, stats: Stats, interval: float, gate: asyncio.Event) -> None:
        """Send every chunk in order, `interval` s apart; the last waits for `gate`."""
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            seq, attempt = 0, 0
            while seq < len(self.chunks):
                if seq == len(self.chunks) - 1 and attempt == 0:
                    await gate.wait()  # so the streams outlast the faults
                body = {"seq": seq, "inputs": self.chunks[seq]}
                stats.requests += 1
                try:
                    if self.websocket:
                        answer = await self._send_ws(body)
                    else:
                        answer = await self._send_rest(client, body)
                except Retry as exc:
                    stats.errors[exc.kind] += 1
                    stats.error_times.append(time.monotonic())
                    if attempt >= MAX_ATTEMPTS:
                        raise Fatal(f"seq {seq}: gave up after {attempt} retries") from exc
                    await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                    attempt += 1
                    stats.retries += 1
                    continue
                if "conflict" in answer:
                    expected = answer["conflict"]
                    stats.errors[f"409 {answer['code']}"] += 1
                    stats.error_times.append(time.monotonic())
                    if expected > seq + 1 or (expected == seq + 1 and attempt == 0):
                        raise Fatal(f"seq {seq}: server expects {expected} (a doubled chunk)")
                    if expected <= seq:  # the store forgot applied chunks: resend them
                        stats.lost_chunks += seq - expected
                        seq, attempt = expected, 0
                    else:  # applied before a lost reply: the same seq again is a replay
                        attempt += 1
                        stats.retries += 1
                    continue
                stats.successes.append(time.monotonic())
                stats.replayed += bool(answer.get("replayed"))
                self.answers[seq] = answer["steps"]
                seq, attempt = seq + 1, 0
                await asyncio.sleep(interval)
            await self._drop_ws()


async def _request(client: httpx.AsyncClient, method: str, url: str, **kw: object) -> dict:
    """A REST call retried with backoff on transport errors and 5xx."""
    for attempt in range(MAX_ATTEMPTS):
        try:
            r = await client.request(method, url, **kw)
            if r.status_code < 500:
                r.raise_for_status()
                return r.json()
        except httpx.TransportError:
            pass
        await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
    raise Fatal(f"{method} {url} failed {MAX_ATTEMPTS} times")


async def _clean_run(url: str, model: str, chunks: list[list]) -> list[list[dict]]:
    """The answers of one session streamed over REST without faults."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        sid = (await _request(client, "POST", "/v1/sessions", json={"model": model}))["id"]
        return [
            (await _request(client, "POST", f"/v1/sessions/{sid}/chunks", json=body))["steps"]
            for body in ({"seq": i, "inputs": c} for i, c in enumerate(chunks))
        ]


def _same(a: list[dict], b: list[dict], tol: float = 1e-5) -> bool:
    keys = ("index", "label", "class", "updates")
    return len(a) == len(b) and all(
        all(x[k] == y[k] for k in keys)
        and np.allclose(x["probabilities"], y["probabilities"], rtol=0, atol=tol)
        for x, y in zip(a, b, strict=True)
    )


async def _faults(
    cluster: Cluster, stats: Stats, chunks: int, streams: list[asyncio.Task]
) -> list[dict]:
    """Run the F faults, each once chunks/(F+1) more answers came since the previous one (or
    all `chunks` came, or every stream failed); each fault's name, start and action time."""

    def kill() -> None:
        _stop(cluster.replicas[0], signal.SIGKILL)
        cluster.start_replica(0)

    def rolling(i: int) -> Callable[[], None]:
        def restart() -> None:
            _stop(cluster.replicas[i])
            cluster.start_replica(i)

        return restart

    def redis_restart() -> None:
        _stop(cluster.redis)
        cluster.start_redis()

    schedule = [("kill -9 replica 0, restart", kill)]
    schedule += [(f"rolling restart replica {i}", rolling(i)) for i in range(len(cluster.ports))]
    schedule.append(("restart redis (SIGTERM, AOF)", redis_restart))
    log: list[dict] = []
    for name, action in schedule:
        start = len(stats.successes)
        while (
            len(stats.successes) - start < chunks / (len(schedule) + 1)
            and len(stats.successes) < chunks
            and not all(t.done() for t in streams)
        ):
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await asyncio.to_thread(action)
        log.append({"fault": name, "t0": t0, "action_s": round(time.monotonic() - t0, 2)})
    return log


def _recoveries(log: list[dict], stats: Stats) -> list[dict]:
    """Each fault with its time, the errors until the next fault and the recovery time (from
    the fault to the next successful answer through the balancer)."""
    ends = [e["t0"] for e in log[1:]] + [float("inf")]
    out = []
    for entry, end in zip(log, ends, strict=True):
        t0 = entry["t0"]
        after = [t for t in stats.successes if t > t0]
        out.append(
            {
                "fault": entry["fault"],
                "at_s": round(t0 - stats.started, 2),
                "action_s": entry["action_s"],
                "recovery_s": round(after[0] - t0, 3) if after else None,
                "errors": sum(t0 <= t < end for t in stats.error_times),
            }
        )
    return out


def _recordings(sessions: int, steps: int) -> list[np.ndarray]:
    from export.data import load_watch

    test = load_watch().test
    return [test[i % len(test)].x[:steps] for i in range(sessions)]


def _start_single(models: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    """One sarnn-serve with the memory store, for the clean run; its process and URL."""
    port = free_port()
    env = {**os.environ, **UNLIMITED, "SARNN_MODEL_DIR": str(models), "SARNN_PORT": str(port),
           "SARNN_GRPC_PORT": "0", "SARNN_STORE": "memory",
           "SARNN_LOG_LEVEL": "warning"}  # fmt: skip
    with (workdir / "clean.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sarnn_serve.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}"


async def _run(args: argparse.Namespace, workdir: Path) -> dict:
    models = workdir / "models"
    models.mkdir()
    (models / args.model).symlink_to(args.model_dir.resolve() / args.model)
    recordings = _recordings(args.sessions, args.steps)
    chunked = [[x[i : i + args.chunk].tolist() for i in range(0, len(x), args.chunk)]
               for x in recordings]  # fmt: skip

    cluster = Cluster(models, workdir, args.replicas)
    clean, clean_url = _start_single(models, workdir)
    try:
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(_wait_ready, clean_url, clean)
        expected = await asyncio.gather(*(_clean_run(clean_url, args.model, c) for c in chunked))
        _stop(clean)

        stats = Stats()
        async with httpx.AsyncClient(base_url=cluster.url, timeout=REQUEST_TIMEOUT_S) as client:
            sids = [
                (await _request(client, "POST", "/v1/sessions", json={"model": args.model}))["id"]
                for _ in chunked
            ]
            sessions = [Session(cluster, sid, c, i % 2 == 1)
                        for i, (sid, c) in enumerate(zip(sids, chunked, strict=True))]  # fmt: skip
            gate = asyncio.Event()
            streams = [asyncio.create_task(s.run(stats, args.interval, gate)) for s in sessions]
            held = sum(len(c) - 1 for c in chunked)  # the last chunks wait for the faults
            faults = await _faults(cluster, stats, held, streams)
            gate.set()
            for session, task in zip(sessions, streams, strict=True):
                try:
                    await task
                except Fatal as exc:
                    stats.fatal.append(f"{session.sid}: {exc}")
            summaries = [await _request(client, "GET", f"/v1/sessions/{s}") for s in sids]
        duration = time.monotonic() - stats.started
    finally:
        _stop(clean)
        cluster.stop()

    doubled = sum(max(0, s["next_seq"] - len(c)) for s, c in zip(summaries, chunked, strict=True))
    bad_totals = sum(
        s["steps"] != len(x) or s["next_seq"] != len(c)
        for s, x, c in zip(summaries, recordings, chunked, strict=True)
    )
    mismatched = sum(
        any(a is None or not _same(a, b) for a, b in zip(s.answers, e, strict=True))
        for s, e in zip(sessions, expected, strict=True)
    )
    report = {
        "sessions": len(sessions),
        "rest_sessions": sum(not s.websocket for s in sessions),
        "ws_sessions": sum(s.websocket for s in sessions),
        "replicas": args.replicas,
        "chunk": args.chunk,
        "steps": int(sum(len(x) for x in recordings)),
        "chunks": sum(len(c) for c in chunked),
        "requests": stats.requests,
        "retries": stats.retries,
        "replayed": stats.replayed,
        "errors": dict(stats.errors.most_common()),
        "fatal": stats.fatal,
        "lost_chunks": stats.lost_chunks,
        "doubled_chunks": doubled,
        "sessions_with_wrong_totals": bad_totals,
        "sessions_differing_from_clean_run": mismatched,
        "faults": _recoveries(faults, stats),
        "duration_s": round(duration, 1),
    }
    report["ok"] = not (stats.fatal or stats.lost_chunks or doubled or bad_totals or mismatched)
    return report


def format_report(r: dict) -> str:
    """The report as text."""
    lines = [
        f"{r['sessions']} sessions ({r['rest_sessions']} REST, {r['ws_sessions']} WebSocket) "
        f"on {r['replicas']} replicas: {r['steps']} steps in {r['chunks']} chunks of "
        f"{r['chunk']}, {r['requests']} requests, {r['retries']} retries, "
        f"{r['replayed']} replayed answers, {r['duration_s']} s",
        "errors seen: " + (", ".join(f"{k} x{v}" for k, v in r["errors"].items()) or "none"),
        f"lost chunks {r['lost_chunks']}, doubled chunks {r['doubled_chunks']}, sessions with "
        f"wrong totals {r['sessions_with_wrong_totals']}, differing from the clean run "
        f"{r['sessions_differing_from_clean_run']}",
    ]
    lines += [
        f"  {f['fault']:<32} at {f['at_s']:6.2f} s, took {f['action_s']:5.2f} s, "
        f"next answer after {f['recovery_s']} s, {f['errors']} errors until the next fault"
        for f in r["faults"]
    ]
    lines += [f"FATAL {e}" for e in r["fatal"]]
    lines.append("PASS" if r["ok"] else "FAIL")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    """Run the whole scenario in a temporary directory; the report as a dict."""
    with tempfile.TemporaryDirectory(prefix="cluster-faults-") as tmp:
        return asyncio.run(_run(args, Path(tmp)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--steps", type=int, default=400, help="samples per recording (at most)")
    p.add_argument("--chunk", type=int, default=8, help="samples per chunk")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between chunks")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--model-dir", type=Path, default=REPO / "models")
    p.add_argument("--model", default="watch-gru")
    p.add_argument("--json", type=Path, help="also write the report here")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI: run, print the report, exit 1 unless it passed."""
    args = parser().parse_args(argv)
    report = run(args)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Failovers under load: sessions streamed through 2 sarnn-serve replicas over a Redis Cluster
(3 masters, a replica each) or a Sentinel set (a master, 2 replicas, 3 Sentinels) on loopback,
while a master is killed with SIGKILL and a replica promoted, twice:

- "kill": the master dies with its replica in step (on loopback it is behind by well under a
  millisecond): nothing acknowledged should be lost;
- "cut, kill": the master's replication is cut first (its replicas stopped and their links
  closed), the master goes on acknowledging chunks for a second, then dies: the promoted replica
  lacks those chunks, as after a real replication lag.

Clients follow the documented retry rule: the same seq again after a 5xx, 409
concurrent_update or a dropped connection; after 409 session_rolled_back, every chunk again
from its `expected_seq`. Every answer must equal a clean run through one memory-store process;
a chunk a failover lost must have been reported (409 session_rolled_back) and resent, none
applied twice (a session's final steps and next_seq are exact).

    python scripts/redis_failover.py cluster --sessions 12 --json cluster.json
    python scripts/redis_failover.py sentinel
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import websockets
from redis.crc import key_slot

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from sarnn_serve.store.redis_sharded import shard_index, shard_tags  # noqa: E402
from tests.redis_topology import ClusterSet, SentinelSet  # noqa: E402
from tests.service_fixtures import (  # noqa: E402
    FIXTURE_MODELS,
    LiveServer,
    start_server,
    stop_server,
    watch_steps,
)

REQUEST_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 60  # per chunk; backoff doubles from 50 ms up to 1 s
CUT_S = 1.0  # how long a master acknowledges chunks its replicas do not get
SHARDS = 60
PREFIX = "failover"


@dataclass
class Stats:
    """What the clients saw, over every session."""

    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    retries: int = 0
    rollbacks: int = 0  # 409 session_rolled_back answers
    lost_reported: int = 0  # chunks those answers said the store no longer held
    resent_differing: int = 0  # resent chunks whose answer differed from the first one
    rolled_back_at: list[tuple[float, int]] = field(default_factory=list)  # (time, chunks)
    longest_wait_s: float = 0.0  # from a chunk's first send to its answer
    errors: Counter = field(default_factory=Counter)
    fatal: list[str] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)


class Retry(Exception):
    """A failure after which the same seq goes again."""


class Fatal(Exception):
    """What a client following the rule must never see."""


def _answer(status: int, body: dict) -> dict:
    """A chunk's answer; {"rolled_back": n} for 409 session_rolled_back; Retry or Fatal."""
    if status == 200:
        return body
    error = body.get("error") or {}
    code = error.get("code", "")
    if status == 409 and code == "session_rolled_back":
        return {"rolled_back": error["expected_seq"]}
    if status >= 500 or (status == 409 and code == "concurrent_update"):
        raise Retry(f"{status} {code or 'no_body'}")
    raise Fatal(f"{status} {code}: {error.get('message', body)}")


def _parse(text: str | bytes) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        return {}


class Stream:
    """One session: REST chunks alternate between the replicas; a WebSocket moves to the
    other replica when its connection drops."""

    def __init__(self, urls: list[str], sid: str, chunks: list[list], websocket: bool) -> None:
        self.urls, self.sid, self.chunks, self.websocket = urls, sid, chunks, websocket
        self.answers: list[list[dict] | None] = [None] * len(chunks)
        self.ws: websockets.ClientConnection | None = None
        self.replica = 0

    async def _rest(self, client: httpx.AsyncClient, seq: int, body: dict) -> dict:
        url = f"{self.urls[seq % len(self.urls)]}/v1/sessions/{self.sid}/chunks"
        try:
            r = await client.post(url, json=body)
        except httpx.TransportError as exc:
            raise Retry(f"connection {type(exc).__name__}") from exc
        return _answer(r.status_code, _parse(r.content))

    async def _socket(self, body: dict) -> dict:
        try:
            if self.ws is None:
                base = self.urls[self.replica % len(self.urls)].replace("http", "ws", 1)
                ws = await websockets.connect(
                    f"{base}/v1/sessions/{self.sid}/stream", compression=None, open_timeout=5
                )
                first = _parse(await asyncio.wait_for(ws.recv(), REQUEST_TIMEOUT_S))
                if first.get("type") != "session":
                    await ws.close()
                    _answer(first.get("status", 0), first)
                    raise Retry("ws_refused")
                self.ws = ws
            await self.ws.send(json.dumps(body))
            frame = _parse(await asyncio.wait_for(self.ws.recv(), REQUEST_TIMEOUT_S))
        except (Retry, Fatal):
            raise
        except (TimeoutError, OSError, websockets.WebSocketException) as exc:
            await self._drop()
            raise Retry(f"ws_dropped {type(exc).__name__}") from exc
        if frame.get("type") == "error":
            return _answer(frame["status"], frame)
        return frame

    async def _drop(self) -> None:
        ws, self.ws = self.ws, None
        self.replica += 1
        if ws is not None:
            await ws.close()

    async def run(self, stats: Stats, interval: float, gate: asyncio.Event) -> None:
        """Every chunk in order, `interval` s apart; the last one waits for `gate`."""
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            seq, attempt = 0, 0
            while seq < len(self.chunks):
                if seq == len(self.chunks) - 1 and attempt == 0:
                    await gate.wait()  # the streams outlast the failovers
                if attempt == 0:
                    sent = time.monotonic()
                body = {"seq": seq, "inputs": self.chunks[seq]}
                stats.requests += 1
                try:
                    if self.websocket:
                        answer = await self._socket(body)
                    else:
                        answer = await self._rest(client, seq, body)
                except Retry as exc:
                    stats.errors[str(exc)] += 1
                    if attempt >= MAX_ATTEMPTS:
                        raise Fatal(f"seq {seq}: gave up after {attempt} retries") from exc
                    await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
                    attempt, stats.retries = attempt + 1, stats.retries + 1
                    continue
                if "rolled_back" in answer:
                    expected = answer["rolled_back"]
                    if expected >= seq:
                        raise Fatal(f"seq {seq}: rolled back to {expected}, not behind it")
                    stats.errors["409 session_rolled_back"] += 1
                    stats.rollbacks += 1
                    stats.lost_reported += seq - expected
                    stats.rolled_back_at.append((time.monotonic(), seq - expected))
                    seq, attempt = expected, 0  # resend from the first chunk the store lacks
                    continue
                if answer.get("replayed") and attempt == 0:
                    raise Fatal(f"seq {seq}: replayed though sent once (a doubled chunk)")
                first = self.answers[seq]
                if first is not None and not _same(first, answer["steps"]):
                    stats.resent_differing += 1
                stats.successes.append(time.monotonic())
                stats.longest_wait_s = max(stats.longest_wait_s, time.monotonic() - sent)
                self.answers[seq] = answer["steps"]
                seq, attempt = seq + 1, 0
                await asyncio.sleep(interval)
            await self._drop()


def _same(a: list[dict], b: list[dict], tol: float = 1e-5) -> bool:
    keys = ("index", "label", "class", "updates")
    return len(a) == len(b) and all(
        all(x[k] == y[k] for k in keys)
        and np.allclose(x["probabilities"], y["probabilities"], rtol=0, atol=tol)
        for x, y in zip(a, b, strict=True)
    )


async def _clean_answers(url: str, chunked: list[list[list]]) -> list[list[list[dict]]]:
    """Each input streamed over REST into one session of the memory-store server."""

    async def one(chunks: list[list]) -> list[list[dict]]:
        sid = (await client.post("/v1/sessions", json={})).json()["id"]
        out = []
        for seq, chunk in enumerate(chunks):
            r = await client.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": chunk})
            r.raise_for_status()
            out.append(r.json()["steps"])
        return out

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return list(await asyncio.gather(*(one(c) for c in chunked)))


class Topology:
    """The Redis side: start, the sarnn-serve settings, whom to kill, a failover."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        if kind == "cluster":
            self.redis: ClusterSet | SentinelSet = ClusterSet(workdir)
        else:
            self.redis = SentinelSet(workdir)

    def start(self) -> None:
        self.redis.start()

    def env(self, wait_replicas: int) -> dict[str, str]:
        env = {"SARNN_STORE": "redis", "SARNN_REDIS_PREFIX": PREFIX, "SARNN_LOG_LEVEL": "warning",
               "SARNN_REDIS_WAIT_REPLICAS": str(wait_replicas)}  # fmt: skip
        if isinstance(self.redis, ClusterSet):
            return {**env, "SARNN_REDIS_URL": self.redis.url, "SARNN_REDIS_SHARDS": str(SHARDS)}
        return {**env, "SARNN_REDIS_SENTINELS": self.redis.sentinels,
                "SARNN_REDIS_MASTER_NAME": self.redis.name}  # fmt: skip

    def busiest_master(self, sids: list[str], timeout: float = 10.0) -> int:
        """The master with a replica that holds the most of these sessions. The node asked for
        the cluster's view can briefly list no replica for any of them (seen once in a test run
        after a failover), so the view is read again until one shows or `timeout` passes."""
        if isinstance(self.redis, SentinelSet):
            return self.redis.master()
        tags = shard_tags(PREFIX, SHARDS)
        slots = [key_slot(tags[shard_index(sid, SHARDS)].encode()) for sid in sids]
        deadline = time.monotonic() + timeout
        while True:
            held = Counter(self.redis.master_of(slot) for slot in slots)
            with_replica = [port for port, _ in held.most_common() if self.redis.replicas_of(port)]
            if with_replica:
                return with_replica[0]
            if time.monotonic() > deadline:
                raise RuntimeError(f"no master holding these sessions has a replica: {held}")
            time.sleep(0.1)

    def fail_over(self, master: int, cut: bool) -> float:
        """Kill `master` (after cutting its replication for CUT_S if `cut`); the seconds until
        a replica serves in its place."""
        replicas = self.redis.cut_replication(master) if cut else []
        if cut:
            time.sleep(CUT_S)
        t0 = time.monotonic()
        self.redis.procs.kill(master)
        for port in replicas:
            self.redis.procs.resume(port)
        if isinstance(self.redis, ClusterSet):
            self.redis.wait_ok(timeout=30)
        else:
            self.redis.wait_failover(master)
        return time.monotonic() - t0

    def stop(self) -> None:
        self.redis.stop()


async def _failovers(
    topo: Topology, stats: Stats, sids: list[str], held: int, streams: list[asyncio.Task]
) -> list[dict]:
    """ "kill" once a sixth of the held chunks were answered, "cut, kill" half a second after
    its replica took over (while the sessions still stream)."""
    log = []
    while len(stats.successes) < held / 6 and not all(t.done() for t in streams):
        await asyncio.sleep(0.02)
    for cut in (False, True):
        master = await asyncio.to_thread(topo.busiest_master, sids)
        t0 = time.monotonic()
        promoted = await asyncio.to_thread(topo.fail_over, master, cut)
        log.append({"failover": "cut, kill" if cut else "kill", "master": master, "t0": t0,
                    "promoted_after_s": round(promoted, 2)})  # fmt: skip
        await asyncio.sleep(0.5)
    return log


def _attribute(log: list[dict], stats: Stats) -> list[dict]:
    """Each failover with the chunks reported lost from its start to the next one's."""
    ends = [f["t0"] for f in log[1:]] + [float("inf")]
    return [
        {**{k: v for k, v in f.items() if k != "t0"},
         "lost_reported": sum(n for t, n in stats.rolled_back_at if f["t0"] <= t < end)}
        for f, end in zip(log, ends, strict=True)
    ]  # fmt: skip


async def _run(args: argparse.Namespace, workdir: Path) -> dict:
    x = watch_steps()[: args.steps]
    inputs = [np.roll(x, 7 * i, axis=0) for i in range(args.sessions)]
    chunked = [[v[i : i + args.chunk].tolist() for i in range(0, len(v), args.chunk)]
               for v in inputs]  # fmt: skip
    topo = Topology(args.topology, workdir)
    servers: list[LiveServer] = []
    try:
        clean = asyncio.to_thread(start_server, FIXTURE_MODELS, workdir, {"SARNN_STORE": "memory"})
        await asyncio.to_thread(topo.start)
        env = topo.env(args.wait_replicas)
        started = await asyncio.gather(
            clean, *(asyncio.to_thread(start_server, FIXTURE_MODELS, workdir, env) for _ in "ab")
        )
        servers = list(started)
        expected = await _clean_answers(started[0].url, chunked)
        stop_server(started[0])
        urls = [s.url for s in started[1:]]

        stats = Stats()
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            sids = [
                (await client.post(f"{urls[i % 2]}/v1/sessions", json={})).json()["id"]
                for i in range(args.sessions)
            ]
            await asyncio.sleep(0.2)  # the sessions reach the replicas before the failovers
            streams = [Stream(urls, sid, c, i % 2 == 1)
                       for i, (sid, c) in enumerate(zip(sids, chunked, strict=True))]  # fmt: skip
            gate = asyncio.Event()
            tasks = [asyncio.create_task(s.run(stats, args.interval, gate)) for s in streams]
            held = sum(len(c) - 1 for c in chunked)
            failovers = await _failovers(topo, stats, sids, held, tasks)
            gate.set()
            for stream, task in zip(streams, tasks, strict=True):
                try:
                    await task
                except Fatal as exc:
                    stats.fatal.append(f"{stream.sid}: {exc}")
            summaries = [(await client.get(f"{urls[0]}/v1/sessions/{s}")).json() for s in sids]
        duration = time.monotonic() - stats.started
    finally:
        for server in servers:
            stop_server(server)
        topo.stop()

    doubled = sum(
        max(0, s.get("next_seq", 0) - len(c)) for s, c in zip(summaries, chunked, strict=True)
    )
    wrong = sum(
        s.get("steps") != len(v) or s.get("next_seq") != len(c)
        for s, v, c in zip(summaries, inputs, chunked, strict=True)
    )
    differing = sum(
        any(a is None or not _same(a, b) for a, b in zip(s.answers, e, strict=True))
        for s, e in zip(streams, expected, strict=True)
    )
    report = {
        "topology": args.topology,
        "wait_replicas": args.wait_replicas,
        "sessions": len(streams),
        "ws_sessions": sum(s.websocket for s in streams),
        "chunks": sum(len(c) for c in chunked),
        "steps": int(sum(len(v) for v in inputs)),
        "requests": stats.requests,
        "retries": stats.retries,
        "failovers": _attribute(failovers, stats),
        "longest_chunk_wait_s": round(stats.longest_wait_s, 2),
        "rollbacks": stats.rollbacks,
        "lost_and_reported": stats.lost_reported,
        "resent_differing": stats.resent_differing,
        "doubled": doubled,
        "sessions_with_wrong_totals": wrong,
        "sessions_differing_from_clean_run": differing,
        "errors": dict(stats.errors.most_common()),
        "fatal": stats.fatal,
        "duration_s": round(duration, 1),
    }
    report["ok"] = not (stats.fatal or doubled or wrong or differing or stats.resent_differing)
    return report


def format_report(r: dict) -> str:
    lines = [
        f"{r['topology']}: {r['sessions']} sessions ({r['ws_sessions']} WebSocket) through 2 "
        f"replicas, {r['chunks']} chunks ({r['steps']} steps), {r['requests']} requests, "
        f"{r['retries']} retries, WAIT replicas {r['wait_replicas']}, {r['duration_s']} s",
        f"failovers {len(r['failovers'])}, lost and reported {r['lost_and_reported']} chunks in "
        f"{r['rollbacks']} session_rolled_back answers, doubled {r['doubled']}, wrong totals "
        f"{r['sessions_with_wrong_totals']}, differing from the clean run "
        f"{r['sessions_differing_from_clean_run']}",
        "errors seen: " + (", ".join(f"{k} x{v}" for k, v in r["errors"].items()) or "none"),
        f"longest wait for one chunk's answer: {r['longest_chunk_wait_s']} s",
    ]
    lines += [
        f"  {f['failover']:<10} master :{f['master']}, replica serving after "
        f"{f['promoted_after_s']} s, {f['lost_reported']} chunks lost and reported"
        for f in r["failovers"]
    ]
    lines += [f"FATAL {e}" for e in r["fatal"]]
    lines.append("PASS" if r["ok"] else "FAIL")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_run(args, args.workdir))
    with tempfile.TemporaryDirectory(prefix="redis-failover-") as tmp:
        return asyncio.run(_run(args, Path(tmp)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("topology", choices=("cluster", "sentinel"))
    p.add_argument("--sessions", type=int, default=12, help="half REST, half WebSocket")
    p.add_argument("--steps", type=int, default=300, help="samples per session (at most 300)")
    p.add_argument("--chunk", type=int, default=4, help="samples per chunk")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between chunks")
    p.add_argument("--wait-replicas", type=int, default=0, help="SARNN_REDIS_WAIT_REPLICAS")
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--workdir", type=Path, help="keep logs here (default: a temporary dir)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    report = run(args)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

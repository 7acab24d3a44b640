"""Replicas over one Redis and over a Redis Cluster: steps/s with 1, 2 and 4 sarnn-serve
replicas, the Redis commands and Redis CPU each chunk costs, and from that the ceiling of one
Redis instance.

    .venv/bin/python benchmarks/bench_redis_scaling.py [--duration 5] [--sessions 64]
        [--chunk 1] [--model watch-gru] [--json out.json]

Everything runs on this machine at once: the load generator, the replicas and the Redis
processes share its cores (2 here), so the steps/s columns say how the pieces share one
machine, not how replicas on machines of their own would scale. What carries over to a bigger
machine is per chunk: the Redis commands (INFO commandstats deltas on every master, over the
scored window) and the Redis CPU (INFO used_cpu_user + used_cpu_sys deltas). Redis runs
commands on one thread, so one instance at its CPU limit serves 1 / (CPU seconds per chunk)
chunks per second; a session streaming one sample per chunk at 50 Hz sends 50 chunks per
second.

Loads, each closed loop (a session sends its next chunk when the answer came):
  ws     `--sessions` sessions over WebSocket binary frames (benchmarks/ws_raw.py), session i
         sticking to replica i mod n: each chunk is one compare-and-set (the replica that
         wrote the session last keeps its record);
  rest   the same sessions over REST (JSON, columns answer), chunk k of a session to replica
         k mod 2: the record is never the writer's, each chunk loads it first;
  wait   8 WebSocket sessions on 2 replicas of the cluster with SARNN_REDIS_WAIT_REPLICAS=0
         and =1: the latency WAIT for one replica adds.
The cluster is 3 masters with a replica each (tests/redis_topology.py); one Redis is a
redis-server without a replica. Neither persists (no AOF), as both would on tmpfs.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from load_http import Connection, http_endpoint  # noqa: E402
from ws_raw import RawWebSocket  # noqa: E402

from sarnn_serve import frames  # noqa: E402
from tests.redis_topology import ClusterSet  # noqa: E402
from tests.service_fixtures import (  # noqa: E402
    LiveServer,
    start_redis,
    start_server,
    stop_process,
    stop_server,
    watch_steps,
)

OWN_COMMANDS = ("cmdstat_info", "cmdstat_cluster", "cmdstat_ping", "cmdstat_command")
# what the store sends (the rest runs inside its scripts): a script per call, HGETALL for the
# tag counts; WAIT rides in the same round trip as the script before it
ROUND_TRIPS = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_hgetall")


def _redis_counters(ports: list[int]) -> dict[str, float]:
    """Commands (round trips, WAITs, all) and CPU seconds summed over these Redis instances,
    the benchmark's own INFO left out."""
    out = {"round_trips": 0.0, "waits": 0.0, "commands": 0.0, "cpu": 0.0}
    for port in ports:
        r = redis.Redis(port=port)
        for name, v in r.info("commandstats").items():
            if name.startswith(OWN_COMMANDS):
                continue
            out["commands"] += v["calls"]
            out["round_trips"] += v["calls"] if name in ROUND_TRIPS else 0
            out["waits"] += v["calls"] if name == "cmdstat_wait" else 0
        cpu = r.info("cpu")
        out["cpu"] += cpu["used_cpu_user"] + cpu["used_cpu_sys"]
        r.close()
    return out


class Load:
    """Closed-loop sessions; counts chunks, steps and answer latencies inside the window."""

    def __init__(self, x: np.ndarray, chunk: int, window: tuple[float, float]) -> None:
        self.x, self.chunk, self.window = x, chunk, window
        self.chunks = 0
        self.steps = 0
        self.latencies: list[float] = []
        self.errors = 0

    def _count(self, sent: float, steps: int) -> None:
        now = time.monotonic()
        if self.window[0] <= sent and now <= self.window[1]:
            self.chunks += 1
            self.steps += steps
            self.latencies.append(now - sent)

    def _rows(self, seq: int) -> np.ndarray:
        start = (seq * self.chunk) % (len(self.x) - self.chunk)
        return self.x[start : start + self.chunk]

    async def websocket(self, url: str, sid: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        ws = await RawWebSocket.connect(host, int(port), f"/v1/sessions/{sid}/stream")
        try:
            await ws.recv()  # the session frame
            seq = 0
            while time.monotonic() < self.window[1]:
                sent = time.monotonic()
                await ws.send(frames.encode_chunk(seq, self._rows(seq)))
                answer = await ws.recv()
                if not frames.is_binary_chunk(answer):
                    self.errors += 1
                    continue
                self._count(sent, self.chunk)
                seq += 1
        finally:
            await ws.close()

    async def rest(self, urls: list[str], sid: str) -> None:
        """Chunk k to replica k mod len(urls), each over a keep-alive connection of its own."""
        conns = [await Connection.open(*http_endpoint(url)) for url in urls]
        heads = [c.head("POST", f"/v1/sessions/{sid}/chunks") for c in conns]
        try:
            seq = 0
            while time.monotonic() < self.window[1]:
                sent = time.monotonic()
                body = {"seq": seq, "inputs": self._rows(seq), "answer": "columns"}
                k = seq % len(conns)
                status, _ = await conns[k].exchange(
                    heads[k], orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
                )
                if status != 200:
                    self.errors += 1
                    continue
                self._count(sent, self.chunk)
                seq += 1
        finally:
            for conn in conns:
                conn.close()


async def _sessions(urls: list[str], n: int) -> list[str]:
    async with httpx.AsyncClient(timeout=30) as c:
        made = [c.post(f"{urls[i % len(urls)]}/v1/sessions", json={}) for i in range(n)]
        return [r.json()["id"] for r in await asyncio.gather(*made)]


async def run_load(
    kind: str, urls: list[str], sessions: int, args: argparse.Namespace, ports: list[int]
) -> dict:
    """One scored run: its steps/s, latencies, and Redis commands and CPU per chunk."""
    sids = await _sessions(urls, sessions)
    start = time.monotonic() + args.warmup
    load = Load(watch_steps(), args.chunk, (start, start + args.duration))
    async with httpx.AsyncClient(timeout=30) as c:
        if kind == "rest":
            tasks = [load.rest(urls[:2], sid) for sid in sids]
        else:
            tasks = [load.websocket(urls[i % len(urls)], sid) for i, sid in enumerate(sids)]
        runner = asyncio.gather(*tasks)
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        before = await asyncio.to_thread(_redis_counters, ports)
        cpu0 = time.process_time()
        await asyncio.sleep(args.duration)
        after = await asyncio.to_thread(_redis_counters, ports)
        client_cpu = time.process_time() - cpu0
        await runner
        await asyncio.gather(*(c.delete(f"{urls[0]}/v1/sessions/{sid}") for sid in sids))
    chunks = max(1, load.chunks)
    per_chunk = {k: (after[k] - before[k]) / chunks for k in before}
    lat = np.array(load.latencies or [0.0]) * 1000
    return {
        "chunks_per_s": round(load.chunks / args.duration),
        "steps_per_s": round(load.steps / args.duration),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "errors": load.errors,
        "redis_round_trips_per_chunk": round(per_chunk["round_trips"], 3),
        "redis_waits_per_chunk": round(per_chunk["waits"], 3),
        "redis_commands_per_chunk": round(per_chunk["commands"], 2),
        "redis_cpu_us_per_chunk": round(per_chunk["cpu"] * 1e6, 1),
        "redis_cpu_share": round((after["cpu"] - before["cpu"]) / args.duration, 3),
        "client_cpu_share": round(client_cpu / args.duration, 3),
    }


def _start_servers(models: Path, tmp: Path, env: dict[str, str], n: int) -> list[LiveServer]:
    env = {**env, "SARNN_LOG_LEVEL": "warning", "SARNN_STORE": "redis"}
    servers: list[LiveServer] = []
    try:
        for _ in range(n):
            servers.append(start_server(models, tmp, env))
    except BaseException:
        for server in servers:
            stop_server(server)
        raise
    return servers


def _ceiling(row: dict) -> dict:
    """Chunks/s one Redis instance runs at 100 % of its one core (a cluster's Redis CPU per
    chunk is its masters' sum, as if one ran every chunk), and sessions at 50 Hz."""
    per_chunk = row["redis_cpu_us_per_chunk"] / 1e6
    chunks = 1 / per_chunk if per_chunk else float("inf")
    return {"chunks_per_s_at_cpu_limit": round(chunks), "sessions_at_50_hz": round(chunks / 50)}


async def bench(args: argparse.Namespace, tmp: Path) -> dict:
    models = tmp / "models"
    models.mkdir()
    (models / args.model).symlink_to(args.model_dir.resolve() / args.model)
    single, single_url = start_redis(tmp)
    cluster = ClusterSet(tmp / "cluster")
    (tmp / "cluster").mkdir()
    results: dict = {"model": args.model, "chunk": args.chunk, "sessions": args.sessions,
                     "cores": os.cpu_count(), "rows": []}  # fmt: skip
    try:
        cluster.start()
        masters = sorted({p for p, _, _ in cluster.slot_ranges()})
        single_port = int(single_url.rsplit(":", 1)[1].split("/")[0])
        stores = [
            ("one Redis", {"SARNN_REDIS_URL": single_url}, [single_port]),
            ("cluster", {"SARNN_REDIS_URL": cluster.url}, masters),
        ]
        for name, env, ports in stores:
            servers = _start_servers(models, tmp, env, max(args.replicas))
            try:
                urls = [s.url for s in servers]
                for n in args.replicas:
                    row = await run_load("ws", urls[:n], args.sessions, args, ports)
                    results["rows"].append({"store": name, "load": "ws", "replicas": n, **row})
                    print(json.dumps(results["rows"][-1]), flush=True)
                row = await run_load("rest", urls[:2], args.sessions, args, ports)
                results["rows"].append({"store": name, "load": "rest", "replicas": 2, **row})
                print(json.dumps(results["rows"][-1]), flush=True)
                if name == "cluster":
                    waiting = _start_servers(
                        models, tmp, {**env, "SARNN_REDIS_WAIT_REPLICAS": "1"}, 2
                    )
                    try:
                        for wait, pair in ((0, urls[:2]), (1, [s.url for s in waiting])):
                            row = await run_load("ws", pair, 8, args, ports)
                            results["rows"].append(
                                {"store": name, "load": f"wait {wait}", "replicas": 2, **row}
                            )
                            print(json.dumps(results["rows"][-1]), flush=True)
                    finally:
                        for server in waiting:
                            stop_server(server)
            finally:
                for server in servers:
                    stop_server(server)
    finally:
        cluster.stop()
        stop_process(single)
    results["ceiling"] = {
        name: _ceiling(
            max(
                (r for r in results["rows"] if r["store"] == name and r["load"] == "ws"),
                key=lambda r: r["chunks_per_s"],
            )
        )
        for name, _, _ in stores
    }
    return results


def report(r: dict) -> str:
    lines = [
        f"{r['model']}, {r['chunk']} sample(s) per chunk, {r['sessions']} closed-loop sessions; "
        f"client, replicas and Redis share {r['cores']} cores",
        "store      load    replicas  steps/s  p50 ms  p99 ms  round trips/chunk  WAIT/chunk  "
        "commands/chunk  Redis CPU us/chunk  Redis CPU  errors",
    ]
    for row in r["rows"]:
        lines.append(
            f"{row['store']:<10} {row['load']:<7} {row['replicas']:>8} {row['steps_per_s']:>8} "
            f"{row['p50_ms']:>7} {row['p99_ms']:>7} {row['redis_round_trips_per_chunk']:>18} "
            f"{row['redis_waits_per_chunk']:>11} {row['redis_commands_per_chunk']:>15} "
            f"{row['redis_cpu_us_per_chunk']:>19} {row['redis_cpu_share']:>10} {row['errors']:>7}"
        )
    for store, c in r["ceiling"].items():
        lines.append(
            f"{store}: one Redis instance at its CPU limit (one core) runs "
            f"{c['chunks_per_s_at_cpu_limit']} chunks/s, {c['sessions_at_50_hz']} sessions "
            "sending one sample per chunk at 50 Hz (from its busiest WebSocket run)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="scored seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before scoring starts")
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--chunk", type=int, default=1, help="samples per chunk")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--model", default="watch-gru")
    p.add_argument("--model-dir", type=Path, default=ROOT / "models")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="redis-scaling-") as tmp:
        results = asyncio.run(bench(args, Path(tmp)))
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

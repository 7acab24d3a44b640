"""sarnn-serve against MLServer, side by side in one run on this machine.

    .venv/bin/python benchmarks/compare.py [--samples 1 32] [--clients 16 64 256]
        [--transports ws-binary ws-json rest v2] [--repeats 1] [--duration 10] [--warmup 2]
        [--workers 2] [--peer-workers 1] [--out docs/bench]

Servers (all on loopback, started here and stopped at the end, also on errors, Ctrl-C and
SIGTERM), both serving models/watch-gru with its dense chunk graph (model.onnx):

  sarnn-serve  --workers uvicorn workers (default 2), SARNN_ENGINE_PATH=dense (the graph the
               peer runs; no routing to the sparse graph), quotas lifted, log level warning.
               WebSocket runs go to an instance with the memory store (a socket's session stays
               on its worker). REST runs need a store the workers share once there are several
               (a chunk may land on another worker): with --workers > 1 they go to a second
               instance with SARNN_STORE=redis and a redis-server started here (no
               persistence); with --workers 1 one memory-store instance serves both. Both
               instances run for the whole comparison; the one not under load is idle.
  MLServer     1.7.1 via benchmarks/peers/mlserver/serve.sh, --peer-workers inference workers
               (default 1), adaptive batching as in its model-settings.json. Stateless: the
               client sends the state with every request.

Transports, each run being one subprocess of a load generator (benchmarks/load_ws.py or
load_http.py) with --json to a temp file:

  ws-binary  ours, WebSocket, binary frames in and out (load_ws --format raw --client raw)
  ws-json    ours, WebSocket, JSON in, columns answer (load_ws --format json --answer columns
             --client raw)
  rest       ours, REST session chunks, columns answer (load_http --target sarnn --answer columns)
  v2         MLServer, Open Inference Protocol REST (load_http --target v2)

Shapes: --samples samples per message x --clients concurrent clients, each streaming its own
held-out watch recording in a closed loop (one message in flight per client; the next is sent
when the answer arrives). Runs are interleaved: for each shape every transport runs back to
back, in an order rotated by one between repeats (--repeats, outermost loop).

Measured in each run's window [--warmup, --duration] seconds after the common start: steps/s
(samples answered), messages/s (answers), p50/p99 latency of a message (send to answer, ms),
errors (error answers, lost answers, failed checks), server CPU (the server's process tree:
uvicorn supervisor and workers, or MLServer and its workers) and client CPU (the load
generator's process), in cores (CPU seconds / window seconds). redis-server's CPU, for the runs
through it, is reported beside the server's: its CPU time over the whole subprocess divided by
--duration (approximate). The client runs on the same cores as the servers and takes its share
of them (client CPU): the figures are what a server reaches beside its client, not alone. The
1-minute load average is recorded per run. The table gives medians over repeats (errors
summed) and each of ours against the peer's steps/s in the same shape.

Writes --out/compare.json (every run, with its command and server config), compare.md (a table
per shape) and compare.png (steps/s per shape and transport, log scale), and prints the tables.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from load_ws import cpu_seconds  # noqa: E402  (puts ROOT on sys.path too)

from tests.service_fixtures import UNLIMITED, _pong, free_port  # noqa: E402

MODEL = "watch-gru"
PEER = BENCH / "peers" / "mlserver"
LIFTED = {  # one client IP opens every session: lift the per-key and per-process limits
    **UNLIMITED,
    "SARNN_MAX_WS_CONNECTIONS": "100000",
    "SARNN_MAX_WS_CONNECTIONS_PER_KEY": "100000",
    "SARNN_LOG_LEVEL": "warning",
}


@dataclass(frozen=True)
class Transport:
    label: str
    role: str  # which server: "ws" (ours, WebSocket), "rest" (ours, REST) or "peer"
    tool: str  # load generator in benchmarks/
    options: tuple[str, ...]


TRANSPORTS = {
    "ws-binary": Transport(
        "ours WebSocket binary",
        "ws",
        "load_ws.py",
        ("--format", "raw", "--client", "raw", "--rate", "0"),
    ),
    "ws-json": Transport(
        "ours WebSocket JSON columns",
        "ws",
        "load_ws.py",
        ("--format", "json", "--answer", "columns", "--client", "raw", "--rate", "0"),
    ),
    "rest": Transport(
        "ours REST columns", "rest", "load_http.py", ("--target", "sarnn", "--answer", "columns")
    ),
    "v2": Transport("MLServer v2 REST", "peer", "load_http.py", ("--target", "v2")),
}


@dataclass(frozen=True)
class Shape:
    samples: int  # per message
    clients: int

    def __str__(self) -> str:
        return f"{self.samples} sample{'s' * (self.samples != 1)}/message x {self.clients} clients"


@dataclass(frozen=True)
class Redis:
    url: str
    pid: int


@dataclass(frozen=True)
class Server:
    config: dict  # what runs, as recorded with each run ("label": one line of it)
    port: int
    pid: int
    redis_pid: int | None = None

    def url(self, tool: str) -> str:
        scheme = "ws" if tool == "load_ws.py" else "http"
        return f"{scheme}://127.0.0.1:{self.port}"


# ---------------------------------------------------------------------------------------------
# processes


@contextlib.contextmanager
def servers_scope() -> Iterator[tuple[contextlib.ExitStack, Path]]:
    """An ExitStack that stops every process started on it when the block ends (SIGTERM ends
    the block too), and a temp dir for logs and run files."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with (
            tempfile.TemporaryDirectory(prefix="sarnn-compare-") as tmp,
            contextlib.ExitStack() as stack,
        ):
            yield stack, Path(tmp)
    finally:
        signal.signal(signal.SIGTERM, previous)


def spawn(stack: contextlib.ExitStack, cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start `cmd` in its own process group; the stack stops the group."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    stack.callback(stop_group, proc)
    return proc


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of `proc`; SIGKILL to what is left after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_until(ready, proc: subprocess.Popen, log: Path, what: str, timeout: float = 120) -> None:
    """Poll `ready()` until true; RuntimeError with the log's tail if `proc` exits first or
    `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            state = f"exited ({proc.returncode})" if proc.poll() is not None else "not ready"
            raise RuntimeError(f"{what} {state}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


def models_dir(workdir: Path) -> Path:
    """A models directory holding only watch-gru (a link to the shipped one)."""
    path = workdir / "models"
    if not path.exists():
        path.mkdir()
        (path / MODEL).symlink_to(ROOT / "models" / MODEL)
    return path


def start_redis(stack: contextlib.ExitStack, workdir: Path) -> Redis:
    """A redis-server without persistence on a free loopback port."""
    port = free_port()
    log = workdir / f"redis-{port}.log"
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
    proc = spawn(stack, cmd, dict(os.environ), log)
    wait_until(lambda: _pong(port), proc, log, "redis-server", timeout=20)
    return Redis(f"redis://127.0.0.1:{port}/0", proc.pid)


def start_ours(
    stack: contextlib.ExitStack, workdir: Path, workers: int, redis: Redis | None = None
) -> Server:
    """sarnn-serve on a free port: the memory store, or the Redis store given `redis`."""
    port = free_port()
    store = "redis" if redis else "memory"
    settings = {**LIFTED, "SARNN_WORKERS": str(workers), "SARNN_STORE": store}
    settings |= {"SARNN_MODEL_DIR": str(models_dir(workdir)), "SARNN_PORT": str(port)}
    if redis:
        settings["SARNN_REDIS_URL"] = redis.url
    log = workdir / f"sarnn-serve-{port}.log"
    cmd = [sys.executable, "-m", "sarnn_serve.cli", "serve"]
    # gRPC on a free port: not on 8001, which a running server may hold
    proc = spawn(stack, cmd, {**os.environ, **settings, "SARNN_GRPC_PORT": "0"}, log)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), proc, log, "sarnn-serve")
    label = f"sarnn-serve, {workers} worker{'s' * (workers > 1)}, {store} store, dense graph"
    config = {"label": label, "server": "sarnn-serve", "workers": workers, "store": store}
    return Server(config | {"env": settings}, port, proc.pid, redis.pid if redis else None)


def start_peer(stack: contextlib.ExitStack, workdir: Path, workers: int) -> Server:
    """MLServer through benchmarks/peers/mlserver/serve.sh (its pid is the server's)."""
    if not (PEER / ".venv" / "bin" / "mlserver").exists():
        raise SystemExit(f"no MLServer: run {PEER / 'setup.sh'} (or leave out --transports v2)")
    port = free_port()
    log = workdir / f"mlserver-{port}.log"
    cmd = [str(PEER / "serve.sh"), str(ROOT / "models" / MODEL), str(port), str(workers)]
    proc = spawn(stack, cmd, dict(os.environ), log)
    ready = f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready"
    wait_until(lambda: http_ok(ready), proc, log, "MLServer")
    batching = json.loads((PEER / "model-settings.json").read_text())
    label = f"MLServer 1.7.1, {workers} worker{'s' * (workers != 1)}, dense graph"
    config = {"label": label, "server": "mlserver", "workers": workers}
    config |= {k: batching[k] for k in ("max_batch_size", "max_batch_time")}
    return Server(config, port, proc.pid)


# ---------------------------------------------------------------------------------------------
# runs


def run_load(
    transport: str, server: Server, shape: Shape, duration: float, warmup: float, workdir: Path
) -> dict:
    """One run of the load generator for `transport` against `server`: its record."""
    t = TRANSPORTS[transport]
    fd, out = tempfile.mkstemp(prefix=f"{transport}-", suffix=".json", dir=workdir)
    os.close(fd)
    count = "--sessions" if t.tool == "load_ws.py" else "--clients"
    cmd = [sys.executable, f"benchmarks/{t.tool}", *t.options, "--url", server.url(t.tool),
           "--model", MODEL, count, str(shape.clients), "--chunk", str(shape.samples),
           "--duration", str(duration), "--warmup", str(warmup), "--json", out,
           "--server-pid", str(server.pid)]  # fmt: skip
    redis_before = cpu_seconds(server.redis_pid) if server.redis_pid else None
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=duration + 180)
    redis_after = cpu_seconds(server.redis_pid) if server.redis_pid else None
    if proc.returncode != 0:
        raise RuntimeError(f"{transport} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {
        "transport": transport,
        "label": t.label,
        "samples": shape.samples,
        "clients": shape.clients,
        "server": server.config,
        "started": started,
        "figures": json.loads(Path(out).read_text()),
        "redis_cpu": cores(redis_before, redis_after, duration),
        "command": shlex.join(["python", *cmd[1:]]),
    }


def cores(before: tuple | None, after: tuple | None, span: float) -> float | None:
    """CPU seconds between two (user, system) readings per second of `span`."""
    if before is None or after is None:
        return None
    return (sum(after) - sum(before)) / span


def rotated(items: list, k: int) -> list:
    """`items` rotated left by k."""
    k %= len(items)
    return items[k:] + items[:k]


def run_plan(shapes: list[Shape], transports: list[str], repeats: int) -> list[tuple]:
    """(repeat, shape, transport) in run order: per repeat and shape every transport, in an
    order rotated by one per repeat."""
    return [
        (r, shape, t) for r in range(repeats) for shape in shapes for t in rotated(transports, r)
    ]


def progress(i: int, n: int, record: dict) -> str:
    """One line about a finished run."""
    f, server = record["figures"], record["server"]
    where = f"{server['workers']}w {server.get('store', server['server'])}"
    p99 = f["latency_ms"]["p99"]
    cpu = [(f.get(k) or {}).get("total") for k in ("server_cpu", "client_cpu")]
    return (
        f"[{i}/{n}] {record['samples']:>2} x {record['clients']:<3} {record['transport']:<9} "
        f"{where:<9} "
        f"{f['achieved_steps_per_s']:>10,.0f} steps/s  p99 {num(p99, '.1f'):>6} ms  "
        f"{f['errors']} errors  cpu server {num(cpu[0], '.2f')} client {num(cpu[1], '.2f')}  "
        f"load {f['load_avg_1m']:.2f}"
    )


# ---------------------------------------------------------------------------------------------
# report


def num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None without both."""
    return a / b if a is not None and b else None


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(records: list[dict]) -> dict:
    """Medians over the runs of one transport and shape; errors summed."""
    figs = [r["figures"] for r in records]
    return {
        "steps": median([f["achieved_steps_per_s"] for f in figs]),
        "messages": median([f["messages_per_s"] for f in figs]),
        "p50": median([f["latency_ms"]["p50"] for f in figs]),
        "p99": median([f["latency_ms"]["p99"] for f in figs]),
        "errors": sum(f["errors"] for f in figs),
        "server_cpu": median([(f.get("server_cpu") or {}).get("total") for f in figs]),
        "client_cpu": median([(f.get("client_cpu") or {}).get("total") for f in figs]),
        "redis_cpu": median([r.get("redis_cpu") for r in records]),
    }


def shapes_of(records: list[dict]) -> list[Shape]:
    """The shapes in `records`, by samples then clients."""
    return sorted(
        {Shape(r["samples"], r["clients"]) for r in records}, key=lambda s: (s.samples, s.clients)
    )


def of_shape(records: list[dict], shape: Shape) -> list[dict]:
    return [r for r in records if Shape(r["samples"], r["clients"]) == shape]


def shape_table(records: list[dict]) -> list[str]:
    """The markdown table of one shape's records: a row per transport."""
    groups = {t: [r for r in records if r["transport"] == t] for t in TRANSPORTS}
    rows = {t: summary(g) for t, g in groups.items() if g}
    peer = rows["v2"]["steps"] if "v2" in rows else None
    lines = [
        "| transport | server | steps/s | messages/s | p50 ms | p99 ms | errors "
        "| server CPU (cores) | client CPU (cores) | steps/s / peer's |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t, s in rows.items():
        server_cpu = num(s["server_cpu"], ".2f")
        if s["redis_cpu"] is not None:
            server_cpu += f" + {s['redis_cpu']:.2f} redis"
        lines.append(
            f"| {TRANSPORTS[t].label} | {groups[t][0]['server']['label']} "
            f"| {num(s['steps'], ',.0f')} "
            f"| {num(s['messages'], ',.0f')} | {num(s['p50'], '.1f')} | {num(s['p99'], '.1f')} "
            f"| {s['errors']} | {server_cpu} | {num(s['client_cpu'], '.2f')} "
            f"| {num(ratio(s['steps'], peer), '.2f')} |"
        )
    return lines


def render_markdown(records: list[dict], meta: dict) -> str:
    """compare.md: how it was run, then a table per shape."""
    repeats = meta["repeats"]
    loads = [r["figures"]["load_avg_1m"] for r in records]
    lines = [
        "# sarnn-serve against MLServer",
        "",
        f"`{' '.join(meta['command'])}` at {meta['started']} on {meta['host']} "
        f"({meta['cpus']} cpus, commit {meta['commit']}); 1-minute load average "
        f"{min(loads):.2f}-{max(loads):.2f} over the runs.",
        "",
        f"Closed loop, {meta['duration']:g} s per run of which the first {meta['warmup']:g} s "
        f"are not scored; {'medians of ' + str(repeats) + ' runs' if repeats > 1 else 'one run'}"
        " per row, interleaved. The client runs on the same cores as the servers. CPU in cores "
        "(CPU seconds per second scored); + redis: redis-server's CPU over the whole run per "
        "second of sending. Last column: steps/s over MLServer's in the same shape. Servers:",
        "",
        *(f"- {role}: {config['label']}" for role, config in meta["servers"].items()),
    ]
    for shape in shapes_of(records):
        lines += ["", f"## {shape}", "", *shape_table(of_shape(records, shape))]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    """Steps/s per shape and transport (bars: medians, dots: runs), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = shapes_of(records)
    names = [t for t in TRANSPORTS if any(r["transport"] == t for r in records)]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(shapes)), 4.5))
    for i, name in enumerate(names):
        xs = np.arange(len(shapes)) + (i - (len(names) - 1) / 2) * width
        runs = [[r["figures"]["achieved_steps_per_s"] for r in of_shape(records, s)
                 if r["transport"] == name] for s in shapes]  # fmt: skip
        heights = [median(v) or np.nan for v in runs]
        ax.bar(xs, heights, width, color=f"C{i}", label=TRANSPORTS[name].label)
        for x, v in zip(xs, runs, strict=True):
            ax.plot([x] * len(v), v, "k.", markersize=3)
    ax.set_yscale("log")
    ax.set_xticks(range(len(shapes)), [f"{s.samples} x {s.clients}" for s in shapes])
    ax.set_xlabel("samples per message x clients")
    ax.set_ylabel("steps/s")
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def commit() -> str:
    """The checked-out commit, marked dirty if the tree has changes."""
    out = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
    )
    return out.stdout.strip() or "unknown"


def run_meta(script: str, argv: list[str], args: argparse.Namespace) -> dict:
    """What an output records about the whole run of `script` (a file in benchmarks/)."""
    return {
        "command": [f"benchmarks/{Path(script).name}", *argv],
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "commit": commit(),
        "duration": args.duration,
        "warmup": args.warmup,
    }


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, nargs="+", default=[1, 32], help="per message")
    p.add_argument("--clients", type=int, nargs="+", default=[16, 64, 256], help="concurrent")
    p.add_argument("--transports", nargs="+", choices=list(TRANSPORTS), default=list(TRANSPORTS))
    p.add_argument("--repeats", type=int, default=1, help="runs of each transport and shape")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="first seconds of a run not scored")
    p.add_argument("--workers", type=int, default=2, help="sarnn-serve's uvicorn workers")
    p.add_argument("--peer-workers", type=int, default=1, help="MLServer's inference workers")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench", help="output directory")
    args = p.parse_args(argv)
    if min(args.samples + args.clients) < 1 or args.repeats < 1 or args.workers < 1:
        p.error("--samples, --clients, --repeats and --workers must be >= 1")
    if not 0 <= args.warmup < args.duration:
        p.error("need 0 <= --warmup < --duration")
    args.transports = [t for t in TRANSPORTS if t in args.transports]  # one fixed order
    return args


def start_servers(
    stack: contextlib.ExitStack, workdir: Path, args: argparse.Namespace
) -> dict[str, Server]:
    """The server of each role the chosen transports need."""
    roles = {TRANSPORTS[t].role for t in args.transports}
    servers: dict[str, Server] = {}
    if "ws" in roles:
        servers["ws"] = start_ours(stack, workdir, args.workers)
    if "rest" in roles and args.workers == 1:
        servers["rest"] = servers.get("ws") or start_ours(stack, workdir, 1)
    elif "rest" in roles:
        servers["rest"] = start_ours(stack, workdir, args.workers, start_redis(stack, workdir))
    if "peer" in roles:
        servers["peer"] = start_peer(stack, workdir, args.peer_workers)
    return servers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    shapes = [Shape(s, c) for s in args.samples for c in args.clients]
    plan = run_plan(shapes, args.transports, args.repeats)
    meta = run_meta(__file__, argv, args) | {"repeats": args.repeats}
    records = []
    with servers_scope() as (stack, workdir):
        servers = start_servers(stack, workdir, args)
        roles = {"ws": "WebSocket runs", "rest": "REST runs", "peer": "v2 runs"}
        meta["servers"] = {roles[k]: s.config for k, s in servers.items()}
        for role, config in meta["servers"].items():
            print(f"{role}: {config['label']}")
        for i, (repeat, shape, transport) in enumerate(plan, 1):
            server = servers[TRANSPORTS[transport].role]
            record = run_load(transport, server, shape, args.duration, args.warmup, workdir)
            records.append(record | {"repeat": repeat})
            print(progress(i, len(plan), record), flush=True)
    write_outputs(args.out, meta, records)
    return 0


def write_outputs(out: Path, meta: dict, records: list[dict]) -> None:
    """compare.json, compare.md and compare.png in `out`; prints the tables."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps({**meta, "runs": records}, indent=2) + "\n")
    markdown = render_markdown(records, meta)
    (out / "compare.md").write_text(markdown)
    plot(records, out / "compare.png")
    print(f"\n{markdown}\nwrote {out / 'compare.json'}, compare.md, compare.png")


if __name__ == "__main__":
    raise SystemExit(main())

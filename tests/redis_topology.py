"""Real Redis topologies on loopback for the failover suites and the scaling benchmark: a Redis
Cluster (masters with a replica each, `redis-cli --cluster create`) and a Sentinel set (a
master, its replicas and three Sentinels). Every process is a real redis-server on a free port
in a temporary directory, stopped by `stop()`.

`cut_replication(master)` makes a failover lose writes on purpose: on loopback a replica is
behind its master by well under a millisecond, so a SIGKILL alone rarely loses an acknowledged
write. It stops the master's replicas (SIGSTOP) and closes their links on the master, which
keeps acknowledging writes it can no longer send: the window in which an asynchronous failover
loses data. `resume` (SIGCONT) lets them go on; the master is killed in between.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from tests.service_fixtures import _pong, free_port

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=5, decode_responses=True)


class Processes:
    """redis-server processes by port, each with its own directory and log."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, port: int, *args: str, sentinel: bool = False) -> None:
        home = self.workdir / str(port)
        home.mkdir(exist_ok=True)
        cmd = [REDIS_SERVER]
        if sentinel:
            conf = home / "sentinel.conf"
            cmd.append(str(conf))
            args = ("--sentinel", *args)
        cmd += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(home), "--save", "",
                "--appendonly", "no", "--logfile", str(home / "redis.log"), *args]  # fmt: skip
        if not sentinel:  # replicas sync at once, not after the default 5 s
            cmd += ["--repl-diskless-sync-delay", "0"]
        self.procs[port] = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not _pong(port):
            if self.procs[port].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not start; see {home}")
            time.sleep(0.02)

    def kill(self, port: int) -> None:
        """SIGKILL: no shutdown, nothing flushed."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()

    def pause(self, port: int) -> None:
        os.kill(self.procs[port].pid, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        os.kill(self.procs[port].pid, signal.SIGCONT)

    def alive(self, port: int) -> bool:
        return self.procs[port].poll() is None

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()


def _linked(port: int) -> bool:
    """A master, or a replica whose link to its master is up."""
    info = _client(port).info("replication")
    return info["role"] == "master" or info.get("master_link_status") == "up"


def _cut(master: int, replicas: list[int], procs: Processes) -> None:
    for port in replicas:
        procs.pause(port)
    _client(master).client_kill_filter(_type="replica")


class ClusterSet:
    """A Redis Cluster of `masters` masters with `replicas` replicas each on loopback."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 1) -> None:
        self.procs = Processes(workdir)
        self.ports = [cluster_port() for _ in range(masters * (1 + replicas))]
        self.masters, self.replicas = masters, replicas

    @property
    def url(self) -> str:
        """SARNN_REDIS_URL of the cluster (two seed nodes; the rest are discovered)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def start(self, node_timeout_ms: int = 1000) -> "ClusterSet":
        """Start the nodes, create the cluster, wait until it is ok (stopping every node if
        any of that fails)."""
        try:
            self._start(node_timeout_ms)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, node_timeout_ms: int) -> None:
        for port in self.ports:
            self.procs.start(
                port,
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                # a replica that lost its link during the cut is still promoted
                "--cluster-replica-validity-factor", "0",
                "--cluster-require-full-coverage", "no",
                "--maxmemory-policy", "noeviction",
            )  # fmt: skip
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_ok()

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says cluster_state:ok, every slot has a live master (a dead
        one's were taken over) and every live replica's link to its master is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                live = [p for p in self.ports if self.procs.alive(p)]
                ranges = self.slot_ranges()
                if (
                    all(_client(p).cluster("info")["cluster_state"] == "ok" for p in live)
                    and sum(hi - lo + 1 for _, lo, hi in ranges) == 16384
                    and all(port in live for port, _, _ in ranges)
                    and all(_linked(p) for p in live)
                ):
                    return
            except (redis.RedisError, KeyError):
                pass
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become ok")

    def topology(self) -> dict[int, dict]:
        """Live nodes by port: flags, master port of a replica ("master"), slot ranges."""
        live = next(p for p in self.ports if self.procs.alive(p))
        nodes = _client(live).cluster("nodes")
        ids = {info["node_id"]: int(addr.rsplit(":", 1)[1]) for addr, info in nodes.items()}
        return {
            int(addr.rsplit(":", 1)[1]): {**info, "master": ids.get(info["master_id"])}
            for addr, info in nodes.items()
        }

    def slot_ranges(self) -> list[tuple[int, int, int]]:
        """(master port, first slot, last slot) of every served range."""
        return [
            (port, int(lo), int(hi))
            for port, info in self.topology().items()
            if "master" in info["flags"] and "fail" not in info["flags"]
            for lo, hi in info["slots"]
        ]

    @staticmethod
    def keys_of(port: int, pattern: str) -> list[str]:
        """The keys of one node that match `pattern`."""
        return list(_client(port).scan_iter(match=pattern, count=1000))

    def master_of(self, slot: int) -> int:
        return next(p for p, lo, hi in self.slot_ranges() if lo <= slot <= hi)

    def replicas_of(self, master: int) -> list[int]:
        return [p for p, info in self.topology().items() if info["master"] == master]

    def cut_replication(self, master: int) -> list[int]:
        replicas = self.replicas_of(master)
        _cut(master, replicas, self.procs)
        return replicas

    def stop(self) -> None:
        self.procs.stop()


SENTINEL_CONF = """\
sentinel monitor {name} 127.0.0.1 {port} 2
sentinel down-after-milliseconds {name} 1000
sentinel failover-timeout {name} 5000
sentinel parallel-syncs {name} 1
"""


class SentinelSet:
    """A master, `replicas` replicas and `sentinels` Sentinels monitoring it as `name`."""

    def __init__(self, workdir: Path, replicas: int = 2, sentinels: int = 3) -> None:
        self.procs = Processes(workdir)
        self.name = "sarnn"
        self.data_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]

    @property
    def sentinels(self) -> str:
        """SARNN_REDIS_SENTINELS."""
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def start(self) -> "SentinelSet":
        """Start the master, its replicas and the Sentinels; wait until they agree (stopping
        every process if any of that fails)."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        first, *others = self.data_ports
        self.procs.start(first, "--maxmemory-policy", "noeviction")
        for port in others:
            self.procs.start(port, "--replicaof", "127.0.0.1", str(first),
                             "--maxmemory-policy", "noeviction")  # fmt: skip
        for port in self.sentinel_ports:
            home = self.procs.workdir / str(port)
            home.mkdir(exist_ok=True)
            (home / "sentinel.conf").write_text(SENTINEL_CONF.format(name=self.name, port=first))
            self.procs.start(port, sentinel=True)
        self.wait_stable(first)

    def master(self) -> int:
        """The master's port as the first live Sentinel names it."""
        for port in self.sentinel_ports:
            try:
                _, master = _client(port).sentinel_get_master_addr_by_name(self.name)
                return int(master)
            except (redis.RedisError, TypeError):
                continue
        raise RuntimeError("no Sentinel answers")

    def wait_stable(self, master: int, timeout: float = 30) -> None:
        """Until every Sentinel names `master` and it has its live replicas connected."""
        deadline = time.monotonic() + timeout
        want = sum(self.procs.alive(p) for p in self.data_ports) - 1
        while time.monotonic() < deadline:
            try:
                named = {
                    int(_client(p).sentinel_get_master_addr_by_name(self.name)[1])
                    for p in self.sentinel_ports
                }
                info = _client(master).info("replication")
                if (
                    named == {master}
                    and info["role"] == "master"
                    and info["connected_slaves"] >= want
                    and all(_linked(p) for p in self.replicas_of(master))
                ):
                    return
            except (redis.RedisError, TypeError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Sentinels did not settle on master {master}")

    def wait_failover(self, old: int, timeout: float = 30) -> int:
        """Until the Sentinels agree on a live master other than `old`; its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                new = self.master()
                if new != old and self.procs.alive(new):
                    self.wait_stable(new, max(1.0, deadline - time.monotonic()))
                    return new
            except RuntimeError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"no Sentinel failover from {old} within {timeout} s")

    def replicas_of(self, master: int) -> list[int]:
        return [p for p in self.data_ports if p != master and self.procs.alive(p)]

    def cut_replication(self, master: int) -> list[int]:
        replicas = self.replicas_of(master)
        _cut(master, replicas, self.procs)
        return replicas

    def stop(self) -> None:
        self.procs.stop()

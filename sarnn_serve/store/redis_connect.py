"""Reaching Redis from the settings: one endpoint, a Redis Cluster, or the master that Redis
Sentinels name; and the session store built on it.

    single    SARNN_REDIS_URL=redis://[user:password@]host:port/db (rediss:// for TLS)
    cluster   SARNN_REDIS_URL=redis+cluster://[user:password@]host:port,host:port,...
              (rediss+cluster:// for TLS; any reachable nodes: the rest are discovered), or
              SARNN_REDIS_MODE=cluster with a plain URL naming one node
    sentinel  SARNN_REDIS_SENTINELS=host:port,... and SARNN_REDIS_MASTER_NAME; the URL's user,
              password, database and TLS apply to the master (its host is not used)

Every client retries a failed or timed-out call with backoff (safe: every store script may run
twice, see `store.redis`). After a failover the cluster client follows the slot map to the
promoted replica and the Sentinel client asks the Sentinels for the new master, so calls
continue on it without a restart; the calls in flight fail over as 503 store_unavailable,
which clients retry.
"""

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff

from sarnn_serve.settings import Settings
from sarnn_serve.store import SessionStore

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
POOL_WAIT_S = 5.0  # a call waits this long for a free pooled connection


def retry_policy() -> Retry:
    """Backoff of 50 ms doubling to 0.5 s, 3 retries: enough for a stale pooled connection or
    a short stall; a failover takes longer and reaches the client as 503 (it retries)."""
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3)


@dataclass(frozen=True)
class Target:
    """Where Redis is: the mode, its nodes (host, port) and the connection options."""

    mode: str  # "single" | "cluster" | "sentinel"
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False
    url: str = ""  # single: the URL as given


def parse_hosts(text: str, default_port: int = 6379) -> tuple[tuple[str, int], ...]:
    """host:port,host:port,... (IPv6 in brackets) -> ((host, port), ...); ValueError if bad."""
    hosts = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, port = item, default_port
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest:
                port = _port(rest.removeprefix(":"), item)
        elif item.count(":") == 1:
            host, text_port = item.split(":")
            port = _port(text_port, item)
        if not host:
            raise ValueError(f"{item!r}: no host")
        hosts.append((host, port))
    if not hosts:
        raise ValueError("no host:port given")
    return tuple(hosts)


def _port(text: str, item: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{item!r}: the port is not a number in 1..65535")
    return int(text)


def target(settings: Settings) -> Target:
    """The Redis target the settings describe (ValueError naming the problem)."""
    url = settings.redis_url
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"SARNN_REDIS_URL {url!r} has no scheme (redis://, redis+cluster://)")
    mode = settings.redis_mode
    if mode == "auto":
        mode = (
            "cluster"
            if scheme in CLUSTER_SCHEMES
            else "sentinel"
            if settings.redis_sentinels
            else "single"
        )
    if scheme in CLUSTER_SCHEMES and mode != "cluster":
        raise ValueError(f"a {scheme}:// URL needs SARNN_REDIS_MODE=cluster (or auto)")
    if mode == "single":
        return Target("single", (), url=url)
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    creds, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = creds.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
        if not colon:  # redis://secret@host is a password alone, as redis-py reads it
            username, password = None, unquote(user)
    db = int(path) if path.isdigit() else 0
    tls = CLUSTER_SCHEMES.get(scheme, scheme == "rediss")
    if "ssl" in parse_qs(query):
        tls = parse_qs(query)["ssl"][0].lower() in ("1", "true", "yes")
    if mode == "cluster":
        if db:
            raise ValueError("Redis Cluster has database 0 only; drop the /db of SARNN_REDIS_URL")
        return Target("cluster", parse_hosts(hosts), username, password, 0, tls)
    if not settings.redis_sentinels:
        raise ValueError("SARNN_REDIS_MODE=sentinel needs SARNN_REDIS_SENTINELS=host:port,...")
    sentinels = parse_hosts(settings.redis_sentinels, 26379)
    return Target("sentinel", sentinels, username, password, db, tls)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Connections to the master the Sentinels name; a call past max_connections waits."""


def connect(settings: Settings, socket_timeout: float = 5.0) -> Any:
    """A redis.asyncio client for the target (Redis, or RedisCluster in cluster mode)."""
    where = target(settings)
    common: dict[str, Any] = {
        "decode_responses": False,
        "socket_connect_timeout": min(2.0, socket_timeout),
        "socket_timeout": socket_timeout,
        "retry": retry_policy(),
    }
    if where.mode == "single":
        pool = BlockingConnectionPool.from_url(
            where.url, max_connections=settings.redis_max_connections, timeout=POOL_WAIT_S, **common
        )
        return aioredis.Redis.from_pool(pool)
    auth = {"username": where.username, "password": where.password}
    if where.mode == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in where.nodes],
            require_full_coverage=False,  # the other slots keep serving while one fails over
            max_connections=settings.redis_max_connections,
            ssl=where.tls,
            **auth,
            **common,
        )
    sentinel = Sentinel(
        where.nodes,
        sentinel_kwargs={
            "password": settings.redis_sentinel_password or None,
            "socket_timeout": min(1.0, socket_timeout),
            "socket_connect_timeout": min(1.0, socket_timeout),
        },
    )
    return sentinel.master_for(
        settings.redis_master_name,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=settings.redis_max_connections,
        timeout=POOL_WAIT_S,
        db=where.db,
        ssl=where.tls,
        **auth,
        **common,
    )


def make_redis_store(settings: Settings) -> SessionStore:
    """The Redis session store of the settings: one key space (single, sentinel), or on a
    cluster the sessions spread over `redis_shards` hash tags (`store.redis_sharded`)."""
    from sarnn_serve.store.redis import RedisStore
    from sarnn_serve.store.redis_sharded import ShardedRedisStore

    client = connect(settings)
    wait = (settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
    if isinstance(client, RedisCluster):
        return ShardedRedisStore(
            client, settings.redis_prefix, settings.max_sessions, settings.redis_shards, wait
        )
    return RedisStore(client, settings.redis_prefix, settings.max_sessions, wait=wait)

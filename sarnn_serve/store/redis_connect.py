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

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff

from sarnn_serve.settings import Settings
from sarnn_serve.store import SessionStore
from sarnn_serve.store.redis_target import target

POOL_WAIT_S = 5.0  # a call waits this long for a free pooled connection


def retry_policy() -> Retry:
    """Backoff of 50 ms doubling to 0.5 s, 3 retries: enough for a stale pooled connection or
    a short stall; a failover takes longer and reaches the client as 503 (it retries)."""
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3)


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

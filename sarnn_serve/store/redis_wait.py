"""A write that waits for replicas: the script and `WAIT n timeout` on one connection, in one
round trip (WAIT counts the replicas that hold every write of its own connection).

Redis replicates asynchronously, so a write a master acknowledged can vanish if it dies before
a replica has it. With SARNN_REDIS_WAIT_REPLICAS = n > 0 every create and compare-and-set is
answered only after n replicas confirmed it or the timeout passed. A timeout does not fail the
write (the master has it; failing would leave the client unsure whether it was applied): it is
counted, logged, and the client is answered. A failover that still loses a chunk is caught
by seq (409 session_rolled_back), so WAIT narrows the window, the seq check closes it.
"""

import logging
import time
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

log = logging.getLogger("sarnn.store")
LOG_EVERY_S = 60.0


class ReplicaWait:
    """Runs writing scripts followed by WAIT; counts writes the replicas did not confirm."""

    def __init__(self, replicas: int, timeout_ms: int) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.unconfirmed = 0  # writes answered before `replicas` replicas confirmed them
        self._logged_at = -LOG_EVERY_S

    async def run(
        self, client: Any, script: Any, keys: list[str], args: list, session_id: str
    ) -> Any:
        """The script's result, once WAIT returned (RedisError as the client raises it)."""
        for attempt in (0, 1):
            try:
                result, confirmed = await self._pipeline(client, script, keys, args)
                break
            except NoScriptError:  # a restarted or promoted node: load the script, once
                if attempt:
                    raise
                await client.script_load(script.script)
        if confirmed < self.replicas:
            self._unconfirmed(session_id, confirmed)
        return result

    async def _pipeline(
        self, client: Any, script: Any, keys: list[str], args: list
    ) -> tuple[Any, int]:
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        if isinstance(client, RedisCluster):
            await client.initialize()
            # the node that runs the script (its keys share one slot), on the same connection
            node = client.get_node_from_key(keys[0])
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms, target_nodes=node)
        else:
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
        result, confirmed = await pipe.execute()
        return result, int(confirmed)

    def _unconfirmed(self, session_id: str, confirmed: int) -> None:
        self.unconfirmed += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning(
                "writes answered before replicas confirmed them",
                extra={
                    "session": session_id,
                    "confirmed": confirmed,
                    "wanted": self.replicas,
                    "timeout_ms": self.timeout_ms,
                    "unconfirmed_total": self.unconfirmed,
                },
            )

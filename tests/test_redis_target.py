"""Where Redis is, read from the settings (store.redis_target), and the cluster's shard tags
(store.redis_sharded): no Redis needed. A bad combination is a settings error (one line at
start-up), not a traceback when the store connects."""

import pydantic
import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from sarnn_serve.settings import Settings
from sarnn_serve.store.redis_sharded import shard_index, shard_tags
from sarnn_serve.store.redis_target import parse_hosts, target


def _target(**kw):
    return target(Settings(store="redis", **kw))


def test_a_plain_url_is_one_endpoint() -> None:
    t = _target(redis_url="redis://:secret@10.0.0.5:6380/2")
    assert (t.mode, t.url) == ("single", "redis://:secret@10.0.0.5:6380/2")


def test_a_cluster_url_names_its_seed_nodes_and_credentials() -> None:
    t = _target(redis_url="redis+cluster://app:s%40cret@a:7000,b:7001,[::1]:7002")
    assert t.mode == "cluster" and not t.tls
    assert t.nodes == (("a", 7000), ("b", 7001), ("::1", 7002))
    assert (t.username, t.password) == ("app", "s@cret")
    assert _target(redis_url="rediss+cluster://a:7000").tls
    # a plain URL naming one node, with the mode set
    t = _target(redis_url="redis://secret@h:7000", redis_mode="cluster")
    assert (t.mode, t.nodes, t.username, t.password) == ("cluster", (("h", 7000),), None, "secret")


def test_sentinels_with_the_urls_credentials_and_database() -> None:
    t = _target(
        redis_url="rediss://:pw@ignored:1/3", redis_sentinels="s1:26380, s2", redis_mode="auto"
    )
    assert t.mode == "sentinel"
    assert t.nodes == (("s1", 26380), ("s2", 26379))
    assert (t.password, t.db, t.tls) == ("pw", 3, True)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"redis_mode": "sentinel"}, "needs SARNN_REDIS_SENTINELS"),
        ({"redis_url": "redis+cluster://a:7000/1"}, "database 0 only"),
        ({"redis_url": "redis+cluster://a:70000"}, "not a number in 1..65535"),
        ({"redis_url": "redis+cluster://a:7000", "redis_mode": "single"}, "needs SARNN_REDIS_MODE"),
        ({"redis_url": "127.0.0.1:6379"}, "has no scheme"),
        ({"redis_sentinels": ":26379"}, "no host"),
    ],
)
def test_a_bad_combination_is_a_settings_error(settings: dict, problem: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=problem):
        Settings(store="redis", **settings)
    Settings(store="memory", **settings)  # not checked while Redis is not used


def test_parse_hosts() -> None:
    assert parse_hosts("a,b:1", 26379) == (("a", 26379), ("b", 1))
    with pytest.raises(ValueError, match="no host:port"):
        parse_hosts(" , ")


def test_shard_tags_cover_equal_slot_bands() -> None:
    tags = shard_tags("{sarnn}", 60)
    assert tags == shard_tags("sarnn", 60)  # braces in the prefix are dropped
    assert len(set(tags)) == 60 and all(t.startswith("{sarnn.") for t in tags)
    band = REDIS_CLUSTER_HASH_SLOTS / 60
    assert [int(key_slot(t.encode()) // band) for t in tags] == list(range(60))


def test_ids_spread_over_every_shard() -> None:
    counts = [0] * 60
    for i in range(6000):
        counts[shard_index(f"id-{i}", 60)] += 1
    assert min(counts) > 50 and max(counts) < 150

"""Where Redis is, read from the settings (no Redis client needed: the settings check it at
start-up, so a bad value is one line, not a traceback). `store.redis_connect` connects to it."""

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote

if TYPE_CHECKING:
    from sarnn_serve.settings import Settings

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS


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


def target(settings: "Settings") -> Target:
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

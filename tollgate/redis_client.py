"""The one way services open a redis-py client: a single Redis or a Redis Cluster.

`TOLLGATE_REDIS_CLUSTER=1` says the URL names seed nodes of a Redis Cluster: the client is then
redis-py's RedisCluster (slot routing, MOVED/ASK, topology refresh after a failover). Every key a
script touches carries a hash tag, so the scripts run unchanged on either. The enforcer's hot path
does not use redis-py (enforcer.rediswire, enforcer.clusterwire); everything else opens its
clients here.

A cluster URL may list several seeds, `redis://h1:7000,h2:7000,h3:7000/0`: a client started while
one of them is down (a failed-over master) still finds the cluster through another.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

from tollgate.config import _env


def cluster_mode() -> bool:
    return _env("REDIS_CLUSTER", "0") == "1"


def seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """(the URL with only its first host, every (host, port) it lists)."""
    parts = urlsplit(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    found = []
    for h in hosts.split(","):
        host, _, port = h.rpartition(":") if h.rpartition(":")[2].isdigit() else (h, "", "")
        found.append((host.strip("[]") or "127.0.0.1", int(port or 6379)))
    first = hosts.split(",")[0]
    return urlunsplit(parts._replace(netloc=f"{auth + '@' if auth else ''}{first}")), found


def connect(url: str, *, cluster: bool | None = None, **kw: Any) -> Redis | RedisCluster:
    """A client on `url`; `kw` goes to redis-py (socket timeouts, retry, ...)."""
    if cluster if cluster is not None else cluster_mode():
        first, nodes = seeds(url)
        return RedisCluster.from_url(first, startup_nodes=[ClusterNode(h, p) for h, p in nodes[1:]], **kw)
    return Redis.from_url(url, **kw)

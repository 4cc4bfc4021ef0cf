"""The one way services open a redis-py client: a single Redis or a Redis Cluster.

`TOLLGATE_REDIS_CLUSTER=1` says the URL is a seed node of a Redis Cluster: the client is then
redis-py's RedisCluster (slot routing, MOVED/ASK, topology refresh after a failover). Every key a
script touches carries a hash tag, so the scripts run unchanged on either. The enforcer's hot path
does not use redis-py (enforcer.rediswire); everything else opens its clients here.
"""
from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster

from tollgate.config import _env


def cluster_mode() -> bool:
    return _env("REDIS_CLUSTER", "0") == "1"


def connect(url: str, *, cluster: bool | None = None, **kw: Any) -> Redis | RedisCluster:
    """A client on `url`; `kw` goes to redis-py (socket timeouts, retry, ...)."""
    if cluster if cluster is not None else cluster_mode():
        return RedisCluster.from_url(url, **kw)
    return Redis.from_url(url, **kw)

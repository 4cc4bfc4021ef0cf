"""Fail open: every Redis call of a request runs under a deadline, behind a circuit breaker.

A deadline (Redis silent, see enforcer.rediswire), a refused or lost connection, or a Redis that
says it cannot serve (LOADING, BUSY, ...) counts as a failure; a call that waited its cap while
Redis was answering (SLOW) does not: Redis is alive, and our own overload must not open it.
After `failures` in a row the breaker opens: for `cooldown` seconds requests fail open at once
instead of each paying the deadline. Then one request at a time is let through as a probe
(half-open); its success closes the breaker. Any reply from Redis, even one that came
after its deadline, counts as a success: a Redis that answers late is slow, not down, and a burst
of missed deadlines while this process was busy (CPU, GC) must not cut it off for a cool-down.
"""
from __future__ import annotations

import time
from typing import Any

from enforcer import metrics
from enforcer.rediswire import SLOW, Failure, RedisWire, ReplyError

BREAKER_OPEN = Failure("breaker_open")
UNAVAILABLE = Failure("unavailable")  # Redis replied that it cannot serve now
# Error replies that mean "this Redis cannot serve now", not "this request is wrong".
_UNAVAILABLE = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "NOREPLICAS", "OOM")


class Breaker:
    def __init__(self, failures: int = 5, cooldown: float = 1.0, clock=time.monotonic):
        self.threshold = failures
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None  # None: closed
        self.probe_at: float | None = None  # a half-open probe is in flight since then

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        now = self.clock()
        if now - self.opened_at < self.cooldown:
            return False
        # Half-open: one probe at a time; a probe that never reported is replaced after a cool-down.
        if self.probe_at is not None and now - self.probe_at < self.cooldown:
            return False
        self.probe_at = now
        return True

    def success(self) -> None:
        if self.opened_at is not None:
            metrics.BREAKER_OPEN.set(0)
        self.failures, self.opened_at, self.probe_at = 0, None, None

    def failure(self) -> None:
        self.failures += 1
        if self.opened_at is not None:  # a failed probe: stay open for another cool-down
            self.opened_at, self.probe_at = self.clock(), None
        elif self.failures >= self.threshold:
            self.opened_at = self.clock()
            metrics.BREAKER_OPEN.set(1)
            metrics.BREAKER_TRIPS.inc()


class Guard:
    """Redis calls of the request path: deadline, breaker, and the NOSCRIPT reload."""

    def __init__(self, wire: RedisWire, breaker: Breaker, deadline_s: float):
        self.wire = wire
        self.breaker = breaker
        wire.on_reply = self._on_reply
        self.deadline = deadline_s

    async def call(self, args: tuple) -> Any:
        """The reply, a ReplyError, or a Failure: BREAKER_OPEN without touching Redis, UNAVAILABLE
        for an error reply saying Redis cannot serve (LOADING, BUSY, ...), no reply at all."""
        if not self.breaker.allow():
            return BREAKER_OPEN
        return self._no_reply(await self.wire.call(args, self.deadline))

    async def evalsha(self, sha: str, source: str, keys: tuple, argv: tuple) -> Any:
        args = ("EVALSHA", sha, len(keys), *keys, *argv)
        reply = await self.call(args)
        if type(reply) is ReplyError and str(reply).startswith("NOSCRIPT"):
            # Redis lost its script cache (restart, SCRIPT FLUSH): load and retry once, both in
            # one write. The script's own deadline (in argv) still bounds when it may act.
            metrics.NOSCRIPT.inc()
            self.wire.call(("SCRIPT", "LOAD", source), self.wire.hang_timeout)
            reply = self._no_reply(await self.wire.call(args, self.deadline))
        return reply

    def _on_reply(self, reply: Any) -> None:
        """Every reply, as it arrives (a late one too): the one place replies reach the breaker."""
        if type(reply) is ReplyError and str(reply).startswith(_UNAVAILABLE):
            self.breaker.failure()
        else:
            self.breaker.success()

    def _no_reply(self, reply: Any) -> Any:
        """A call that got no reply counts as a failure (one that did was counted on arrival);
        an unavailable error reply becomes UNAVAILABLE, so callers fail open with that cause."""
        if type(reply) is Failure:
            if reply is not SLOW:
                self.breaker.failure()
        elif type(reply) is ReplyError and str(reply).startswith(_UNAVAILABLE):
            return UNAVAILABLE
        return reply

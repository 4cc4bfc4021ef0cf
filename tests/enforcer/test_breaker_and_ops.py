"""The circuit breaker's states, and the operational endpoints (/healthz, /readyz, /metrics, workers)."""
from __future__ import annotations

import asyncio

from enforcer.failopen import Breaker
from tests.tenants import check_body, provision
from tests.servers import run_enforcer


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_consecutive_failures_and_probes_to_close():
    clock = Clock()
    b = Breaker(failures=3, cooldown=1.0, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    b.success()  # a success in between starts the count again
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.is_open and not b.allow()
    clock.t += 0.99
    assert not b.allow()  # still cooling down
    clock.t += 0.02
    assert b.allow()  # the one probe
    assert not b.allow()  # no second probe while the first is out
    b.failure()  # the probe failed: another full cool-down
    assert b.is_open and not b.allow()
    clock.t += 1.01
    assert b.allow()
    b.success()
    assert not b.is_open and all(b.allow() for _ in range(10))


def test_a_probe_that_never_reports_is_replaced():
    clock = Clock()
    b = Breaker(failures=1, cooldown=1.0, clock=clock)
    b.failure()
    clock.t += 1.5
    assert b.allow()
    clock.t += 0.5
    assert not b.allow()
    clock.t += 0.6
    assert b.allow()


async def test_health_ready_and_metrics(enforcer, http, redis):
    assert (await http.get(f"{enforcer.url}/healthz")).json() == {"status": "ok"}
    ready = await http.get(f"{enforcer.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    t = await provision(redis, wallet=0)
    await http.post(f"{enforcer.url}/v1/check", json=check_body(t))
    text = (await http.get(f"{enforcer.url}/metrics")).text
    for name in ('tollgate_decisions_total{decision="DENY",reason="insufficient_balance"}',
                 "tollgate_check_latency_seconds_bucket", "tollgate_fail_open_total", "tollgate_script_errors_total",
                 "tollgate_spool_depth", "tollgate_breaker_open"):
        assert name in text, name


async def test_two_workers_share_the_work_and_the_metrics(redis_server, redis, http):
    t = await provision(redis, wallet=30 * 10_000)
    with run_enforcer({"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_CHECK_DEADLINE_MS": "1000"}, workers=2) as enf:
        replies = await asyncio.gather(*(http.post(f"{enf.url}/v1/check", json=check_body(t)) for _ in range(50)))
        assert sorted(r.status_code for r in replies) == [200] * 30 + [429] * 20
        text = (await http.get(f"{enf.url}/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith('tollgate_decisions_total{decision="ALLOW",reason="ok"}'))
        assert float(line.split()[-1]) == 30  # summed over both workers, whichever one answers


def test_the_unknown_key_cache_is_bounded(monkeypatch):
    """A flood of random bad keys: expired entries are dropped first, then all, never unbounded."""
    from enforcer import keycache

    monkeypatch.setattr(keycache, "MAX_UNKNOWN", 100)
    clock = Clock()
    cache = keycache.KeyCache(guard=None, ttl=30, negative_ttl=5, clock=clock)
    for i in range(100):
        cache._remember_unknown(f"old{i}")
    clock.t += 10  # those have expired
    for i in range(50):
        cache._remember_unknown(f"new{i}")
    assert set(cache._unknown) == {f"new{i}" for i in range(50)}
    for i in range(50, 150):
        cache._remember_unknown(f"new{i}")
    assert len(cache._unknown) <= 100 and "new149" in cache._unknown

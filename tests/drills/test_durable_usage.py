"""Drills of the promise of a 202 from /v1/usage: the event survives the loss of any one process or
server, the bus Redis restarting empty included. All real processes: redis-server (no
persistence, SIGKILLed and started empty on the same port), the enforcer and the rater as
subprocesses, PostgreSQL. Success = every accepted event in the ledger exactly once."""
from __future__ import annotations

import asyncio
import glob
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

import asyncpg
import httpx
import orjson
import pytest

from control.accounts import api_keys, customers, plans
from tests.rater.conftest import PLAN, expected, pg_totals
from tests.rater.processes import RaterProcess
from tests.servers import ROOT, EnforcerProcess
from tollgate.keys import CustomerKeys
from tollgate.local_services import start_redis
from tollgate.periods import period_of
from tollgate.redis_client import connect

pytestmark = pytest.mark.slow


class Drill:
    """A private Redis, one postpaid customer with a key, the env the services share, and every
    process started (stopped at the end)."""

    def __init__(self, pg, pg_dsn: str, tmp_path):
        self.pg = pg
        self.redis = start_redis()
        self.env = {"TOLLGATE_REDIS_URL": self.redis.url, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": "redis",
                    "TOLLGATE_CHECK_DEADLINE_MS": "1000", "TOLLGATE_SPOOL_PATH": str(tmp_path / "spool.jsonl")}
        self.plan_text = PLAN.format(pid=f"plan_{uuid.uuid4().hex[:10]}", mode="postpaid")
        self.started: list = []

    async def provision(self) -> None:
        client = connect(self.redis.url)
        try:
            plan = await plans.apply_plan(self.pg, client, self.plan_text)
            self.customer = (await customers.create_customer(self.pg, client, name="Drill", plan_id=plan["id"]))["id"]
            self.api_key = (await api_keys.create_api_key(self.pg, client, self.customer))["api_key"]
        finally:
            await client.aclose()

    def enforcer(self, workers: int = 1) -> EnforcerProcess:
        """An enforcer on the drill's spool path (a successor takes over a dead one's spool)."""
        enf = EnforcerProcess(self.env, workers=workers)
        self.started.append(enf)
        return enf.start()

    def rater(self) -> RaterProcess:
        rater = RaterProcess(self.env, ["--sweep-interval", "0"])
        self.started.append(rater)
        return rater.start().wait_started()

    def lose_redis(self) -> None:
        """SIGKILL Redis, start it empty on the same port, `tollgate redis rebuild` (until the
        projection rebuilds itself)."""
        self.redis.stop()
        self.redis.start()
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", "from tollgate.cli import main; raise SystemExit(main())",
                              "redis", "rebuild"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr

    async def send(self, url: str, n: int) -> list[dict]:
        """n usage reports, each answered 202; the events as the rater prices them."""
        sent = []
        # A connection per report, so that every worker of the enforcer gets some.
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            for i in range(n):
                m = [{"metric": "input_tokens", "value": 1000 + 7 * i}, {"metric": "output_tokens", "value": 100 + i}]
                eid = f"evt_{uuid.uuid4().hex[:16]}"
                r = await http.post(f"{url}/v1/usage", json={"event_id": eid, "api_key": self.api_key,
                                                               "properties": {"model": "m1"}, "measurements": m})
                assert r.status_code == 202, r.text
                sent.append({"id": eid, "customer_id": self.customer, "properties": {"model": "m1"}, "measurements": m})
        return sent

    async def until_rated(self, n: int, rater: RaterProcess, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (got := await self.pg.fetchval("SELECT count(*) FROM processed_events WHERE customer_id = $1",
                                             self.customer)) < n:
            assert rater.alive(), rater.logs()[-3000:]
            assert time.monotonic() < deadline, f"{got} of {n} events rated:\n{rater.logs()[-3000:]}"
            await asyncio.sleep(0.1)

    async def assert_exactly_once(self, events: list[dict]) -> None:
        """Each accepted event rated once: no loss, no double charge, in PostgreSQL and in Redis."""
        await asyncio.sleep(1.0)  # duplicates still arriving would show now
        exp = expected(self.plan_text, events)[self.customer]
        assert await pg_totals(self.pg, self.customer) == {
            "spend": exp["spend"], "wallet": 0, "invoice": exp["spend"], "events": len(events), "ledger": exp["spend"]}
        ids = {r["event_id"] for r in await self.pg.fetch(
            "SELECT event_id FROM processed_events WHERE customer_id = $1 AND kind = 'usage'", self.customer)}
        assert ids == {e["id"] for e in events}
        client = connect(self.redis.url)
        try:
            spend = await client.get(CustomerKeys(self.customer).spend(period_of(datetime.now(timezone.utc))))
        finally:
            await client.aclose()
        assert int(spend or 0) == exp["spend"]  # rebuilt from PostgreSQL, then each event settled once

    def spooled(self) -> list[dict]:
        """The events in the spool's segment files, every slot."""
        out = []
        for p in sorted(glob.glob(self.env["TOLLGATE_SPOOL_PATH"] + "*.wal.*")):
            with open(p, "rb") as f:
                out += [orjson.loads(line) for line in f.read().splitlines()]
        return out

    async def until_spool_empty(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while left := self.spooled():
            assert time.monotonic() < deadline, f"{len(left)} consumed events still in the spool"
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        for p in reversed(self.started):
            if getattr(p, "proc", None) is not None and p.proc.poll() is None:
                p.proc.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            p.cleanup() if isinstance(p, EnforcerProcess) else p.stop()
        self.redis.stop()


@pytest.fixture
async def drill(pg_dsn, tmp_path):
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    d = Drill(pool, pg_dsn, tmp_path)
    try:
        await d.provision()
        yield d
    finally:
        d.stop()
        await pool.close()


@pytest.mark.parametrize("workers", [1, 2])
async def test_redis_restarted_empty_with_the_rater_behind_loses_nothing(drill, workers):
    """The rater is not running; 60 events are accepted, on the stream only; Redis is SIGKILLed and
    comes back empty. The enforcer sees the stream's new epoch and publishes its spool again
    (with two workers, each from its own spool slot)."""
    enf = drill.enforcer(workers)
    events = await drill.send(enf.url, 60)
    slots = {p.rsplit(".wal.", 1)[0] for p in glob.glob(drill.env["TOLLGATE_SPOOL_PATH"] + "*.wal.*")}
    assert len(slots) == workers
    drill.lose_redis()
    rater = drill.rater()
    await drill.until_rated(len(events), rater)
    await drill.assert_exactly_once(events)


async def test_a_running_rater_survives_redis_restarting_empty(drill):
    """The rater is running, then frozen (SIGSTOP) with events waiting; Redis restarts empty under
    it. Thawed, the same process recreates its consumer group and rates everything once."""
    enf = drill.enforcer()
    rater = drill.rater()
    first = await drill.send(enf.url, 10)
    await drill.until_rated(10, rater)
    rater.proc.send_signal(signal.SIGSTOP)
    behind = await drill.send(enf.url, 50)
    lost = asyncio.create_task(asyncio.to_thread(drill.lose_redis))  # its rebuild may wait for the rater's locks
    await asyncio.sleep(1.5)
    pid = rater.proc.pid
    rater.proc.send_signal(signal.SIGCONT)
    await lost
    await drill.until_rated(60, rater)
    assert rater.alive() and rater.proc.pid == pid  # never restarted
    assert "creating it again from id 0" in rater.logs()
    await drill.assert_exactly_once(first + behind)
    await drill.until_spool_empty()  # consumed in the new incarnation: the spool lets go


async def test_the_spool_keeps_only_what_is_not_consumed(drill):
    """Disk use is bounded by what the rater has not consumed: with the rater down the spool holds
    every accepted event; once it has rated them, the spool is emptied."""
    enf = drill.enforcer()
    events = await drill.send(enf.url, 30)
    await asyncio.sleep(2.0)  # several confirmation rounds: nothing consumed, nothing dropped
    assert {e["id"] for e in drill.spooled()} == {e["id"] for e in events}
    rater = drill.rater()
    await drill.until_rated(len(events), rater)
    await drill.until_spool_empty()


async def test_a_new_enforcer_publishes_what_a_killed_one_accepted(drill):
    """The enforcer is SIGKILLed right after its 202s and Redis then restarts empty: the events
    exist only in the dead enforcer's spool. The next enforcer on that spool publishes them."""
    enf = drill.enforcer()
    events = await drill.send(enf.url, 40)
    enf.proc.kill()
    enf.proc.wait()
    drill.lose_redis()
    drill.enforcer()  # same TOLLGATE_SPOOL_PATH
    rater = drill.rater()
    await drill.until_rated(len(events), rater)
    await drill.assert_exactly_once(events)


async def test_a_graceful_stop_leaves_little_to_publish_again(drill):
    """SIGTERM with the rater keeping up: the enforcer waits a moment for the rater to consume
    what its spool holds, so its successor publishes (almost) nothing again."""
    rater = drill.rater()
    enf = drill.enforcer()
    events = await drill.send(enf.url, 30)
    enf.stop()  # SIGTERM: graceful
    assert drill.spooled() == []
    await drill.until_rated(len(events), rater)
    await drill.assert_exactly_once(events)


async def test_redis_killed_mid_stream_with_the_rater_behind(drill):
    """The drill of issue 8: checks and usage flow without pause; the rater falls behind (SIGSTOP);
    Redis is SIGKILLed and comes back empty while they keep coming; the rater resumes. Every
    report is answered 202 and every check 200 (real or fail_open), before, during and after: no
    valid key is refused; every accepted report is rated exactly once."""
    enf = drill.enforcer()
    rater = drill.rater()
    accepted: list[dict] = []
    refused: dict = {}  # usage answers other than 202, and transport errors
    checks: dict[int, int] = {}  # /v1/check statuses
    stop = asyncio.Event()

    async def flow():
        async with httpx.AsyncClient(timeout=10) as http:
            i = 0
            while not stop.is_set():
                i += 1
                m = [{"metric": "input_tokens", "value": 500 + i}, {"metric": "output_tokens", "value": 50 + i % 7}]
                eid = f"evt_{uuid.uuid4().hex[:16]}"
                try:
                    c = await http.post(f"{enf.url}/v1/check", json={
                        "api_key": drill.api_key, "request_id": f"req_{eid}", "dimensions": {"model": "m1"},
                        "estimate": {"requests": 1, "input_tokens": 10}})
                    checks[c.status_code] = checks.get(c.status_code, 0) + 1
                    r = await http.post(f"{enf.url}/v1/usage", json={
                        "event_id": eid, "api_key": drill.api_key, "properties": {"model": "m1"}, "measurements": m})
                except httpx.HTTPError as e:  # the enforcer never went away: none expected
                    refused[type(e).__name__] = refused.get(type(e).__name__, 0) + 1
                    continue
                if r.status_code == 202:
                    accepted.append({"id": eid, "customer_id": drill.customer, "properties": {"model": "m1"},
                                     "measurements": m})
                else:
                    refused[r.status_code] = refused.get(r.status_code, 0) + 1
                await asyncio.sleep(0.005)

    sender = asyncio.create_task(flow())
    try:
        await asyncio.sleep(1.0)
        rater.proc.send_signal(signal.SIGSTOP)  # behind from here on
        await asyncio.sleep(1.5)
        before_kill = len(accepted)
        # Reports keep coming meanwhile. The rebuild waits for the lock groups, which the frozen
        # rater may hold mid-batch: it goes through once the rater is thawed.
        lost = asyncio.create_task(asyncio.to_thread(drill.lose_redis))
        await asyncio.sleep(1.5)
        rater.proc.send_signal(signal.SIGCONT)
        await lost
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await sender
    assert before_kill > 20 and len(accepted) > before_kill, (before_kill, len(accepted), refused)
    assert refused == {} and set(checks) == {200}, (refused, checks)  # 0 refused valid keys
    await drill.until_rated(len(accepted), rater)
    await drill.assert_exactly_once(accepted)

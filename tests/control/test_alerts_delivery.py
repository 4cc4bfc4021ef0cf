"""Delivery of alerts to a real HTTP receiver on loopback (tests.control.webhook_receiver), by
the control plane's worker (control.alerts.delivery.Deliverer) on the test PostgreSQL and Redis:
signed webhooks, the bus event, retries with backoff until a failing receiver recovers, giving up,
manual redelivery, and two workers delivering each alert once."""
from __future__ import annotations

import asyncio
import contextlib
import time

import orjson

from control.alerts import manage as svc
from control.alerts.delivery import ALERTS_STREAM, AlertBus, Deliverer, DeliverySettings, backoff
from tests.control.conftest import TOKEN
from tests.control.webhook_receiver import Receiver
from tests.tenants import uid
from tollgate.alerts import raise_alert

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST = DeliverySettings(poll_s=0.05, backoff_s=0.1, max_backoff_s=0.4, retry_for_s=60, timeout_s=2)


@contextlib.asynccontextmanager
async def worker(pg, settings, s: DeliverySettings = FAST, n: int = 1):
    stop = asyncio.Event()
    tasks = [asyncio.create_task(Deliverer(pg, AlertBus(settings), s).run(stop)) for _ in range(n)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def until(cond, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _raise(pg, customer_id: str, kind: str = "spend.threshold", threshold: str = "80") -> str:
    async with pg.acquire() as conn, conn.transaction():
        return await raise_alert(conn, customer_id, kind, threshold, "202612", {"percent": 80}, "evt_x")


async def test_a_signed_webhook_and_a_bus_event_once_per_threshold(pg, redis, settings, customer_id):
    with Receiver() as rx:
        ep = await svc.create_endpoint(pg, url=rx.url, customer_id=customer_id)
        rx.secret = ep["secret"]
        async with worker(pg, settings):
            t0 = time.time()
            alert_id = await _raise(pg, customer_id)
            assert alert_id and await _raise(pg, customer_id) is None  # fires once per threshold and period
            await until(lambda: _status(pg, ep["id"], "delivered"), what="the webhook")
            await asyncio.sleep(0.3)  # nothing more comes
        got = rx.received
    assert len(got) == 1 and got[0].signed
    assert got[0].at - t0 < 5
    h = got[0].headers
    assert h["tollgate-alert-id"] == alert_id and h["tollgate-delivery-id"].startswith("dlv_")
    assert h["content-type"] == "application/json"
    assert got[0].body == {"id": alert_id, "type": "spend.threshold", "customer_id": customer_id, "threshold": "80",
                           "period": "202612", "raised_at": got[0].body["raised_at"], "data": {"percent": 80},
                           "source_event_id": "evt_x"}
    [d] = await svc.list_deliveries(pg, alert_id=alert_id)
    assert (d["status"], d["attempts"], d["last_status_code"]) == ("delivered", 1, 200)
    entries = await redis.xrange(ALERTS_STREAM)
    events = [orjson.loads(f[b"event"]) for _, f in entries]
    assert [e for e in events if e["id"] == alert_id] == [{"kind": "alert", **got[0].body}]


async def _async(v):
    return v


async def test_a_failing_receiver_gets_it_after_it_recovers(pg, settings, customer_id):
    with Receiver(fail_first=3) as rx:
        ep = await svc.create_endpoint(pg, url=rx.url, customer_id=customer_id, kinds=["spend.threshold"])
        rx.secret = ep["secret"]
        async with worker(pg, settings):
            alert_id = await _raise(pg, customer_id)
            await _raise(pg, customer_id, "tier.promoted", "build")  # not a kind this endpoint takes
            await until(lambda: _status(pg, ep["id"], "delivered"), what="delivery after recovery")
    assert [r.status for r in rx.received] == [500, 500, 500, 200]
    assert all(r.signed for r in rx.received)
    assert len({r.headers["tollgate-delivery-id"] for r in rx.received}) == 1  # one id: receivers dedupe by it
    assert [r.headers["tollgate-attempt"] for r in rx.received] == ["1", "2", "3", "4"]
    gaps = [b.at - a.at for a, b in zip(rx.received, rx.received[1:])]
    assert gaps[0] >= 0.08 and gaps[1] >= 0.16  # exponential backoff (0.1, 0.2, 0.4 s, +-20 %)
    [d] = await svc.list_deliveries(pg, endpoint_id=ep["id"])
    assert d["alert_id"] == alert_id and (d["status"], d["attempts"]) == ("delivered", 4)
    log = (await svc.get_delivery(pg, d["id"]))["attempt_log"]
    assert [(a["attempt"], a["status_code"]) for a in log] == [(1, 500), (2, 500), (3, 500), (4, 200)]
    assert log[0]["error"] == "HTTP 500"


async def test_gives_up_after_the_retry_window_then_a_manual_redelivery(pg, settings, customer_id, client):
    s = DeliverySettings(poll_s=0.05, backoff_s=0.1, max_backoff_s=0.2, retry_for_s=0.6, timeout_s=2)
    with Receiver(fail_until=time.time() + 3600) as rx:
        ep = await svc.create_endpoint(pg, url=rx.url, customer_id=customer_id)
        rx.secret = ep["secret"]
        async with worker(pg, settings, s):
            await _raise(pg, customer_id)
            await until(lambda: _status(pg, ep["id"], "failed"), what="giving up")
            n = len(rx.received)
            assert n >= 2 and not rx.ok()
            rx.fail_until = 0  # the receiver is fixed
            [d] = await svc.list_deliveries(pg, endpoint_id=ep["id"])
            r = await client.post(f"/admin/deliveries/{d['id']}/redeliver", headers=AUTH)
            assert r.status_code == 200 and r.json()["status"] == "pending"
            await until(lambda: _status(pg, ep["id"], "delivered"), what="the redelivery")
    assert len(rx.ok()) == 1 and rx.ok()[0].signed
    r = await client.get(f"/admin/deliveries/{d['id']}", headers=AUTH)
    log = r.json()["attempt_log"]
    assert [a["status_code"] for a in log] == [500] * n + [200]


async def _status(pg, endpoint_id: str, status: str) -> bool:
    return [d["status"] for d in await svc.list_deliveries(pg, endpoint_id=endpoint_id)] == [status]


async def test_two_workers_deliver_each_alert_once(pg, settings, plan_id, redis):
    from control.accounts import customers  # noqa: PLC0415

    cids = [(await customers.create_customer(pg, redis, name="x", plan_id=plan_id))["id"] for _ in range(3)]
    with Receiver() as rx:
        eps = [await svc.create_endpoint(pg, url=rx.url, customer_id=c) for c in cids]
        async with worker(pg, settings, n=2):
            ids = [await _raise(pg, c, threshold=str(p)) for c in cids for p in (50, 80, 100)]
            await until(lambda: _async(len(rx.received) >= 9), what="nine deliveries")
            await asyncio.sleep(0.3)
    assert sorted(r.headers["tollgate-alert-id"] for r in rx.received) == sorted(ids)
    assert len(eps) == 3


def test_backoff_doubles_with_jitter_and_is_capped():
    s = DeliverySettings(backoff_s=10, max_backoff_s=3600)
    for attempt, base in ((1, 10), (2, 20), (3, 40), (10, 3600), (50, 3600)):
        for _ in range(20):
            assert 0.8 * base <= backoff(attempt, s) <= 1.2 * base


async def test_api_and_validation(client, customer_id):
    r = await client.post("/admin/webhooks", json={"url": "ftp://x"}, headers=AUTH)
    assert (r.status_code, r.json()["field"]) == (422, "url")
    r = await client.post("/admin/webhooks", json={"url": "http://h/x", "kinds": ["nope"]}, headers=AUTH)
    assert (r.status_code, r.json()["field"]) == (422, "kinds[0]")
    r = await client.post("/admin/webhooks", json={"url": "http://h/x", "customer_id": "cus_none"}, headers=AUTH)
    assert (r.status_code, r.json()["field"]) == (422, "customer_id")
    r = await client.post("/admin/webhooks", json={"url": "https://example.test/h", "customer_id": customer_id,
                                                   "kinds": ["usage.spike"]}, headers=AUTH)
    assert r.status_code == 201 and r.json()["secret"].startswith("whsec_")
    ep = r.json()
    r = await client.get(f"/admin/webhooks/{ep['id']}", headers=AUTH)
    assert r.status_code == 200 and "secret" not in r.json()
    r = await client.get("/admin/webhooks", params={"customer_id": customer_id}, headers=AUTH)
    assert ep["id"] in [w["id"] for w in r.json()["webhooks"]]
    r = await client.delete(f"/admin/webhooks/{ep['id']}", headers=AUTH)
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert (await client.delete("/admin/webhooks/whe_none", headers=AUTH)).status_code == 404
    assert (await client.post("/admin/deliveries/dlv_none/redeliver", headers=AUTH)).status_code == 404

    r = await client.get(f"/admin/customers/{customer_id}/alert-settings", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["effective"]["spend_cap_percents"] == [50, 80, 100]
    r = await client.put(f"/admin/customers/{customer_id}/alert-settings", headers=AUTH, json={
        "balance_below": "5.00", "usage_spike": {"factor": 3, "min_amount": "1"}, "spend_cap_percents": [90]})
    assert r.status_code == 200, r.text
    assert r.json()["effective"] == {"spend_cap_percents": [90], "balance_below": "5.00", "tier_promoted": True,
                                     "commit_at_risk": {"after_percent": 50},
                                     "usage_spike": {"factor": "3", "min_amount": "1.00"}}
    for body, field in (({"usage_spike": {"factor": 1}}, "usage_spike.factor"),
                        ({"balance_below": 1.5}, "balance_below"), ({"nope": 1}, "nope"),
                        ({"spend_cap_percents": [0]}, "spend_cap_percents[0]"),
                        ({"commit_at_risk": {"after_percent": 100}}, "commit_at_risk.after_percent")):
        r = await client.put(f"/admin/customers/{customer_id}/alert-settings", headers=AUTH, json=body)
        assert (r.status_code, r.json()["field"]) == (422, field), (body, r.text)
    r = await client.get("/admin/alerts", params={"kind": "bad"}, headers=AUTH)
    assert (r.status_code, r.json()["field"]) == (422, "kind")
    r = await client.get("/admin/deliveries", params={"status": "done"}, headers=AUTH)
    assert (r.status_code, r.json()["field"]) == (422, "status")

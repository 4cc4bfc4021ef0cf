"""The real tollgate-control's /metrics, scraped over HTTP: an alert delivered to a real receiver
that fails once moves the webhook attempts by kind and outcome, and the bus publication by kind."""
from __future__ import annotations

from control.alerts import manage as svc
from tests.control.webhook_receiver import Receiver
from tests.scrape import scrape_until
from tests.servers import ControlProcess
from tollgate.alerts import raise_alert


async def test_webhook_attempts_and_bus_publications_by_kind(pg, pg_dsn, redis, redis_server, customer_id):
    env = {"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": "redis",
           "TOLLGATE_WEBHOOK_BACKOFF_S": "0.1", "TOLLGATE_ALERTS_POLL_S": "0.05"}
    control = ControlProcess(env).start()
    url = f"{control.url}/metrics"
    try:
        with Receiver(fail_first=1) as rx:
            await svc.create_endpoint(pg, url=rx.url, customer_id=customer_id)
            before = await scrape_until(url, lambda s: True, "control's /metrics", alive=control.alive)
            async with pg.acquire() as conn, conn.transaction():
                assert await raise_alert(conn, customer_id, "wallet.balance_low", "5.00", "202612", {}, "evt_m")

            def moved(kind: str, outcome: str, s) -> float:
                return (s.value("tollgate_webhook_attempts_total", kind=kind, outcome=outcome)
                        - before.value("tollgate_webhook_attempts_total", kind=kind, outcome=outcome))

            # >=: alerts other tests left undelivered in the session's database may go out too
            after = await scrape_until(url, lambda s: moved("wallet.balance_low", "delivered", s) >= 1,
                                       "the webhook delivered", alive=control.alive)
            assert [r.status for r in rx.received] == [500, 200]
            assert moved("wallet.balance_low", "retrying", after) >= 1  # the receiver's 500 first
            assert (after.value("tollgate_alerts_published_total", kind="wallet.balance_low")
                    >= before.value("tollgate_alerts_published_total", kind="wallet.balance_low") + 1)
    finally:
        control.stop()

"""The real rater process's /metrics, scraped over HTTP while real events go through a real
enforcer, Redis, PostgreSQL (and Tansu for Kafka): every metric moves with what happened."""
from __future__ import annotations

import uuid

import httpx
import orjson
import pytest

from control.accounts import api_keys
from tests.rater.conftest import PLAN, usage
from tests.rater.processes import RaterProcess
from tests.scrape import Scrape, scrape_until
from tests.servers import run_enforcer
from tollgate.keys import EVENTS_STREAM, CustomerKeys
from tollgate.local_services import free_port

# Holds expire a second after the check, so the sweeper has one to release within the test.
SHORT_HOLDS = PLAN.replace("tokens_per_minute: 100000000}", "tokens_per_minute: 100000000, hold_ttl_seconds: 1}")
assert SHORT_HOLDS != PLAN

RATED = ("tollgate_rater_events_total", {"outcome": "rated"})


def rated(s: Scrape) -> float:
    return s.value(RATED[0], **RATED[1])


def processed(s: Scrape) -> float:
    """Rated now, or replayed: priced by an earlier attempt (committed, then settling failed)."""
    return rated(s) + s.value("tollgate_rater_events_total", outcome="replayed")


def lag(s: Scrape) -> float | None:
    """The consumer lag summed over the series (a stream; a topic's partitions); None before the first probe."""
    series = s.labelled("tollgate_rater_consumer_lag")
    return sum(series.values()) if series else None


def rater_env(base: dict[str, str], port: int) -> dict[str, str]:
    return {**base, "TOLLGATE_RATER_METRICS_PORT": str(port), "TOLLGATE_RATER_METRICS_HOST": "127.0.0.1",
            "TOLLGATE_RATER_LAG_PROBE_S": "0.2"}


async def check_and_use(http: httpx.AsyncClient, url: str, api_key: str, *, report: bool = True) -> str:
    """A check (a hold placed) and, with `report`, its usage event naming the hold; the hold id."""
    rid = f"req_{uuid.uuid4().hex[:12]}"
    r = await http.post(f"{url}/v1/check", json={"api_key": api_key, "request_id": rid, "dimensions": {"model": "m1"},
                                                 "estimate": {"requests": 1, "input_tokens": 900, "output_tokens": 500}})
    assert r.status_code == 200, r.text
    hold = r.json()["hold_id"]
    if report:
        r = await http.post(f"{url}/v1/usage", json={
            "event_id": f"evt_{uuid.uuid4().hex[:12]}", "api_key": api_key, "correlation_id": rid, "hold_id": hold,
            "event_type": "llm.completion", "properties": {"model": "m1"},
            "measurements": [{"metric": "input_tokens", "value": 700}, {"metric": "output_tokens", "value": 300}]})
        assert r.status_code == 202, r.text
    return hold


async def lag_rises_while_stuck_then_returns_to_zero(redis, publish, metrics_url: str, customer: str,
                                                    rater: RaterProcess) -> None:
    """The customer's projection is lost (its cfg hash moved away in Redis): the batch cannot be
    settled and is retried unacknowledged, so the lag stays above 0; once the projection is back,
    the batch goes through and the lag returns to 0."""
    before = await scrape_until(metrics_url, lambda s: lag(s) == 0, "lag 0 before", alive=rater.alive)
    cfg = CustomerKeys(customer).cfg
    await redis.rename(cfg, cfg + ":away")
    await publish([usage(customer, 100, 100) for _ in range(3)])
    stuck = await scrape_until(metrics_url, lambda s: (lag(s) or 0) > 0
                               and s.value("tollgate_rater_batch_failures_total") > before.value(
                                   "tollgate_rater_batch_failures_total"), "lag > 0 while stuck", alive=rater.alive)
    assert rated(stuck) == rated(before)
    await redis.rename(cfg + ":away", cfg)
    after = await scrape_until(metrics_url, lambda s: lag(s) == 0 and processed(s) >= processed(before) + 3,
                               "lag back to 0 and the events rated", alive=rater.alive)
    assert processed(after) == processed(before) + 3


async def test_rater_metrics_move_with_real_events(pg, pg_dsn, redis, redis_server, plan_for, make_customer):
    c = await make_customer(plan_for("postpaid", SHORT_HOLDS))
    key = (await api_keys.create_api_key(pg, redis, c))["api_key"]
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env = {"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": "redis",
           "TOLLGATE_CHECK_DEADLINE_MS": "1000"}

    async def publish(events: list[dict]) -> None:
        for e in events:
            await redis.xadd(EVENTS_STREAM, {"event": orjson.dumps(e)})

    rater = RaterProcess(rater_env(env, port), ["--sweep-interval", "0.2"]).start().wait_started()
    try:
        with run_enforcer(env) as enf:
            s0 = await scrape_until(url, lambda s: lag(s) is not None, "the first lag probe", alive=rater.alive)
            assert lag(s0) == 0

            # Five checks and their usage through the enforcer: rated, settled, their holds released.
            async with httpx.AsyncClient(timeout=10) as http:
                for _ in range(5):
                    await check_and_use(http, enf.url, key)
                s1 = await scrape_until(url, lambda s: rated(s) == rated(s0) + 5
                                        and s.value("tollgate_rater_events_total", outcome="decision") >= 5,
                                        "five usage events rated", alive=rater.alive)
                assert s1.value("tollgate_rater_messages_total") >= s0.value("tollgate_rater_messages_total") + 10
                assert s1.value("tollgate_rater_spend_micros_total") > s0.value("tollgate_rater_spend_micros_total")
                assert s1.value("tollgate_rater_batches_total") > s0.value("tollgate_rater_batches_total")
                assert (s1.value("tollgate_rater_settle_delay_seconds_count")
                        > s0.value("tollgate_rater_settle_delay_seconds_count"))
                assert s1.value("tollgate_rater_batch_seconds_count") > s0.value("tollgate_rater_batch_seconds_count")
                assert s1.value("tollgate_rater_hold_sweeps_total", outcome="ok") > 0

                # A check whose usage never comes: its hold expires after a second and is swept.
                lone = await check_and_use(http, enf.url, key, report=False)
            s2 = await scrape_until(url, lambda s: s.value("tollgate_rater_holds_expired_total")
                                    > s1.value("tollgate_rater_holds_expired_total"), "the lone hold swept",
                                    alive=rater.alive)
            assert await pg.fetchval("SELECT status FROM holds WHERE hold_id = $1", lone) == "expired"

            # A message that is not JSON and an event with a metric the plan does not know: dead letters.
            await redis.xadd(EVENTS_STREAM, {"event": f"{{not json {uuid.uuid4().hex}".encode()})  # unique raw:
            # the session's database is shared, and other tests look dead letters up by their raw bytes
            await publish([usage(c, 10, 10, extra=[{"metric": "bogus_metric", "value": 1}])])
            s3 = await scrape_until(url, lambda s: s.value("tollgate_rater_events_total", outcome="dead")
                                    >= s2.value("tollgate_rater_events_total", outcome="dead") + 2,
                                    "two dead letters", alive=rater.alive)
            for reason in ("invalid_event", "unknown_metric"):
                assert (s3.value("tollgate_rater_dead_letters_total", reason=reason)
                        == s2.value("tollgate_rater_dead_letters_total", reason=reason) + 1), reason
            assert rated(s3) == rated(s2)

            # $6 of input tokens in one event: the customer crosses the build tier's $5, one alert raised.
            await publish([usage(c, 2_000_000, 10)])
            s4 = await scrape_until(url, lambda s: rated(s) == rated(s3) + 1, "the big event rated", alive=rater.alive)
            assert (s4.value("tollgate_rater_alerts_raised_total", kind="tier.promoted")
                    == s3.value("tollgate_rater_alerts_raised_total", kind="tier.promoted") + 1)
            assert await pg.fetchval("SELECT count(*) FROM alerts WHERE customer_id = $1 AND kind = 'tier.promoted'",
                                     c) == 1

            await lag_rises_while_stuck_then_returns_to_zero(redis, publish, url, c, rater)
    except AssertionError as e:
        raise AssertionError(f"{e}\nrater log:\n{rater.logs()[-4000:]}") from None
    finally:
        code = rater.stop()
    assert code == 0, rater.logs()[-3000:]


@pytest.mark.kafka
@pytest.mark.slow
async def test_kafka_consumer_lag_per_partition(pg, pg_dsn, redis, redis_server, kafka_bootstrap, kafka_idempotence,
                                                plan_for, make_customer):
    from tollgate.bus.kafka import KafkaProducerBus  # noqa: PLC0415

    c = await make_customer(plan_for("postpaid"))
    topic = f"tg-metrics-{uuid.uuid4().hex[:8]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env = {"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": "kafka",
           "TOLLGATE_KAFKA_BOOTSTRAP": kafka_bootstrap, "TOLLGATE_KAFKA_TOPIC": topic,
           "TOLLGATE_KAFKA_IDEMPOTENCE": "1" if kafka_idempotence else "0"}
    bus = KafkaProducerBus(kafka_bootstrap, topic, idempotence=kafka_idempotence)
    try:
        await bus.publish([usage(c, 100, 100) for _ in range(4)])  # the topic exists before the rater joins
        rater = RaterProcess(rater_env(env, port), ["--sweep-interval", "0", "--group", f"g-{topic}"]).start()
        try:
            rater.wait_started()
            s = await scrape_until(url, lambda s: rated(s) == 4 and lag(s) == 0, "the first events rated, lag 0",
                                   timeout=90, alive=rater.alive)
            series = [dict(k) for k in s.labelled("tollgate_rater_consumer_lag")]
            assert {x["topic"] for x in series} == {topic}
            assert len({x["partition"] for x in series}) == len(series) >= 1  # one series per partition
            await lag_rises_while_stuck_then_returns_to_zero(redis, bus.publish, url, c, rater)
        finally:
            code = rater.stop()
        assert code == 0, rater.logs()[-3000:]
    finally:
        await bus.close()


"""OpenTelemetry traces (tollgate.tracing): a gateway's trace runs through a real enforcer's
/v1/check and /v1/usage (exported over OTLP/HTTP to a real collector), onto the bus inside the
events, and into the rater's batch (in process, the SDK's InMemorySpanExporter)."""
from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from control.accounts import api_keys
from tests.otlp_collector import OtlpCollector
from tests.rater.conftest import pg_totals, raw, uid, usage
from tests.rater.processes import RaterProcess
from tests.servers import run_enforcer
from tollgate import tracing
from tollgate.keys import EVENTS_STREAM

STAGES = ("rater.decode", "rater.resolve_customers", "rater.lock_groups", "rater.transaction", "rater.price",
          "rater.ledger_write", "rater.alerts", "rater.settle", "rater.record_settlement", "rater.margin_guard",
          "rater.record_decisions")


@pytest.fixture
def spans():
    """Tracing on in this process; the finished spans, read with spans.get_finished_spans()."""
    exporter = InMemorySpanExporter()
    tracing.setup("tollgate-rater", exporter=exporter)
    yield exporter
    tracing.shutdown()


def _hex(n: int, width: int) -> str:
    return f"{n:0{width}x}"


def _traceparent(sc) -> str:
    return f"00-{_hex(sc.trace_id, 32)}-{_hex(sc.span_id, 16)}-01"


async def _bus_events(redis, n: int, timeout: float = 10.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        entries = await redis.xrange(EVENTS_STREAM)
        if len(entries) >= n:
            return [fields[b"event"] for _, fields in entries]
        assert time.monotonic() < deadline, f"{len(entries)} of {n} events reached the bus"
        await asyncio.sleep(0.05)


def _by_name(finished) -> dict:
    return {s.name: s for s in finished}


@pytest.mark.slow
async def test_one_trace_from_the_gateway_through_check_and_usage_into_the_rater(
        spans, pg, redis, redis_server, plan_for, make_customer, pipeline, tmp_path):
    c = await make_customer(plan_for("prepaid"), wallet_micros=50_000_000)
    key = (await api_keys.create_api_key(pg, redis, c))["api_key"]
    gateway = tracing.tracer()
    eid, rid = uid("evt"), uid("req")  # ids no other test's rating has recorded
    with OtlpCollector() as collector:
        env = {"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_BUS": "redis", "TOLLGATE_CHECK_DEADLINE_MS": "1000",
               "TOLLGATE_SPOOL_PATH": str(tmp_path / "spool.jsonl"), **collector.env()}
        with run_enforcer(env) as enf:
            async with httpx.AsyncClient(timeout=10) as http:
                with gateway.start_as_current_span("gateway POST /v1/chat/completions", kind=SpanKind.SERVER) as gw:
                    headers = {"traceparent": _traceparent(gw.get_span_context()), "tracestate": "gw=1"}
                    r = await http.post(f"{enf.url}/v1/check", headers=headers, json={
                        "api_key": key, "request_id": rid, "dimensions": {"model": "m1"},
                        "estimate": {"requests": 1, "input_tokens": 2000, "output_tokens": 1000}})
                    assert r.status_code == 200, r.text
                    r = await http.post(f"{enf.url}/v1/usage", headers=headers, json={
                        "event_id": eid, "api_key": key, "correlation_id": rid,
                        "hold_id": r.json()["hold_id"], "event_type": "llm.completion", "properties": {"model": "m1"},
                        "measurements": [{"metric": "input_tokens", "value": 1500},
                                         {"metric": "output_tokens", "value": 700}]})
                    assert r.status_code == 202, r.text
                # a malformed traceparent is ignored (a new trace), never refused
                r = await http.post(f"{enf.url}/v1/check", headers={"traceparent": "00-zz-nope-01"}, json={
                    "api_key": key, "request_id": "req_untraced", "dimensions": {"model": "m1"},
                    "estimate": {"requests": 1, "input_tokens": 10, "output_tokens": 10}})
                assert r.status_code == 200, r.text
                # a gateway that did not sample the request: nothing recorded, nothing carried on
                r = await http.post(f"{enf.url}/v1/check", headers={"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-00"},
                                    json={"api_key": key, "request_id": "req_unsampled", "dimensions": {"model": "m1"},
                                          "estimate": {"requests": 1, "input_tokens": 10, "output_tokens": 10}})
                assert r.status_code == 200, r.text
            enforcer_spans = await collector.wait_for(["POST /v1/check", "POST /v1/usage"])
            # both checks' spans: the traced one continues the gateway's trace, the other starts one
            await _until(lambda: len([s for s in collector.spans if s.name == "POST /v1/check"]) == 2)
        raws = await _bus_events(redis, 4)

    trace_id = _hex(gw.get_span_context().trace_id, 32)
    gw_span = _hex(gw.get_span_context().span_id, 16)
    checks = [s for s in collector.spans if s.name == "POST /v1/check"]
    check = next(s for s in checks if s.trace_id == trace_id)
    other = next(s for s in checks if s.trace_id != trace_id)
    use = enforcer_spans["POST /v1/usage"]
    assert (check.parent_span_id, use.parent_span_id, use.trace_id) == (gw_span, gw_span, trace_id)
    assert other.parent_span_id == ""  # the malformed header started a trace of its own
    assert check.service == use.service == "tollgate-enforcer"
    assert check.kind == 2 and check.attributes["http.response.status_code"] == 200
    assert check.attributes["tollgate.reason"] == "ok" and use.attributes["http.response.status_code"] == 202

    # the events carry the context of the span that produced them (the spool and the bus keep it)
    events = {e["id"]: e for e in map(orjson.loads, raws)}
    decision = next(e for e in events.values() if e["kind"] == "decision" and e["request_id"] == rid)
    assert decision["traceparent"] == f"00-{trace_id}-{check.span_id}-01"
    assert events[eid]["traceparent"] == f"00-{trace_id}-{use.span_id}-01"
    assert events[eid]["tracestate"] == "gw=1"
    assert "traceparent" not in next(e for e in events.values() if e.get("request_id") == "req_unsampled")
    assert not [s for s in collector.spans if s.trace_id == "ab" * 16]

    res = await pipeline.process_raw(raws)
    assert res.rated == 1 and res.decisions == 3 and not res.dead
    finished = spans.get_finished_spans()
    batch = _by_name(finished)["rater.batch"]
    assert batch.kind == SpanKind.CONSUMER and batch.parent is None
    assert batch.attributes["messaging.batch.message_count"] == 4 and batch.attributes["tollgate.rated"] == 1
    # the batch links to each event's context (the malformed check's decision too: a trace of its own)
    linked = {(_hex(link.context.trace_id, 32), _hex(link.context.span_id, 16)) for link in batch.links}
    assert {(trace_id, check.span_id), (trace_id, use.span_id), (other.trace_id, other.span_id)} == linked

    # in the gateway's trace: gateway -> check -> rater.event, gateway -> usage -> rater.event
    per_event = {s.attributes["tollgate.event.id"]: s for s in finished if s.name == "rater.event"}
    rated = per_event[eid]
    assert _hex(rated.context.trace_id, 32) == trace_id and _hex(rated.parent.span_id, 16) == use.span_id
    assert rated.parent.is_remote and [link.context.span_id for link in rated.links] == [batch.context.span_id]
    assert _hex(per_event[decision["id"]].parent.span_id, 16) == check.span_id
    assert "tollgate.dead_letter" not in rated.attributes

    # the stages are the batch span's descendants, in the batch's trace
    by_id = {s.context.span_id: s for s in finished}
    named = {s.name for s in finished}
    assert set(STAGES) <= named, set(STAGES) - named
    for s in finished:
        if s.name in STAGES:
            assert s.context.trace_id == batch.context.trace_id
            up = s
            while up.parent is not None and up.parent.span_id in by_id:
                up = by_id[up.parent.span_id]
            assert up is batch, s.name
    parent = {s.name: by_id[s.parent.span_id].name for s in finished if s.name in STAGES}
    assert parent["rater.price"] == parent["rater.ledger_write"] == "rater.transaction"
    assert parent["rater.transaction"] == parent["rater.settle"] == "rater.lock_groups"


async def _until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_batch_links_every_traced_event_and_marks_its_dead_letters(spans, pg, redis, plan_for, make_customer,
                                                                           pipeline):
    c = await make_customer(plan_for("postpaid"))
    tracer = tracing.tracer()
    contexts = []
    for _ in range(3):
        with tracer.start_as_current_span("gateway") as s:
            contexts.append(s.get_span_context())
    good = [usage(c, traceparent=_traceparent(sc)) for sc in contexts[:2]]
    bad = usage(c, traceparent=_traceparent(contexts[2]))
    bad["measurements"] = [{"metric": "input_tokens", "value": -1}]
    plain = usage(c)  # no trace context: linked to nothing, no span of its own
    spans.clear()
    res = await pipeline.process_raw(raw([*good, bad, plain]))
    assert res.rated == 3 and len(res.dead) == 1
    finished = spans.get_finished_spans()
    batch = _by_name(finished)["rater.batch"]
    assert [link.context.span_id for link in batch.links] == [sc.span_id for sc in contexts]
    assert batch.attributes["tollgate.dead_letters"] == 1
    per_event = {s.attributes["tollgate.event.id"]: s for s in finished if s.name == "rater.event"}
    assert set(per_event) == {good[0]["id"], good[1]["id"], bad["id"]}
    assert per_event[bad["id"]].attributes["tollgate.dead_letter"] == "invalid_value"
    assert not per_event[bad["id"]].status.is_ok and per_event[good[0]["id"]].status.is_ok
    assert per_event[good[1]["id"]].parent.span_id == contexts[1].span_id


async def test_tracing_off_records_nothing(pg, redis, plan_for, make_customer, pipeline):
    exporter = InMemorySpanExporter()
    tracing.setup("tollgate-rater", exporter=exporter)
    tracing.shutdown()  # off again: the decorated stages must not reach the old provider
    assert not tracing.ENABLED and tracing.span("x") is tracing.span("y")  # the shared no-op
    c = await make_customer(plan_for("postpaid"))
    res = await pipeline.process_raw(raw([usage(c, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")]))
    assert res.rated == 1
    assert exporter.get_finished_spans() == ()


def test_an_unknown_tracing_setting_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("TOLLGATE_TRACING", "jaeger")
    with pytest.raises(ValueError, match="TOLLGATE_TRACING='jaeger'"):
        tracing.setup("tollgate-rater")
    assert not tracing.ENABLED


@pytest.mark.slow
@pytest.mark.parametrize("bus", ["redis", pytest.param("kafka", marks=pytest.mark.kafka)])
async def test_the_rater_service_continues_the_trace_over_either_bus(
        bus, request, spans, pg, pg_dsn, redis, redis_server, plan_for, make_customer, tmp_path):
    """Real processes throughout: enforcer and tollgate-rater both export to the collector."""
    c = await make_customer(plan_for("prepaid"), wallet_micros=50_000_000)
    key = (await api_keys.create_api_key(pg, redis, c))["api_key"]
    with OtlpCollector() as collector:
        env = {"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": bus,
               "TOLLGATE_CHECK_DEADLINE_MS": "1000", "TOLLGATE_SPOOL_PATH": str(tmp_path / "spool.jsonl"),
               **collector.env()}
        rater_args = ["--sweep-interval", "0"]
        eid, rid = uid("evt"), uid("req")  # ids no other test's rating has recorded
        if bus == "kafka":
            topic = f"tg-events-{uuid.uuid4().hex[:8]}"
            env.update(TOLLGATE_KAFKA_BOOTSTRAP=request.getfixturevalue("kafka_bootstrap"), TOLLGATE_KAFKA_TOPIC=topic,
                       TOLLGATE_KAFKA_IDEMPOTENCE="1" if request.getfixturevalue("kafka_idempotence") else "0")
            rater_args += ["--group", f"rater-{topic}"]
        with run_enforcer(env) as enf:
            rater = RaterProcess(env, rater_args).start().wait_started(60)
            try:
                async with httpx.AsyncClient(timeout=10) as http:
                    with tracing.tracer().start_as_current_span("gateway") as gw:
                        headers = {"traceparent": _traceparent(gw.get_span_context())}
                        r = await http.post(f"{enf.url}/v1/check", headers=headers, json={
                            "api_key": key, "request_id": rid, "dimensions": {"model": "m1"},
                            "estimate": {"requests": 1, "input_tokens": 2000, "output_tokens": 1000}})
                        assert r.status_code == 200, r.text
                        r = await http.post(f"{enf.url}/v1/usage", headers=headers, json={
                            "event_id": eid, "api_key": key, "hold_id": r.json()["hold_id"],
                            "measurements": [{"metric": "input_tokens", "value": 1500}]})
                        assert r.status_code == 202 and not r.json()["spooled"], r.text
                got = await collector.wait_for(["POST /v1/check", "POST /v1/usage", "rater.event", "rater.batch",
                                                "rater.ledger_write", "rater.settle"], timeout=60)
                # both events rated: their rater.event spans have arrived
                await _until(lambda: len([s for s in collector.spans if s.name == "rater.event"]) == 2, 30)
            finally:
                assert rater.stop() == 0, rater.logs()[-3000:]
    assert (await pg_totals(pg, c))["events"] == 1, rater.logs()[-6000:]
    trace_id = _hex(gw.get_span_context().trace_id, 32)
    use, check = got["POST /v1/usage"], got["POST /v1/check"]
    events = {s.parent_span_id: s for s in collector.spans if s.name == "rater.event"}
    assert {s.trace_id for s in events.values()} == {trace_id, use.trace_id, check.trace_id}
    assert events[use.span_id].attributes["tollgate.event.id"] == eid
    assert events[check.span_id].attributes["tollgate.event.kind"] == "decision"
    assert events[use.span_id].service == got["rater.batch"].service == "tollgate-rater"
    batch_traces = {s.trace_id for s in collector.spans if s.name == "rater.batch"}
    assert got["rater.ledger_write"].trace_id in batch_traces and trace_id not in batch_traces

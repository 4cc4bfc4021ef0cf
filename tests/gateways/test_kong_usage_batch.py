"""The Kong plugin's batched usage reports (usage_queue.lua), in real nginx through the PDK shim:
the reports of a worker go to the real enforcer as CloudEvents batches (counted at a recording
proxy in front of it), a refused batch is sent again report by report, a batch the enforcer could
not take (it is down) arrives after the retries once it is up, and a reload or quit of nginx sends
what waits."""
from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.gateways.conftest import failed, provision, wait_usage
from tests.gateways.harness import Nginx, RecordingSidecar, dead_url, kong_http_body, kong_location
from tests.servers import EnforcerProcess
from tests.tenants import DECISION_ENV
from tollgate.local_services import free_port

BATCH = RecordingSidecar.BATCH


@pytest.fixture(scope="module")
def later_enforcer(redis_server):
    """An enforcer on the tests' Redis that is down until a test starts it."""
    server = EnforcerProcess({"TOLLGATE_REDIS_URL": redis_server.url, **DECISION_ENV}, port=free_port())
    yield server
    server.cleanup()


def start_gateway(prefix, configs: dict, upstream) -> Nginx:
    body = kong_http_body(prefix, configs, "".join(kong_location(n, upstream.url) for n in configs))
    return Nginx(prefix, body, lua=True).start()


@pytest.fixture(scope="module")
def later_single(redis_server):
    """Another enforcer that is down until a test starts it (for the single-report path)."""
    server = EnforcerProcess({"TOLLGATE_REDIS_URL": redis_server.url, **DECISION_ENV}, port=free_port())
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, enforcer, upstream, later_enforcer, later_single):
    recorder = RecordingSidecar(enforcer.url)
    configs = {
        # a batch when 5 wait (the flush time is far): 10 requests are 2 POSTs
        "five": {"sidecar_url": recorder.url, "timeout_ms": 2000, "usage_batch_size": 5, "usage_flush_ms": 60000},
        # fewer than a batch: sent usage_flush_ms after the first
        "timed": {"sidecar_url": recorder.url, "timeout_ms": 2000, "usage_batch_size": 50, "usage_flush_ms": 500},
        # the check fails open (nothing listens), so an unknown key's request gets through and is reported
        "failopen": {"sidecar_url": dead_url(), "usage_url": recorder.url, "usage_batch_size": 3,
                     "usage_flush_ms": 60000},
        # reports to an enforcer that is not up yet: retried for ~25 s
        "later": {"sidecar_url": recorder.url, "usage_url": later_enforcer.url, "timeout_ms": 2000,
                  "usage_flush_ms": 50, "usage_retries": 8},
        # nothing takes the reports, at most 2 wait: the oldest is dropped
        "bounded": {"sidecar_url": recorder.url, "usage_url": dead_url(), "timeout_ms": 2000,
                    "usage_max_buffered": 2, "usage_flush_ms": 60000, "usage_retries": 0},
        "single": {"sidecar_url": recorder.url, "timeout_ms": 2000, "usage_batch_size": 1},
        # one plain report per request, to an enforcer not up yet: retried as a batch is
        "singlelater": {"sidecar_url": recorder.url, "usage_url": later_single.url, "timeout_ms": 2000,
                        "usage_batch_size": 1, "usage_retries": 8},
    }
    nginx = start_gateway(tmp_path_factory.mktemp("kong_batch"), configs, upstream)
    nginx.recorder = recorder
    yield nginx
    nginx.stop()
    recorder.stop()


@pytest.fixture
def kong(gateway, request):
    gateway.recorder.usage.clear()
    yield gateway
    if failed(request):
        print(f"--- nginx error.log ---\n{gateway.log()[-20000:]}")


def chat(key: str) -> dict:
    return {"headers": {"x-api-key": key},
            "json": {"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}}


def send(kong, upstream, instance: str, key: str, n: int = 1) -> list[str]:
    """n chat completions through the instance (each let through): their request ids."""
    ids = []
    for _ in range(n):
        r = httpx.post(f"{kong.url}/{instance}/v1/chat/completions", **chat(key))
        assert r.status_code == 200, r.text
        ids.append(upstream.received("/v1/chat/completions")[-1]["headers"]["x-tollgate-request-id"])
    return ids


async def test_reports_go_as_cloudevents_batches_of_usage_batch_size(kong, upstream, redis):
    t = await provision(redis)
    ids = send(kong, upstream, "five", t.api_key, 10)
    for request_id in ids:
        usage = await wait_usage(redis, request_id)
        assert usage["id"] == f"evt_{request_id}" and usage["customer_id"] == t.customer_id
        assert usage["event_type"] == "llm.completion"
    posts = kong.recorder.usage
    assert [(ctype, status) for ctype, _, status in posts] == [(BATCH, 202), (BATCH, 202)], posts
    assert [rid for _, rids, _ in posts for rid in rids] == ids  # in order, each once


async def test_a_partial_batch_is_sent_after_usage_flush_ms(kong, upstream, redis):
    t = await provision(redis)
    ids = send(kong, upstream, "timed", t.api_key, 3)
    for request_id in ids:
        await wait_usage(redis, request_id)
    # sent by the flush timer (a batch of 50 is never full here); in one batch unless the 3
    # requests took longer than usage_flush_ms on a busy machine
    posts = kong.recorder.usage
    assert {ctype for ctype, _, _ in posts} == {BATCH} and [r for _, rids, _ in posts for r in rids] == ids


async def test_a_refused_batch_is_sent_again_report_by_report(kong, upstream, redis):
    """One report of an unknown key (its check failed open) makes the enforcer refuse the batch
    (401): the other two still arrive, each on its own."""
    t = await provision(redis)
    ids = [rid for key in (t.api_key, "sk-not-a-tollgate-key", t.api_key)
           for rid in send(kong, upstream, "failopen", key)]
    for request_id in (ids[0], ids[2]):
        usage = await wait_usage(redis, request_id)
        assert usage["properties"]["fail_open"] == "true"
    deadline = time.monotonic() + 5
    while len(kong.recorder.usage) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kong.recorder.usage == [
        (BATCH, ids, 401),
        ("application/json", [ids[0]], 202),
        ("application/json", [ids[1]], 401),
        ("application/json", [ids[2]], 202),
    ]
    assert f"usage report of {ids[1]} refused: HTTP 401" in kong.log()


async def test_reports_to_an_enforcer_that_is_down_arrive_after_the_retry(kong, upstream, redis, later_enforcer):
    t = await provision(redis)
    ids = send(kong, upstream, "later", t.api_key, 3)
    deadline = time.monotonic() + 5
    while "usage batch failed (connect: connection refused)" not in kong.log():  # its first try: refused
        assert time.monotonic() < deadline, "the usage batch was never tried"
        time.sleep(0.05)
    later_enforcer.start()  # up
    for request_id in ids:
        await wait_usage(redis, request_id, timeout=30)
    assert "dropped" not in kong.log()


async def test_usage_batch_size_1_sends_one_plain_report_per_request(kong, upstream, redis):
    t = await provision(redis)
    ids = send(kong, upstream, "single", t.api_key, 2)
    for request_id in ids:
        await wait_usage(redis, request_id)
    assert sorted(kong.recorder.usage) == sorted(("application/json", [i], 202) for i in ids)


async def test_past_usage_max_buffered_the_oldest_report_is_dropped_and_logged(kong, upstream, redis):
    t = await provision(redis)
    ids = send(kong, upstream, "bounded", t.api_key, 3)
    assert f"usage report of {ids[0]} dropped (more than usage_max_buffered = 2 waiting); " in kong.log()
    assert f"usage report of {ids[1]} dropped" not in kong.log()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT], ids=["reload", "quit"])
async def test_nginx_reload_or_quit_sends_the_reports_waiting(tmp_path, enforcer, upstream, redis, sig):
    """Reports waiting for a batch (the flush time is a minute away) are sent when the worker
    exits: nginx runs the pending flush timer early."""
    configs = {"slow": {"sidecar_url": enforcer.url, "timeout_ms": 2000, "usage_flush_ms": 60000}}
    nginx = start_gateway(tmp_path, configs, upstream)
    try:
        t = await provision(redis)
        ids = send(nginx, upstream, "slow", t.api_key, 3)
        time.sleep(0.3)
        os.kill(nginx.proc.pid, sig)
        for request_id in ids:
            await wait_usage(redis, request_id, timeout=10)
        if sig == signal.SIGQUIT:
            nginx.proc.wait(10)  # the master quit once its worker had sent them
    finally:
        nginx.stop()


async def test_a_single_report_to_an_enforcer_that_is_down_arrives_after_the_retry(kong, upstream, redis, later_single):
    t = await provision(redis)
    [request_id] = send(kong, upstream, "singlelater", t.api_key)
    deadline = time.monotonic() + 5
    while f"usage report of {request_id} failed" not in kong.log():  # its first try: refused
        assert time.monotonic() < deadline, "the usage report was never tried"
        time.sleep(0.05)
    later_single.start()
    usage = await wait_usage(redis, request_id, timeout=30)
    assert usage["hold_id"]
    assert f"usage report of {request_id} dropped" not in kong.log()

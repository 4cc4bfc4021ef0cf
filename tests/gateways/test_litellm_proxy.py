"""The tollgate callback in the real LiteLLM proxy (litellm[proxy] from PyPI, its own virtualenv),
with the real openai SDK as the client, plain and streaming, and the real enforcer behind a
switchable address (for the enforcer down, hung and answering garbage). One proxy per module: it
takes seconds to start."""
from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.gateways.conftest import failed, provision, wait_event, wait_usage
from tests.gateways.litellm_harness import MASTER_KEY, MOCK_USAGE, LiteLLMProxy, SwitchableSidecar

CHECK_TIMEOUT_MS = 1000  # generous: a busy 2-core machine; the hung case waits this long


@pytest.fixture(scope="module")
def sidecar(enforcer):
    s = SwitchableSidecar(enforcer.url)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def proxy_server(sidecar):
    proxy = LiteLLMProxy({"TOLLGATE_SIDECAR_URL": sidecar.url, "TOLLGATE_TIMEOUT_MS": str(CHECK_TIMEOUT_MS)})
    proxy.start()
    yield proxy
    proxy.cleanup()


@pytest.fixture
def proxy(proxy_server, sidecar, request):
    sidecar.switch("forward")
    yield proxy_server
    sidecar.switch("forward")
    if failed(request):
        print(f"--- LiteLLM proxy log ---\n{proxy_server.logs()}")


def sdk(proxy, api_key: str | None, max_retries: int = 0) -> openai.OpenAI:
    """The openai SDK on the proxy: LiteLLM's master key, the tollgate key in its own header."""
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=max_retries,
                         default_headers={"x-tollgate-api-key": api_key} if api_key else None)


def chat(client: openai.OpenAI, model: str = "gpt-4o", max_tokens: int = 50, **extra):
    """A raw response (status, headers) of a chat completion."""
    return client.chat.completions.with_raw_response.create(
        model=model, max_tokens=max_tokens, messages=[{"role": "user", "content": "Say hi"}], **extra)


def request_id(headers) -> str:
    return "litellm_" + headers["x-litellm-call-id"]


async def test_allow_answers_with_rate_limit_headers_and_reports_cached_tokens(proxy, redis):
    t = await provision(redis)
    raw = chat(sdk(proxy, t.api_key), max_tokens=50)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the mock"
    assert raw.headers["x-ratelimit-limit"] == "100000"
    assert 99_990 <= int(raw.headers["x-ratelimit-remaining"]) < 100_000
    assert "requests" in raw.headers["ratelimit-policy"]
    assert raw.headers["x-tollgate-reason"] == "ok"
    assert "x-tollgate-degraded" not in raw.headers

    rid = request_id(raw.headers)
    decision = await wait_event(redis, "decision", "request_id", rid)
    assert decision["decision"] == "ALLOW" and decision["hold_id"].startswith("hold_")
    assert decision["dimensions"] == {"model": "gpt-4o"}
    assert decision["estimate"]["output_tokens"] == 50 and decision["estimate"]["input_tokens"] > 0

    usage = await wait_usage(redis, rid)
    assert usage["hold_id"] == decision["hold_id"]
    assert usage["id"] == f"evt_{rid}"
    assert usage["customer_id"] == t.customer_id and usage["key_id"] == t.key_id
    assert usage["properties"]["model"] == "gpt-4o"
    assert usage["properties"]["gateway"] == "litellm"
    assert usage["properties"]["request_type"] == "standard"
    cached = MOCK_USAGE["prompt_tokens_details"]["cached_tokens"]
    assert usage["measurements"] == [
        {"metric": "input_tokens", "value": MOCK_USAGE["prompt_tokens"] - cached},
        {"metric": "output_tokens", "value": MOCK_USAGE["completion_tokens"]},
        {"metric": "cache_read_tokens", "value": cached},
    ]

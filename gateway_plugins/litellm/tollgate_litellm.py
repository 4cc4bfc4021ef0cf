"""tollgate for the LiteLLM proxy: a custom callback (CustomLogger) that asks the enforcer before
every model call and reports what the call consumed after it.

    litellm_settings:
      callbacks: gateway_plugins.litellm.tollgate_litellm.handler

- `async_pre_call_hook`: POST /v1/check (the caller's tollgate key, the request id, the model, an
  estimate from the request). ALLOW: the call goes on. DENY: an OpenAI-shaped error with the status,
  type and code of gateway_plugins/openai_errors.json and the check's rate-limit headers
  (Retry-After where waiting helps, `x-should-retry: false` where it does not).
- `async_post_call_response_headers_hook`: the check's rate-limit headers on the answer.
- `async_log_success_event` / `async_log_failure_event`: POST /v1/usage with the tokens of the
  response (a stream's final usage included) or zero tokens for a failed call (releases the hold).
- Enforcer down, slower than TOLLGATE_TIMEOUT_MS, 5xx or garbage: fail open (the call goes on,
  flagged `X-Tollgate-Degraded: fail-open`, and is still reported); a 4xx is a decision.

Configured from the environment (the proxy loads the module-level `handler`), see README.md.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from datetime import datetime, timezone

import aiohttp
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException

from gateway_plugins import openai_errors
from gateway_plugins.check_contract import estimate, parse_check, trace_context
from gateway_plugins.litellm.usage_blocks import field, usage_measurements

log = logging.getLogger("tollgate.litellm")

# Call types that run a model and are metered (LiteLLM's CallTypes values).
# Others (images, audio, moderation, files, batches, pass-through) are not checked.
METERED_CALL_TYPES = frozenset({
    "completion", "acompletion", "text_completion", "atext_completion", "responses", "aresponses",
    "anthropic_messages", "aanthropic_messages", "embedding", "aembedding", "generate_content",
    "agenerate_content", "generate_content_stream", "agenerate_content_stream",
})
# Headers of the check reply passed to the client: every x-ratelimit-* (tollgate's and OpenAI's
# x-ratelimit-*-requests/-tokens), the IETF draft's pair, the retry hints, tollgate's own.
PASSED_PREFIXES = ("x-ratelimit-", "ratelimit")
PASSED_HEADERS = frozenset({"retry-after", "x-should-retry", "x-tollgate-reason", "x-tollgate-level",
                            "x-tollgate-degraded"})
DEGRADED = {"x-tollgate-degraded": "fail-open"}
STATE_TTL_S = 3600  # a call whose outcome was never logged: forget its state after this long
# A usage report the enforcer could not take (down, timed out, 5xx) is sent again after these
# pauses: it is idempotent by its event id, and a lost report is revenue lost (its hold expires).
USAGE_RETRY_DELAYS_S = (0.25, 1.0, 4.0)


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: a whole number, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name}: >= {minimum}, got {value}")
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}: true or false, got {raw!r}")


def config_from_env() -> dict:
    return {
        "sidecar_url": os.environ.get("TOLLGATE_SIDECAR_URL", "http://127.0.0.1:8080").rstrip("/"),
        "timeout_ms": _env_int("TOLLGATE_TIMEOUT_MS", 100, minimum=1),
        "usage_timeout_ms": _env_int("TOLLGATE_USAGE_TIMEOUT_MS", 2000, minimum=1),
        "fault_tolerant": _env_bool("TOLLGATE_FAULT_TOLERANT", True),
        "api_key_header": os.environ.get("TOLLGATE_API_KEY_HEADER", "x-tollgate-api-key").lower(),
        "default_model": os.environ.get("TOLLGATE_DEFAULT_MODEL") or None,
        "default_max_tokens": _env_int("TOLLGATE_DEFAULT_MAX_TOKENS", 1024),
        "bytes_per_token": _env_int("TOLLGATE_BYTES_PER_TOKEN", 4, minimum=1),
        "request_id_prefix": os.environ.get("TOLLGATE_REQUEST_ID_PREFIX", "litellm_"),
        "event_type": os.environ.get("TOLLGATE_EVENT_TYPE", "llm.completion"),
        "bill_estimate_without_usage": _env_bool("TOLLGATE_BILL_ESTIMATE_WITHOUT_USAGE", False),
    }


class TollgateDenied(ProxyException):
    """A refusal in OpenAI's error shape. LiteLLM's handler answers a ProxyException with its
    headers and `{"error": exc.to_dict()}`, but writes the status into error.code: here error.code
    is OpenAI's (e.g. insufficient_quota), with tollgate's reason beside it."""

    def __init__(self, status: int, reason: str | None, headers: dict[str, str], message: str | None = None,
                 level: str | None = None, code: str | None = None, error_type: str | None = None):
        self.body = openai_errors.error_body(reason, message, level)["error"]
        if code:  # a refusal of the plugin's own, not a reason of the table
            self.body["code"] = self.body["tollgate_reason"] = code
        if error_type:
            self.body["type"] = error_type
        super().__init__(message=self.body["message"], type=self.body["type"], param=None, code=status,
                         headers=headers, openai_code=self.body["code"])

    def to_dict(self) -> dict:
        return dict(self.body)


class SidecarError(Exception):
    pass


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def passed_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers`: lower-case names."""
    return {k: v for k, v in headers.items() if k in PASSED_HEADERS or k.startswith(PASSED_PREFIXES)}


class TollgateCallback(CustomLogger):
    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = config or config_from_env()
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        # per call (LiteLLM's call id): what the check said, until the call's outcome is reported
        self._calls: dict[str, dict] = {}

    # ------------------------------------------------------------------ the enforcer

    def session(self) -> aiohttp.ClientSession:
        """aiohttp (a LiteLLM dependency) rather than httpx: less of the proxy's CPU per request
        (BENCHMARKS.md, bench_litellm_callback)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session_loop = loop  # a session belongs to the loop it was made in
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": "tollgate-litellm", "Content-Type": "application/json"},
                connector=aiohttp.TCPConnector(limit=128, keepalive_timeout=4.0))
        return self._session

    async def post(self, path: str, doc: dict, timeout_ms: int,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """POST a JSON document: (status, lower-case headers, body), the whole exchange (connect,
        send, reply) within timeout_ms."""
        try:
            return await asyncio.wait_for(self._post(path, doc, headers), timeout_ms / 1000)
        except asyncio.TimeoutError:
            raise SidecarError("timeout") from None
        except (aiohttp.ClientConnectorError, ConnectionRefusedError) as e:
            raise SidecarError(f"connect: {e}") from None
        except (aiohttp.ClientError, OSError) as e:
            raise SidecarError(f"{type(e).__name__}: {e}") from None

    async def _post(self, path: str, doc: dict, headers: dict[str, str] | None) -> tuple[int, dict[str, str], bytes]:
        async with self.session().post(self.config["sidecar_url"] + path, headers=headers,
                                       data=json.dumps(doc, separators=(",", ":"))) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()

    # ------------------------------------------------------------------ before the call

    def api_key(self, user_api_key_dict, data: dict) -> str | None:
        """The caller's tollgate key: the configured request header, else the `tollgate_api_key`
        metadata of the caller's LiteLLM virtual key, else of its team."""
        value = (request_header(data, self.config["api_key_header"]) or "").strip()
        if value.lower().startswith("bearer "):
            value = value[7:].strip()
        if value:
            return value
        for meta in (getattr(user_api_key_dict, "metadata", None), getattr(user_api_key_dict, "team_metadata", None)):
            if isinstance(meta, dict) and isinstance(meta.get("tollgate_api_key"), str) and meta["tollgate_api_key"]:
                return meta["tollgate_api_key"]
        return None

    def client_body(self, data: dict) -> bytes:
        """The request as the client sent it (LiteLLM's snapshot of it), for the estimate."""
        body = (data.get("proxy_server_request") or {}).get("body")
        if not isinstance(body, dict):
            body = data
        sent = {k: v for k, v in body.items()
                if k not in ("metadata", "litellm_metadata", "proxy_server_request", "secret_fields")
                and not k.startswith("litellm_")}
        return json.dumps(sent, separators=(",", ":"), default=str).encode()

    async def async_pre_call_hook(self, user_api_key_dict, cache, data: dict, call_type):
        if call_type not in METERED_CALL_TYPES:
            return data
        call_id = str(data.get("litellm_call_id") or uuid.uuid4().hex)
        data["litellm_call_id"] = call_id
        api_key = self.api_key(user_api_key_dict, data)
        if not api_key:
            raise TollgateDenied(401, "invalid_api_key", {}, message="No tollgate API key: send it in the "
                                 f"{self.config['api_key_header']} header or set tollgate_api_key in the key's metadata.",
                                 code="missing_api_key")
        request_id = self.config["request_id_prefix"] + call_id
        dims, est = estimate(self.client_body(data), False, None, self.config)
        if isinstance(data.get("model"), str) and data["model"]:
            dims["model"] = data["model"]
        trace = trace_context(request_header(data, "traceparent"), request_header(data, "tracestate"))
        state = {"api_key": api_key, "request_id": request_id, "dimensions": dims, "estimate": est,
                 "stream": bool(data.get("stream")), "at": time.monotonic(), "trace": trace}
        decision, headers, error = None, {}, None
        try:
            status, reply_headers, body = await self.post(
                "/v1/check", {"api_key": api_key, "request_id": request_id, "dimensions": dims, "estimate": est},
                self.config["timeout_ms"], trace)
            headers = passed_headers(reply_headers)
            decision = parse_check(status, body, reply_headers)
            error = None if decision else f"unexpected reply: HTTP {status}"
        except SidecarError as e:
            error = str(e)

        if decision is None:
            if not self.config["fault_tolerant"]:
                log.error("tollgate enforcer failed, refusing the request %s: %s", request_id, error)
                raise TollgateDenied(503, None, {}, message="Service temporarily unavailable",
                                     code="tollgate_unavailable", error_type="service_unavailable")
            log.warning("tollgate enforcer failed, letting the request %s through: %s", request_id, error)
            self._remember(call_id, {**state, "hold_id": None, "fail_open": True, "headers": dict(DEGRADED)})
            return data

        if not decision["allow"]:
            raise self.denial(decision, headers)
        fail_open = decision["reason"] == "fail_open" or headers.get("x-tollgate-degraded") == "fail-open"
        self._remember(call_id, {**state, "hold_id": decision["hold_id"], "fail_open": fail_open, "headers": headers})
        return data

    def denial(self, decision: dict, headers: dict[str, str]) -> TollgateDenied:
        doc = decision.get("doc") or {}
        status = decision["status"]
        reason = decision["reason"]
        if status == 400:
            return TollgateDenied(400, reason, {}, message=doc.get("message") or "tollgate refused the request as malformed",
                                  code="invalid_request", error_type="invalid_request_error")
        if status in (401, 403):
            reason = "invalid_api_key"
        row = openai_errors.for_reason(reason)
        out = dict(headers)
        out.update(openai_errors.error_headers(reason, decision.get("retry_after")))
        if not row["retry"]:
            out.pop("retry-after", None)
        level = doc.get("level") if isinstance(doc.get("level"), str) else None
        return TollgateDenied(row["status"], reason, out, level=level)

    def _remember(self, call_id: str, state: dict) -> None:
        now = time.monotonic()
        if len(self._calls) > 10_000:  # calls whose outcome never came: do not grow without bound
            for k in [k for k, s in self._calls.items() if now - s["at"] > STATE_TTL_S]:
                del self._calls[k]
        self._calls[call_id] = state

    # ------------------------------------------------------------------ the answer's headers

    async def async_post_call_response_headers_hook(self, data: dict, user_api_key_dict, response,
                                                    request_headers=None, litellm_call_info=None):
        state = self._calls.get(str(data.get("litellm_call_id")))
        return dict(state["headers"]) if state and state.get("headers") else None

    # ------------------------------------------------------------------ after the call

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        usage = field(response_obj, "usage")
        await self.report(kwargs, 200, usage_measurements(usage))

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        exc = kwargs.get("exception")
        status = getattr(exc, "status_code", None)
        await self.report(kwargs, status if isinstance(status, int) else 500, None)

    async def report(self, kwargs: dict, status: int, usage: dict[str, int] | None) -> None:
        """POST /v1/usage once per allowed call; without usage, zero tokens (releases the hold) or,
        when configured, the estimate of a successful call."""
        state = self._calls.pop(str(kwargs.get("litellm_call_id")), None)
        if state is None:  # not a call this hook checked (refused, or not metered)
            return
        source = "response"
        if usage is None:
            if 200 <= status < 300 and self.config["bill_estimate_without_usage"]:
                usage = {"input_tokens": state["estimate"]["input_tokens"],
                         "output_tokens": state["estimate"]["output_tokens"]}
                source = "estimate"
            else:
                usage, source = {"input_tokens": 0, "output_tokens": 0}, "none"
        properties = {"request_type": "stream" if state["stream"] else "standard", "status": str(status),
                      "usage_source": source, "gateway": "litellm"}
        if "model" in state["dimensions"]:
            properties["model"] = state["dimensions"]["model"]
        if state["fail_open"]:
            properties["fail_open"] = "true"
        doc = {"event_id": "evt_" + state["request_id"], "api_key": state["api_key"],
               "correlation_id": state["request_id"], "hold_id": state["hold_id"],
               "event_type": self.config["event_type"], "timestamp": _utc_now(), "properties": properties,
               "measurements": [{"metric": m, "value": v} for m, v in usage.items()]}
        for attempt, pause in enumerate((*USAGE_RETRY_DELAYS_S, None)):
            try:
                status, _, body = await self.post("/v1/usage", doc, self.config["usage_timeout_ms"], state["trace"])
                if status < 500:  # taken (202), or refused for good (4xx: sending it again changes nothing)
                    if status != 202:
                        log.error("tollgate usage report %s refused: HTTP %s %s", state["request_id"], status,
                                  body[:200].decode("utf-8", "replace"))
                    return
                error = f"HTTP {status}"
            except SidecarError as e:
                error = str(e)
            if pause is None:
                log.error("tollgate usage report %s lost after %d attempts: %s", state["request_id"], attempt + 1, error)
                return
            log.warning("tollgate usage report %s failed (%s): sending it again in %.2f s", state["request_id"], error, pause)
            await asyncio.sleep(pause)


def request_header(data: dict, name: str) -> str | None:
    """A header of the client's request to the proxy (LiteLLM's snapshot of it), by lower-case name."""
    headers = (data.get("proxy_server_request") or {}).get("headers") or {}
    for key, value in headers.items():
        if key.lower() == name and isinstance(value, str):
            return value
    return None


handler = TollgateCallback()

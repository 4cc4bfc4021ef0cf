"""POST /v1/check: the pre-flight decision, one EVALSHA of lua/check.lua per request.

A raw ASGI endpoint, reached straight from enforcer.app.HotPath (not through Starlette): no
Request/Response objects, no middleware or router on the hot path.
Status codes per the contract: 200 ALLOW, 429 DENY, 401 unknown or revoked key, 400/413/415 bad
input; 503 at once while the process is overloaded (enforcer.loadshed: gateways fail open on it).
Whenever Redis gave no decision (silent, too slow, breaker open, script error, customer not
projected) the answer is ALLOW `fail_open`, flagged `X-Tollgate-Degraded: fail-open`, and a
`fail_open` event lets the rater bill the request from its usage report.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from enforcer import forward_auth, metrics
from enforcer import validation as v
from enforcer.keycache import UNKNOWN, KeyInfo
from enforcer.rate_headers import rate_headers
from enforcer.rediswire import Failure, ReplyError
from enforcer.responses import send_error, send_json
from tollgate.keys import api_key_hash
from tollgate.money import format_micros
from tollgate.periods import MAX_ANCHOR_DAY, period_bounds, period_of

if TYPE_CHECKING:
    from enforcer.app import Enforcer

log = logging.getLogger("tollgate.enforcer.check")

_JSON = (b"content-type", b"application/json")
_DEGRADED = (b"x-tollgate-degraded", b"fail-open")
_REPLAYED = (b"x-tollgate-replayed", b"true")
_SHOULD_NOT_RETRY = (b"x-should-retry", b"false")
_ALLOW = {r: metrics.decision_counter("ALLOW", r) for r in ("ok", "fail_open")}
_DENY = {r: metrics.decision_counter("DENY", r) for r in metrics.REASONS[1:-1]}
# DENYs that waiting cannot cure: no Retry-After whatever the script says (money, suspension, a guard)
_NO_RETRY = frozenset(("insufficient_balance", "spend_cap", "suspended", "margin_guard"))
# Replies that stop before the limits are read: they carry none (the last seen stay for fail-open headers)
_NO_LIMITS = frozenset(("suspended", "margin_guard"))
_FAIL_OPEN_REMAINING = {"requests": None, "tokens": None, "balance": None, "spend_cap": None}


class _Period:
    """The current billing period id per plan anchor day (the spend key's suffix), with its end;
    recomputed only when that period turns: a request costs a clock read and two list lookups."""

    __slots__ = ("clock", "ids", "ends")

    def __init__(self, clock=time.time):
        self.clock = clock
        self.ids = [""] * (MAX_ANCHOR_DAY + 1)  # index: anchor day
        self.ends = [0.0] * (MAX_ANCHOR_DAY + 1)

    def now(self, anchor_day: int = 1) -> str:
        t = self.clock()
        if t >= self.ends[anchor_day]:
            return self._turn(anchor_day, t)
        return self.ids[anchor_day]

    def _turn(self, anchor_day: int, t: float) -> str:
        pid = period_of(t, anchor_day)
        self.ids[anchor_day] = pid
        self.ends[anchor_day] = period_bounds(pid, anchor_day)[1].timestamp()
        return pid


class CheckEndpoint:
    def __init__(self, enforcer: Enforcer):
        self.e = enforcer
        self.period = _Period()

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["method"] != "POST":  # GET from forward-auth proxies, else 405
            return await forward_auth.not_post(self, scope, send)
        if self.e.shedder.overloaded:
            return await self.e.shedder.shed(send)
        t0 = time.perf_counter()
        try:
            doc = await v.read_json(scope, receive)
            key = v.api_key(doc)
            request_id = v.req_str(doc, "request_id")
            dims = v.dimensions(doc)
            est = v.estimate(doc)
            session_id = v.session_id(doc)
        except v.BadRequest as e:
            metrics.BAD_REQUESTS.labels(str(e.status)).inc()
            return await send_error(send, e)
        try:
            status, headers, body = await self.decide(key, request_id, dims, est, session_id)
        except Exception:  # a bug here must not block traffic: fail open, loudly
            log.exception("check failed")
            status, headers, body = self.fail_open("internal", api_key_hash(key), None, request_id, dims, est)
        await send_json(send, status, body, headers)
        metrics.CHECK_LATENCY.observe(time.perf_counter() - t0)

    async def decide(self, key: str, request_id: str, dims: dict, est: dict[str, int], session_id: str | None = None):
        e = self.e
        key_hash = api_key_hash(key)
        info = await e.keys.resolve(key_hash)
        if info is UNKNOWN:
            return unauthorized("unknown")
        if type(info) is Failure:
            return self.fail_open(info.cause, key_hash, None, request_id, dims, est)
        if info.revoked:
            return unauthorized("revoked")
        plan = info.plan
        if plan is None:
            return self.fail_open("not_provisioned", key_hash, info, request_id, dims, est)
        cost = plan.estimate_micros(dims, est)
        tokens = est.get("input_tokens", 0) + est.get("output_tokens", 0)
        hold_id = "hold_" + e.ids.next()
        period = self.period.now(plan.billing_anchor_day)  # the customer's plan's billing period
        keys = info.check_keys(period, request_id)
        # check.lua acts only until we give up waiting for it (in Redis's clock): a late run places nothing
        argv = (hold_id, est["requests"], tokens, cost, plan.hold_ttl_seconds * 1000, e.idempotency_ttl_ms, info.key_id,
                e.redis_clock.deadline_ms(e.give_up_s), session_id or "", *info.path_argv)
        r = await e.guard.evalsha(e.script.sha, e.script.source, keys, argv)
        if type(r) is Failure:
            return self.fail_open(r.cause, key_hash, info, request_id, dims, est)
        if type(r) is ReplyError:
            metrics.SCRIPT_ERRORS.inc()
            log.error("check.lua failed for %s: %s", info.customer_id, r)
            return self.fail_open("script_error", key_hash, info, request_id, dims, est)
        allowed, reason, hold, retry_ms, rem_r, rem_t, balance, cap_left, tier, rpm, tpm, reset_ms, replayed, level = r
        if reason == "not_provisioned":  # the key exists but its customer was never projected
            log.error("customer %s has no cfg in Redis: failing open", info.customer_id)
            return self.fail_open("not_provisioned", key_hash, info, request_id, dims, est)
        if reason == "expired":  # Redis ran it past its deadline, so it wrote nothing
            return self.fail_open("expired", key_hash, info, request_id, dims, est)
        if reason not in _NO_LIMITS:  # those replies carry no limits (check.lua stops first)
            info.limits = (rpm, tpm)
        no_retry = reason in _NO_RETRY
        if no_retry:
            retry_ms = 0
        answer = {
            "decision": "ALLOW" if allowed else "DENY", "reason": reason, "hold_id": hold or None,
            "retry_after_ms": max(retry_ms, 0),
            "remaining": {"requests": rem_r, "tokens": rem_t, "balance": format_micros(balance),
                          "spend_cap": None if cap_left is None else format_micros(cap_left)},
            "tier": tier,
        }
        if level:  # the level of the hierarchy that decided a DENY: key, app, agent, team, customer, session
            answer["level"] = level
        body = orjson.dumps(answer)
        headers = rate_headers(rpm, rem_r, reset_ms, tpm, rem_t)
        headers.append((b"x-tollgate-reason", reason.encode()))
        if level:
            headers.append((b"x-tollgate-level", level.encode()))
        if hold:  # for gateways that see only headers (nginx auth_request): the usage report names it
            headers.append((b"x-tollgate-hold-id", hold.encode()))
        if replayed:  # a retry of an allowed request id: its hold, nothing charged again
            headers.append(_REPLAYED)
        event_id = f"dec_{request_id}"
        if allowed:
            _ALLOW["ok"].inc()
            status = 200
        else:
            _DENY[reason].inc()
            status = 429
            event_id = f"{event_id}_{e.ids.next()}"  # a retry may be decided differently: its own id
            if retry_ms > 0 and not no_retry:  # waiting helps (rate limits, in flight); money or a guard does not
                headers.append((b"retry-after", b"%d" % max(1, -(-retry_ms // 1000))))
            else:  # waiting cannot cure it: clients that honour this (OpenAI's SDKs) do not retry
                headers.append(_SHOULD_NOT_RETRY)
        e.events.put({
            "kind": "decision", "id": event_id, "customer_id": info.customer_id, "key_id": info.key_id,
            "request_id": request_id, "hold_id": hold or None, "decision": "ALLOW" if allowed else "DENY",
            "reason": reason, "estimate_micros": cost, "dimensions": dims, "estimate": est,
            "timestamp": e.clock.now_iso(), **({"replayed": True} if replayed else {}),
            **({"level": level} if level else {}), **({"session_id": session_id} if session_id else {}),
        })
        return status, headers, body

    def fail_open(self, cause: str, key_hash: str, info: KeyInfo | None, request_id: str, dims: dict, est: dict):
        metrics.FAIL_OPEN.labels(cause).inc()
        _ALLOW["fail_open"].inc()
        event: dict[str, Any] = {"kind": "fail_open", "id": f"fo_{request_id}", "api_key_hash": key_hash}
        if info is not None:
            event["customer_id"], event["key_id"] = info.customer_id, info.key_id
        event.update(request_id=request_id, dimensions=dims, estimate=est, cause=cause, timestamp=self.e.clock.now_iso())
        self.e.events.put(event)
        rpm, tpm = _known_limits(info)
        headers = rate_headers(rpm, rpm, 0, tpm, tpm)
        headers += [(b"x-tollgate-reason", b"fail_open"), _DEGRADED]
        body = orjson.dumps({"decision": "ALLOW", "reason": "fail_open", "hold_id": None, "retry_after_ms": 0,
                             "remaining": _FAIL_OPEN_REMAINING, "tier": None})
        return 200, headers, body


def _known_limits(info: KeyInfo | None) -> tuple[int, int]:
    """Limits for the headers of an answer Redis did not give: last seen, else the plan's base tier."""
    if info is None:
        return 0, 0
    if info.limits is not None:
        return info.limits
    if info.plan is not None:
        rpm, tpm, _ = info.plan.limits_for_tier(info.plan.tiers[0])
        return rpm, tpm
    return 0, 0


def unauthorized(why: str):
    metrics.UNAUTHORIZED.labels(why).inc()
    body = orjson.dumps({"error": "invalid_api_key", "message": f"{why} API key"})
    return 401, [(b"x-tollgate-reason", b"invalid_api_key"), (b"www-authenticate", b'Bearer realm="tollgate"')], body

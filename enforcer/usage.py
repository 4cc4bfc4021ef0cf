"""POST /v1/usage: what a call actually consumed, as one compound event, onto the bus (plain JSON,
or a structured-mode CloudEvent or CloudEvents batch: enforcer.cloudevents).

202 only once the event is durable: fsync'd to the local write-ahead spool and acknowledged by the
bus, or, when the bus is unreachable, in the spool alone (then `"spooled": true` and
`X-Tollgate-Degraded: spooled`) and replayed in order later. The spool keeps it until the bus has it
durably (tollgate.bus.spool), so a bus Redis restarted empty does not lose it. A revoked key still
reports usage (the call was allowed before the revocation); an unknown key is 401. When Redis
cannot resolve the key (unreachable, or it lost its projection: never 401 then), the event carries
`api_key_hash` instead of `customer_id` and the rater resolves it from PostgreSQL (an unknown hash
there is a dead letter).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson

from enforcer import cloudevents as ce
from enforcer import metrics
from enforcer import validation as v
from enforcer.checks import unauthorized
from enforcer.keycache import UNKNOWN, KeyInfo
from enforcer.rediswire import Failure
from enforcer.responses import send_error, send_json
from tollgate import tracing
from tollgate.keys import ID_PATTERN, api_key_hash
from tollgate.rating.sessions import BOUNDARY_TYPES

if TYPE_CHECKING:
    from enforcer.app import Enforcer

log = logging.getLogger("tollgate.enforcer.usage")
MAX_MEASUREMENTS = 256


def parse_usage(doc: dict) -> dict:
    """The validated fields of a usage report (BadRequest naming the field otherwise)."""
    out = {
        "event_id": v.req_str(doc, "event_id"),
        "api_key": v.api_key(doc),
        "correlation_id": v.req_str(doc, "correlation_id", required=False),
        "hold_id": v.req_str(doc, "hold_id", required=False),
        "event_type": v.req_str(doc, "event_type", required=False),
        "timestamp": v.timestamp(doc),
    }
    session = v.session_id(doc)
    if session is not None:  # top-level on the bus event too (only when given)
        out["session_id"] = session
    props = doc.get("properties")
    if props is not None and not isinstance(props, dict):
        raise v.invalid("properties", "must be an object")
    out["properties"] = props or {}
    ms = doc.get("measurements")
    if ms in (None, []) and out["event_type"] in BOUNDARY_TYPES:
        ms = []  # an agent session's start or end may measure nothing
    elif ms is None:
        raise v.invalid("measurements", "required")
    elif not isinstance(ms, list) or not ms:
        raise v.invalid("measurements", "must be a non-empty list")
    if len(ms) > MAX_MEASUREMENTS:
        raise v.invalid("measurements", f"at most {MAX_MEASUREMENTS} entries")
    seen = set()
    measurements = []
    for i, m in enumerate(ms):
        f = f"measurements[{i}]"
        if not isinstance(m, dict):
            raise v.invalid(f, "must be an object {metric, value}")
        metric = m.get("metric")
        if not isinstance(metric, str) or not ID_PATTERN.match(metric):
            raise v.invalid(f"{f}.metric", "required: 1-64 letters, digits, '_', '-', '.'")
        if metric in seen:
            raise v.invalid(f"{f}.metric", f"{metric!r} appears twice")
        seen.add(metric)
        if "value" not in m:
            raise v.invalid(f"{f}.value", "required")
        measurements.append({"metric": metric, "value": v.quantity(m["value"], f"{f}.value")})
    out["measurements"] = measurements
    return out


_MEDIA_TYPES = (v.JSON, ce.CLOUDEVENT, ce.CLOUDEVENT_BATCH)


class UsageEndpoint:
    """One usage report as plain JSON or a CloudEvent, or a CloudEvents batch (enforcer.cloudevents):
    all of a batch is checked (fields, keys, plan maxima) before any of it goes to the bus at once."""

    def __init__(self, enforcer: Enforcer):
        self.e = enforcer

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["method"] != "POST":
            return await send_error(send, v.BadRequest(405, "method_not_allowed", "use POST"), ((b"allow", b"POST"),))
        e = self.e
        received = e.clock.now_iso()
        events = []
        try:
            media, body = await v.read_typed_json(scope, receive, _MEDIA_TYPES)
            batch = media == ce.CLOUDEVENT_BATCH
            for doc, prefix in ce.usage_docs(media, body):
                try:
                    event = await self.event(parse_usage(doc), received)
                except v.BadRequest as err:
                    raise ce.prefixed(err, prefix) if prefix else err from None
                if event is None:  # an unknown key refuses the whole batch
                    status, headers, body = unauthorized("unknown")
                    return await send_json(send, status, body, headers)
                events.append(event)
        except v.BadRequest as err:
            metrics.BAD_REQUESTS.labels(str(err.status)).inc()
            return await send_error(send, err)
        try:
            to_bus = await e.publisher.publish(events)
        except Exception:  # neither the bus nor the disk: the gateway must retry (idempotent by id)
            log.exception("usage events %s could not be stored", [ev["id"] for ev in events])
            return await send_error(send, v.BadRequest(503, "unavailable", "the event could not be stored; retry"),
                                    ((b"retry-after", b"1"),))
        metrics.USAGE_ACCEPTED.labels("bus" if to_bus else "spool").inc(len(events))
        if batch:
            body = orjson.dumps({"status": "accepted", "event_ids": [ev["id"] for ev in events], "spooled": not to_bus})
        else:
            body = orjson.dumps({"status": "accepted", "event_id": events[0]["id"], "spooled": not to_bus})
        await send_json(send, 202, body, () if to_bus else ((b"x-tollgate-degraded", b"spooled"),))

    async def event(self, u: dict, received: str) -> dict | None:
        """The bus event of a parsed report: its key resolved (None: unknown), its plan's maxima (422)."""
        key_hash = api_key_hash(u.pop("api_key"))
        info = await self.e.keys.resolve(key_hash)
        if info is UNKNOWN:
            return None
        if type(info) is KeyInfo and info.plan is not None:  # else parse_usage's ceiling; the rater checks again
            v.within_plan(u["measurements"], info.plan)
        event = {"kind": "usage", "id": u.pop("event_id")}
        if type(info) is Failure:
            event["api_key_hash"] = key_hash
        else:
            event.update(customer_id=info.customer_id, key_id=info.key_id, plan_id=info.plan_id)
        event.update(u, timestamp=u["timestamp"] or received, received_at=received)
        if tracing.ENABLED:  # the rater's spans continue this request's trace (tollgate.tracing)
            tracing.inject(event)
        return event

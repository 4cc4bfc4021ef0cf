"""Agent sessions: the aggregate stage between decoding and pricing (rater.pipeline).

A plan with `sessions: {idle_timeout_seconds: N}` (tollgate.plans) has its usage events that carry
a top-level `session_id` aggregated instead of priced one by one: each such event is recorded
exactly once (processed_events kind `session_part`, spend 0, its hold settled and released as
usual) and its measurements are added to the session's agent_sessions row, in the rating
transaction, under the customer's lock group. The session is closed, in a transaction like that:
- by an `agent.session.end` event (in the same transaction as that event);
- by the idle sweeper (Pipeline.close_idle, in the rater process) once its `idle_at` has passed;
- by the period close, for a session still open in the period being closed.
Closing rates ONE event, `ses_<customer_id>:<session_id>` (billable_id), through the same pure
stages: the summed measurements plus `sessions: 1` (when the plan prices `sessions`), the session's
dimensions, in the period of its first event. processed_events is the guard: it is rated once.

Late, duplicate, missing (every case is decided under the customer's lock, from the row):
- an end for a closed session (twice, or after the idle close) changes nothing (`ignored`);
- an event with measurements for a closed session is rated on its own, as a plan without
  sessions would rate it (`rated_alone`; its ledger lines carry the session_id): never lost;
- an end that never comes: the idle sweeper closes the session;
- a redelivered event is in processed_events already: the pipeline skips it as any event.

Idle time: `idle_at` = the enforcer's receive time of the session's newest event (`received_at`;
the event's own timestamp when it has none) + the idle timeout, judged against the rater's wall
clock. Not the client's event time: an agent's clock may be skewed or its reports batched and
back-dated, which would close a live session early (or never). A rater far behind on the bus can
still close a session whose next event waits in the backlog: that event is then rated alone.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import asyncpg
import orjson

from rater.ledger import LEDGER_COLUMNS
from tollgate import tracing
from tollgate.rating.pricing import RatingError
from tollgate.rating.sessions import END, billable_id, billable_measurements
from tollgate.rating.stages.quantities import check_part

log = logging.getLogger(__name__)



def event_time(ts: object, default: float) -> datetime:
    """An event's timestamp (ISO 8601 text or epoch seconds/milliseconds) as a UTC datetime."""
    if isinstance(ts, str):
        try:
            dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            dt = None
        if dt is not None:
            return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    elif isinstance(ts, (int, float)) and not isinstance(ts, bool):
        return datetime.fromtimestamp(ts / 1000 if ts > 1e11 else ts, timezone.utc)
    return datetime.fromtimestamp(default, timezone.utc)


@dataclass(slots=True)
class Session:
    customer_id: str
    session_id: str
    status: str
    key_id: str | None
    first_ts: datetime
    last_ts: datetime
    idle_at: datetime
    period: str
    dimensions: dict
    measurements: dict[str, int]
    event_count: int = 0
    amount_micros: int = 0
    cost_micros: int = 0
    close_reason: str | None = None
    closed_at: datetime | None = None
    billable: str | None = None  # the billable event's id, when closed by this transaction


@dataclass
class Absorbed:
    """What the aggregate stage made of a transaction's events."""
    events: list  # what the pipeline goes on with: unchanged events, parts, billable sessions, in order
    sessions: dict[tuple[str, str], Session] = field(default_factory=dict)  # touched, as they are now
    handled: list[tuple] = field(default_factory=list)  # agent_session_events rows
    billable: list = field(default_factory=list)  # the billable events made (also in `events`)


_READ = """SELECT s.* FROM agent_sessions s JOIN unnest($1::text[], $2::text[]) AS k(c, s)
           ON s.customer_id = k.c AND s.session_id = k.s"""


@tracing.traced("rater.sessions")
async def absorb(conn: asyncpg.Connection, events: Sequence, now: float,
                 make_event: Callable, dead: Callable[[object, Exception], None]) -> Absorbed:
    """Aggregate the session events of `events` (rater.pipeline.Event, sorted by customer and
    batch position; those with e.session set are an opted-in plan's): under the customers' lock
    groups, inside the rating transaction, before pricing.

    make_event(trigger, session, body) builds a billable event (its measurements are set here); dead(event, error)
    dead-letters a part that rating would refuse (an unknown metric, too many units)."""
    keys = sorted({(e.customer.id, e.session) for e in events if e.session is not None})
    out = Absorbed([])
    rows = await conn.fetch(_READ, [k[0] for k in keys], [k[1] for k in keys])
    states = {(r["customer_id"], r["session_id"]): _session(r) for r in rows}
    now_dt = datetime.fromtimestamp(now, timezone.utc)
    for e in events:
        sid = e.session
        if sid is None:
            out.events.append(e)
            continue
        key = (e.customer.id, sid)
        s = states.get(key)
        if e.close is not None:  # the sweeper's or the period close's request, checked again under the lock
            if s is not None and s.status == "open" and (e.close != "idle" or s.idle_at <= now_dt):
                _close(out, e, s, e.close, now_dt, make_event)
            continue
        body = e.body
        ts = event_time(body.get("timestamp") or body.get("received_at"), now)
        if s is not None and s.status == "closed":
            if e.id == s.billable or e.id == billable_id(*key):
                e.aggregate = True  # its own billable event, replayed from the dead letters: rated as it is
                e.session = None
                out.events.append(e)
            elif e.measurements:  # after the close: rated on its own, never lost
                e.session = None
                out.events.append(e)
                out.handled.append((*key, e.id, body.get("event_type"), ts, e.measurements, "rated_alone"))
            else:
                e.part = True
                out.events.append(e)
                out.handled.append((*key, e.id, body.get("event_type"), ts, e.measurements, "ignored"))
            continue
        try:
            check_part(e.customer.plan, e.measurements)
        except RatingError as err:
            dead(e, err)
            continue
        seen = event_time(body.get("received_at") or body.get("timestamp"), now)
        idle_at = seen + timedelta(seconds=e.customer.plan.session_idle_timeout_s)
        props = body.get("properties") if isinstance(body.get("properties"), dict) else {}
        if s is None:
            key_id = body.get("key_id")
            s = states[key] = Session(key[0], sid, "open", key_id if isinstance(key_id, str) and key_id else None,
                                      ts, ts, idle_at, e.period, dict(props), {})
        else:
            s.first_ts, s.last_ts, s.idle_at = min(s.first_ts, ts), max(s.last_ts, ts), max(s.idle_at, idle_at)
            if e.period < s.period:  # a period not invoiced (pipeline._late_events moved those already)
                s.period = e.period
            for name, value in props.items():
                s.dimensions.setdefault(name, value)
        for metric, q in e.measurements.items():
            s.measurements[metric] = s.measurements.get(metric, 0) + q
        s.event_count += 1
        out.sessions[key] = s
        e.part = True
        out.events.append(e)
        out.handled.append((*key, e.id, body.get("event_type"), ts, e.measurements, "aggregated"))
        if body.get("event_type") == END:
            _close(out, e, s, "end", now_dt, make_event)
    return out


def _close(out: Absorbed, trigger, s: Session, reason: str, now: datetime, make_event: Callable) -> None:
    s.status, s.close_reason, s.closed_at = "closed", reason, now
    out.sessions[(s.customer_id, s.session_id)] = s
    body = {"kind": "usage", "id": billable_id(s.customer_id, s.session_id), "customer_id": s.customer_id,
            "key_id": s.key_id, "session_id": s.session_id, "event_type": "agent.session",
            "timestamp": s.first_ts.isoformat().replace("+00:00", "Z"), "properties": s.dimensions,
            "measurements": []}
    ev = make_event(trigger, s, body)  # under the plan of the session's period
    ev.measurements = billable_measurements(ev.customer.plan, s.measurements)
    body["measurements"] += [{"metric": m, "value": q} for m, q in sorted(ev.measurements.items())]
    ev.raw = orjson.dumps(body)
    s.billable = ev.id
    out.events.append(ev)
    out.billable.append(ev)


def _session(r) -> Session:
    return Session(r["customer_id"], r["session_id"], r["status"], r["key_id"], r["first_ts"], r["last_ts"],
                   r["idle_at"], r["period"], orjson.loads(r["dimensions"]), orjson.loads(r["measurements"]),
                   r["event_count"], r["amount_micros"], r["cost_micros"], r["close_reason"], r["closed_at"])


_WRITE = """
INSERT INTO agent_sessions AS a (customer_id, session_id, status, key_id, first_ts, last_ts, idle_at, period,
                                 dimensions, measurements, event_count, amount_micros, cost_micros, close_reason,
                                 closed_at)
SELECT c, s, st, k, f, l, i, p, d::jsonb, m::jsonb, n, amt, cost, r, ca
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[],
            $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::int[], $12::int8[], $13::int8[],
            $14::text[], $15::timestamptz[]) AS x(c, s, st, k, f, l, i, p, d, m, n, amt, cost, r, ca)
ON CONFLICT (customer_id, session_id) DO UPDATE SET
    status = EXCLUDED.status, first_ts = EXCLUDED.first_ts, last_ts = EXCLUDED.last_ts, idle_at = EXCLUDED.idle_at,
    period = EXCLUDED.period, dimensions = EXCLUDED.dimensions, measurements = EXCLUDED.measurements,
    event_count = EXCLUDED.event_count, amount_micros = EXCLUDED.amount_micros, cost_micros = EXCLUDED.cost_micros,
    close_reason = EXCLUDED.close_reason, closed_at = EXCLUDED.closed_at"""

_HANDLED = """
INSERT INTO agent_session_events (customer_id, session_id, event_id, event_type, ts, measurements, handled)
SELECT c, s, e, t, ts, m::jsonb, h
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[])
     AS x(c, s, e, t, ts, m, h)
ON CONFLICT DO NOTHING"""


async def write(conn: asyncpg.Connection, done: Absorbed, spend: dict[str, int], rated: set[str],
                lines: Sequence[tuple]) -> None:
    """Store what absorb decided, in the rating transaction after processed_events took its rows
    (`spend`: the micros of the billable events rated; `rated`: every event id recorded; `lines`:
    the transaction's ledger lines, whose cost_micros of a billable event is its session's cost)."""
    sessions = list(done.sessions.values())
    billable = {s.billable: s for s in sessions if s.billable is not None}
    for s in billable.values():
        s.amount_micros = spend.get(s.billable, 0)
    if billable:
        cost = LEDGER_COLUMNS.index("cost_micros")
        for ln in lines:
            s = billable.get(ln[0])
            if s is not None:
                s.cost_micros += ln[cost]
    if sessions:
        cols = list(zip(*[(s.customer_id, s.session_id, s.status, s.key_id, s.first_ts, s.last_ts, s.idle_at,
                           s.period, orjson.dumps(s.dimensions).decode(), orjson.dumps(s.measurements).decode(),
                           s.event_count, s.amount_micros, s.cost_micros, s.close_reason, s.closed_at)
                          for s in sessions]))
        await conn.execute(_WRITE, *[list(c) for c in cols])
    handled = [(c, s, e, t if isinstance(t, str) else None, ts, orjson.dumps(m).decode(), h)
               for c, s, e, t, ts, m, h in done.handled if e in rated]
    if handled:
        await conn.execute(_HANDLED, *[list(c) for c in zip(*handled)])


async def run_sweeper(pipeline, interval_s: float, stop: asyncio.Event) -> None:
    """Close idle sessions every interval_s (rater.pipeline.Pipeline.close_idle) until `stop`.
    Several raters may sweep at once: each close is decided under the customer's lock, and the
    billable event's processed_events row makes it once."""
    while not stop.is_set():
        try:
            res = await pipeline.close_idle()
            if res.rated:
                log.info("closed %d idle agent sessions", res.rated)
        except Exception:  # noqa: BLE001  (PostgreSQL or Redis trouble: the next sweep retries)
            log.exception("closing idle agent sessions failed")
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except asyncio.TimeoutError:
            pass

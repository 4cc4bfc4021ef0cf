"""Settlement of rated events on Redis: lua/settle.lua, one script run per customer of a call.

The rating pipeline calls `settle` with one item per event, after its ledger transaction, then
`record_promotions` and `rater.holds.mark_settled` with the results, then acks. Each step is
idempotent by event id, so a crash anywhere and the redelivery that follows change nothing twice:
- Redis: `tg:{c}:evt:<event id>` stores the first result; a replay returns it (replayed=True)
  and touches nothing. It lives MARKER_TTL_MS (TOLLGATE_SETTLED_MARKER_TTL_H, default 7 days,
  Kafka's default retention), which must be longer than any redelivery window; each costs ~100
  bytes of Redis memory, i.e. ~8.6 GB per 1,000 events/s sustained over a day. Sizing it is an
  operator's choice; a per-customer settle sequence would remove the per-event cost (not built).
- PostgreSQL: tier_transitions.event_id and holds/hold_events are unique, writes are upserts.

The items of one call are grouped by customer, each customer's in their order: one settle.lua run
settles up to CHUNK events of one customer, each event as if settled alone (its own marker, hold,
debit, spend and promotion, against the tier the earlier ones left). A batch holds several events
per customer (~3 for 1,000 events over 300 customers), and a run's fixed cost (EVALSHA dispatch,
the cfg read, each spend key's PEXPIRE) is paid once per customer instead of once per event.
CHUNK bounds how long one run blocks Redis. All the runs go out as one pipeline (one round trip);
each is atomic and touches one customer's keys only, so this works unchanged on Redis Cluster.
The pipeline is packed by hiredis and read by the connection's parser (rater.redis_raw): ~4 µs
of client CPU per command instead of ~25 through redis-py's pipeline.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from redis.exceptions import NoScriptError

import lua
from rater import redis_raw
from rater.tiers import record_promotions  # noqa: F401  (part of this module's API)
from tollgate.config import settings
from tollgate.keys import CustomerKeys
from tollgate.periods import is_period, period_of

DAY_MS = 24 * 3600 * 1000
MARKER_TTL_MS = settings().settled_marker_ttl_h * 3600 * 1000  # settled-event markers: longer than any redelivery
SPEND_TTL_MS = 70 * DAY_MS  # spend keys: the previous period stays readable for late events
CHUNK = 200  # events of one customer per settle.lua run at most: no single run blocks Redis long


# NamedTuples: immutable, and ~4x cheaper to build than frozen dataclasses (one of each per event).


class SettleItem(NamedTuple):
    customer_id: str
    event_id: str
    period: str  # 'YYYYMM' of the event
    wallet_debit_micros: int  # the part routed to the prepaid wallet (0 for postpaid)
    spend_micros: int  # total charge added to period spend (wallet + invoice parts)
    hold_id: str | None  # the hold to release, if any
    actual_tokens: int  # tokens actually used (for the tokens/min correction)


def item_of(p) -> SettleItem:
    """The SettleItem of a rater.ledger.Processed row (its figures are what settle.lua replays)."""
    return SettleItem(p.customer_id, p.event_id, p.period, p.wallet_micros, p.spend_micros, p.hold_id, p.actual_tokens)


class SettleResult(NamedTuple):
    event_id: str
    replayed: bool  # already settled before: nothing changed now
    hold_released_micros: int
    wallet_after_micros: int
    spend_after_micros: int
    promoted_from: str | None
    promoted_to: str | None


async def settle(redis, items: Sequence[SettleItem], *, now: float | None = None,
                 current_periods: Mapping[str, str] | None = None) -> list[SettleResult]:
    """Settle each item atomically, in order; results in the same order.

    Only an event of its customer's current period may promote the tier; one of an earlier
    period adds to that period's spend and nothing more. The current period is the customer's
    entry in `current_periods` (its plan's billing anchor), else the calendar month of `now`.
    Each customer's items are settled in their order (a script run per up to CHUNK of them);
    customers are independent, so their order among each other does not matter.
    On an error the call raises after the pipeline ran: some items may be settled, and retrying
    the whole batch is safe because settled ones replay.
    """
    for item in items:
        _validate(item)
    if not items:
        return []
    current = period_of(time.time() if now is None else now)
    by_customer: dict[str, list[SettleItem]] = {}  # each customer's items, in item order
    for item in items:
        group = by_customer.get(item.customer_id)
        if group is None:
            by_customer[item.customer_id] = [item]
        else:
            group.append(item)
    calls, owners = [], []  # each run's customer
    for customer_id, group in by_customer.items():
        k = CustomerKeys(customer_id)
        cur = current_periods.get(customer_id, current) if current_periods else current
        if len(group) <= CHUNK:
            calls.append(_call(k, group, cur))
            owners.append(customer_id)
        else:
            for j in range(0, len(group), CHUNK):
                calls.append(_call(k, group[j:j + CHUNK], cur))
                owners.append(customer_id)
    replies = await eval_many(redis, lua.load("settle"), calls)
    for (_, args), reply in zip(calls, replies):
        if len(reply) != (len(args) - 2) // 5:
            raise RuntimeError(f"settle.lua replied {len(reply)} results for {(len(args) - 2) // 5} events")
    if len(calls) == len(items):  # one event per customer: the runs are in item order
        return [_result(item, reply[0]) for item, reply in zip(items, replies)]
    # each customer's replies, in its items' order, dealt back to the items in item order
    by_customer_replies: dict[str, list] = {}
    for customer_id, reply in zip(owners, replies):
        got = by_customer_replies.get(customer_id)
        by_customer_replies[customer_id] = reply if got is None else [*got, *reply]  # > CHUNK events
    dealt = {customer_id: iter(r) for customer_id, r in by_customer_replies.items()}
    return [_result(item, next(dealt[item.customer_id])) for item in items]


def _call(k: CustomerKeys, items: Sequence[SettleItem], current_period: str) -> tuple[list[str], list[str | int]]:
    """One settle.lua run for `items`, all of the customer of `k`, in their order."""
    if len(items) == 1:  # one event of this customer in the batch: no loop
        item = items[0]
        return ([k.cfg, k.wallet, k.held, k.holds, k.hold_expiry, k.spend(item.period), k.settled(item.event_id)],
                [MARKER_TTL_MS, SPEND_TTL_MS, item.hold_id or "", item.wallet_debit_micros, item.spend_micros,
                 item.actual_tokens, 1 if item.period >= current_period else 0])
    keys = [k.cfg, k.wallet, k.held, k.holds, k.hold_expiry]
    args: list[str | int] = [MARKER_TTL_MS, SPEND_TTL_MS]
    for item in items:
        keys += (k.spend(item.period), k.settled(item.event_id))
        args += (item.hold_id or "", item.wallet_debit_micros, item.spend_micros, item.actual_tokens,
                 1 if item.period >= current_period else 0)
    return keys, args


def _validate(item: SettleItem) -> None:
    for name in ("wallet_debit_micros", "spend_micros", "actual_tokens"):
        v = getattr(item, name)
        # bool is an int and float is money gone wrong: both refused before anything is written
        # Money may be negative: a volume tier reprices earlier units, and the route stage sends
        # that credit to the wallet/spend (settle.lua's DECRBY/INCRBY take it as is).
        if type(v) is not int or (v < 0 and name == "actual_tokens"):
            raise ValueError(f"{item.event_id}: {name} must be an int (tokens >= 0), got {v!r}")
    if not is_period(item.period):
        raise ValueError(f"{item.event_id}: period must be 'YYYYMM', got {item.period!r}")
    if not item.customer_id or not item.event_id:
        raise ValueError("customer_id and event_id are required")


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _result(item: SettleItem, reply: list) -> SettleResult:
    replayed, released, wallet, spend, frm, to = reply
    # int() takes the decimal bytes Redis sends as they are; from/to are '' unless promoted
    return SettleResult(item.event_id, bool(int(replayed)), int(released), int(wallet), int(spend),
                        _s(frm) or None, _s(to) or None)


async def eval_many(redis, script: lua.Script, calls: Sequence[tuple[list, list]]) -> list:
    """EVALSHA each (keys, args) in one pipeline; NOSCRIPT (a restarted or new Redis) loads the
    script and re-runs only the calls that failed with it, which never ran."""
    replies = await _pipeline(redis, script.sha, calls)
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        await redis.script_load(script.source)
        again = await _pipeline(redis, script.sha, [calls[i] for i in missing])
        for i, r in zip(missing, again):
            replies[i] = r
    for r in replies:
        if isinstance(r, Exception):
            raise r
    return replies


async def _pipeline(redis, sha: str, calls: Sequence[tuple[list, list]]) -> list:
    """The EVALSHA replies in order, error replies as their exceptions."""
    if redis_raw.supported(redis):
        return await redis_raw.execute(redis, [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls])
    async with redis.pipeline(transaction=False) as p:
        for keys, args in calls:
            p.execute_command("EVALSHA", sha, len(keys), *keys, *args)  # redis-py's cluster pipeline refuses .evalsha()
        return await p.execute(raise_on_error=False)

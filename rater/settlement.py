"""Settlement of rated events on Redis: lua/settle.lua, one script run per customer of a call.

The rating pipeline calls `settle_filling` with one item per event, after its ledger
transaction, then `record_promotions` and `rater.holds.mark_settled` with the results, then
`clear_outbox`, then acks. Each step is idempotent, so a crash anywhere and the redelivery that
follows change nothing twice:
- Redis: the rating transaction gave each of a customer's events the next settle sequence number
  (processed_events.settle_seq); `tg:{c}:settled` is the highest one settled. A number at or
  below it is a replay and touches nothing; the next one is settled; a higher one is a gap (a
  rater died between its commit and its settle while another went on): the missing numbers are
  settled first from their stored figures (`fill`: rater.ledger.processed_by_seq), then the rest.
  Redis memory is one mark per customer, not a marker per event.
- What PostgreSQL must still record of a settlement (the hold released, a promotion) stays in
  the customer's outbox `tg:{c}:settle_out` until `clear_outbox` runs after the record; a replay
  returns it (replayed=True, to_record=True), so a crash between settle and record is repaired by
  the redelivery. A replay whose results were recorded already says so (to_record=False).
- PostgreSQL: tier_transitions.event_id and holds/hold_events are unique, writes are upserts.

The items of one call are grouped by customer, each customer's in sequence order: one settle.lua
run settles up to CHUNK events of one customer, each event as if settled alone (its own hold,
debit, spend and promotion, against the tier the earlier ones left). A batch holds several events
per customer (~3 for 1,000 events over 300 customers), and a run's fixed cost (EVALSHA dispatch,
the cfg read, each spend key's PEXPIRE) is paid once per customer instead of once per event.
CHUNK bounds how long one run blocks Redis. All the runs go out as one pipeline (one round trip);
each is atomic and touches one customer's keys only, all declared in KEYS (the event's tokens/min
bucket too), so this works unchanged on Redis Cluster.
The pipeline is packed by hiredis and read by the connection's parser (tollgate.redis_raw): ~4 µs
of client CPU per command instead of ~25 through redis-py's pipeline.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NamedTuple

import lua
from rater import ledger
from tollgate import redis_raw, tracing
from tollgate.keys import SPEND_TTL_MS, CustomerKeys
from tollgate.periods import is_period, period_of
from tollgate.redis_raw import eval_many

log = logging.getLogger(__name__)

CHUNK = 200  # events of one customer per settle.lua run at most: no single run blocks Redis long
MAX_GAP_ROUNDS = 4  # gap fills per call before giving up (a gap needs one; more means a rebuild raced)


# NamedTuples: immutable, and ~4x cheaper to build than frozen dataclasses (one of each per event).


class SettleItem(NamedTuple):
    customer_id: str
    event_id: str
    period: str  # 'YYYYMM' of the event
    wallet_debit_micros: int  # the part routed to the prepaid wallet (0 for postpaid)
    spend_micros: int  # total charge added to period spend (wallet + invoice parts)
    hold_id: str | None  # the hold to release, if any
    actual_tokens: int  # tokens actually used (for the tokens/min correction)
    key_id: str | None = None  # the API key of the event: its tokens/min bucket is corrected
    seq: int = 0  # the customer's settle sequence number (processed_events.settle_seq), >= 1
    # the levels of the key's path whose period spend the event adds to (tollgate.limits.spend_levels;
    # rater.key_paths fills them in): `key:<id>`, `app:<id>`, `team:<id>`
    levels: tuple[str, ...] = ()


def item_of(p) -> SettleItem:
    """The SettleItem of a rater.ledger.Processed row (its figures are what settle.lua replays)."""
    return SettleItem(p.customer_id, p.event_id, p.period, p.wallet_micros, p.spend_micros, p.hold_id, p.actual_tokens,
                      p.key_id, p.settle_seq)


class SettleResult(NamedTuple):
    event_id: str
    replayed: bool  # already settled before: nothing changed now
    hold_released_micros: int
    wallet_after_micros: int
    spend_after_micros: int
    promoted_from: str | None
    promoted_to: str | None
    # False for a replay whose results PostgreSQL has recorded already (its figures are today's,
    # its hold release and promotion are not repeated): record_promotions and mark_settled skip it
    to_record: bool = True


class SettleGap(RuntimeError):
    """A customer's events settled out of sequence: some numbers below are not settled yet."""


class NotProjected(RuntimeError):
    """Redis has no cfg for the customer (its projection was lost): retry after the rebuild."""


# (customer id, first missing seq, last missing seq) -> the stored items of exactly those numbers
Fill = Callable[[str, int, int], Awaitable[Sequence[SettleItem]]]


def fill_from(conn, paths=None) -> Fill:
    """The Fill that reads a gap's rows from PostgreSQL on `conn` (rater.ledger.processed_by_seq);
    `paths` (rater.key_paths.KeyPaths) gives them their key's levels."""
    async def fill(customer_id: str, first: int, last: int) -> list[SettleItem]:
        items = [item_of(p) for p in await ledger.processed_by_seq(conn, customer_id, first, last)]
        return items if paths is None else await paths.annotate(conn, items)
    return fill


async def settle(redis, items: Sequence[SettleItem], *, now: float | None = None,
                 current_periods: Mapping[str, str] | None = None) -> list[SettleResult]:
    """Settle each item atomically, in its customer's sequence order; results in item order.

    Raises SettleGap when a customer's sequence has a gap (settle_filling fills it), NotProjected
    when Redis has no cfg for a customer. See settle_filling for the rest."""
    _, results = await _settle(redis, items, None, now, current_periods)
    return results


@tracing.traced("rater.settle")
async def settle_filling(redis, items: Sequence[SettleItem], fill: Fill, *, now: float | None = None,
                         current_periods: Mapping[str, str] | None = None
                         ) -> tuple[list[SettleItem], list[SettleResult]]:
    """Settle `items`, and first any earlier sequence numbers of their customers not settled yet
    (`fill` loads them). Returns every item settled (the filled ones, then `items`) and its
    result, in that order: what PostgreSQL must record.

    Only an event of its customer's current period may promote the tier; one of an earlier
    period adds to that period's spend and nothing more. The current period is the customer's
    entry in `current_periods` (its plan's billing anchor), else the calendar month of `now`.
    Customers are independent, so their order among each other does not matter.
    On an error the call raises after the pipeline ran: some items may be settled, and retrying
    the whole batch is safe because settled ones replay."""
    filled, results = await _settle(redis, items, fill, now, current_periods)
    return [it for it, _ in filled] + list(items), [r for _, r in filled] + results


async def _settle(redis, items: Sequence[SettleItem], fill: Fill | None, now: float | None,
                  current_periods: Mapping[str, str] | None
                  ) -> tuple[list[tuple[SettleItem, SettleResult]], list[SettleResult]]:
    for item in items:
        _validate(item)
    if not items:
        return [], []
    current = period_of(time.time() if now is None else now)
    # each customer's (position in items, item), in sequence order (-1: an item filled in)
    pending: dict[str, list[tuple[int, SettleItem]]] = {}
    for i, item in enumerate(items):
        group = pending.get(item.customer_id)
        if group is None:
            pending[item.customer_id] = [(i, item)]
        else:
            group.append((i, item))
    for group in pending.values():
        if len(group) > 1:
            group.sort(key=lambda x: x[1].seq)
    results: list[SettleResult | None] = [None] * len(items)
    filled: list[tuple[SettleItem, SettleResult]] = []
    script = lua.load("settle")
    for _ in range(MAX_GAP_ROUNDS + 1):
        calls, runs = [], []  # each run's (customer, its part of the group)
        for customer_id, group in pending.items():
            k = CustomerKeys(customer_id)
            cur = current_periods.get(customer_id, current) if current_periods else current
            for j in range(0, len(group), CHUNK):
                part = group[j:j + CHUNK]
                calls.append(_call(k, [it for _, it in part], cur))
                runs.append((customer_id, part))
        replies = await eval_many(redis, script, calls)
        gaps: dict[str, tuple[int, list[tuple[int, SettleItem]]]] = {}  # customer -> (mark, unsettled)
        for (customer_id, part), reply in zip(runs, replies):
            done, mark = int(reply[0]), int(reply[1])
            if done < 0:
                raise NotProjected(f"Redis has no cfg for customer {customer_id}: its projection must be rebuilt")
            if len(reply) != 2 + done or done > len(part):
                raise RuntimeError(f"settle.lua replied {len(reply) - 2} results for {done} of {len(part)} events")
            for (i, item), r in zip(part, reply[2:]):
                res = _result(item, r)
                if i < 0:
                    filled.append((item, res))
                else:
                    results[i] = res
            if done < len(part):  # a gap; a later run of the customer in this pipeline stops too
                got = gaps.get(customer_id)
                gaps[customer_id] = (mark, part[done:]) if got is None else (got[0], got[1] + part[done:])
        if not gaps:
            return filled, results  # type: ignore[return-value]
        pending = {}
        for customer_id, (mark, rest) in gaps.items():
            first = rest[0][1].seq
            if fill is None:
                raise SettleGap(f"customer {customer_id}: sequence {first} after {mark} settled")
            missing = sorted(await fill(customer_id, mark + 1, first - 1), key=lambda it: it.seq)
            if [it.seq for it in missing] != list(range(mark + 1, first)):
                raise SettleGap(f"customer {customer_id}: numbers {mark + 1}..{first - 1} are not all recorded")
            for it in missing:
                _validate(it)
            log.warning("settling %d events of customer %s (numbers %d-%d) that an earlier rater committed and did"
                        " not settle", len(missing), customer_id, mark + 1, first - 1)
            pending[customer_id] = [(-1, it) for it in missing] + rest
    raise SettleGap(f"gaps left after {MAX_GAP_ROUNDS} fills: {sorted(pending)}")


def _call(k: CustomerKeys, items: Sequence[SettleItem], current_period: str) -> tuple[list[str], list[str | int]]:
    """One settle.lua run for `items`, all of the customer of `k`, in sequence order."""
    keys = [k.cfg, k.wallet, k.held, k.holds, k.hold_expiry, k.settled, k.settle_outbox, k.inflight]
    args: list[str | int] = [SPEND_TTL_MS]
    for item in items:
        keys += (k.spend(item.period), k.rate_tokens(item.key_id) if item.key_id else k.cfg)
        keys += (k.level_spend(level, item.period) for level in item.levels)
        args += (item.seq, item.hold_id or "", item.wallet_debit_micros, item.spend_micros, item.actual_tokens,
                 1 if item.period >= current_period else 0, len(item.levels))
    return keys, args


async def clear_outbox(redis, items: Sequence[SettleItem], results: Sequence[SettleResult]) -> None:
    """Once PostgreSQL has recorded `results`: take them out of their customers' outboxes
    (settle.lua keeps the result of each event that named a hold or promoted)."""
    fields: dict[str, list[int]] = {}
    for it, r in zip(items, results, strict=True):
        if r.to_record and (it.hold_id or r.promoted_to):
            fields.setdefault(it.customer_id, []).append(it.seq)
    if not fields:
        return
    await redis_raw.run(redis, [("HDEL", CustomerKeys(c).settle_outbox, *seqs) for c, seqs in fields.items()])


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
    if type(item.seq) is not int or item.seq < 1:
        raise ValueError(f"{item.event_id}: seq (its customer's settle sequence number) must be an int >= 1, got {item.seq!r}")


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _result(item: SettleItem, reply: list) -> SettleResult:
    replayed, released, wallet, spend, frm, to = reply
    replayed = int(replayed)  # 0 settled now, 1 a replay still to record, 2 a replay recorded already
    # int() takes the decimal bytes Redis sends as they are; from/to are '' unless promoted
    return SettleResult(item.event_id, replayed != 0, int(released), int(wallet), int(spend),
                        _s(frm) or None, _s(to) or None, replayed != 2)

"""API key -> customer, key, plan: an in-process cache in front of `tg:key:<hash>` and `tg:plan:<id>`.

A hit costs no Redis call. A miss costs one round trip (the key record and the projection marker,
read together), two when the plan is not cached either. A key is unknown only when its record is
missing from a complete projection (the marker is there); with the marker missing too, Redis has
lost its projection (restarted empty, rebuild under way) and the lookup is a Failure
("not_projected"): the caller fails open, never 401, until the rater's rebuild is done. Unknown keys
are cached too, briefly, so a flood of bad keys is answered 401 without Redis. The control plane
announces changes on `tg:invalidate`; a listener evicts what changed, and after any gap in the
subscription (e.g. a Redis outage) drops the whole cache, since messages may have been missed.
While Redis cannot be reached an expired entry is still served: knowing the customer lets the
fail-open event be billed.
"""
from __future__ import annotations

import asyncio
import logging
import time

import orjson
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from enforcer import metrics
from enforcer.failopen import Guard
from enforcer.rediswire import Failure, ReplyError
from tollgate.keys import INVALIDATION_CHANNEL, PROJECTION_MARKER, CustomerKeys, api_key_record, plan_record
from tollgate.plans import Plan, PlanError, parse_plan
from tollgate.redis_client import connect

log = logging.getLogger("tollgate.enforcer.keycache")

MAX_UNKNOWN = 100_000  # unknown key hashes remembered (negative cache) at most
UNKNOWN = "unknown"
REDIS_ERROR = Failure("redis_error")  # an error reply to a lookup: the caller fails open
NOT_PROJECTED = Failure("not_projected")  # no record and no projection marker: Redis lost its data


class KeyInfo:
    """One API key, with the Redis key names check.lua needs precomputed, and its path in the
    billing hierarchy (app, its kind, team: fixed when the key was created)."""

    __slots__ = ("key_hash", "customer_id", "key_id", "plan_id", "plan", "revoked", "expires",
                 "fixed_keys", "spend_prefix", "req_prefix", "rate_keys", "limits", "app_id", "app_kind", "team_id",
                 "level_keys", "level_spend_prefixes", "path_argv")

    def __init__(self, key_hash: str, customer_id: str, key_id: str, plan: Plan | None, plan_id: str, revoked: bool,
                 expires: float, app_id: str = "", app_kind: str = "", team_id: str = ""):
        self.key_hash, self.customer_id, self.key_id = key_hash, customer_id, key_id
        self.plan, self.plan_id, self.revoked, self.expires = plan, plan_id, revoked, expires
        self.app_id, self.app_kind, self.team_id = app_id, app_kind or "app", team_id
        k = CustomerKeys(customer_id)
        self.fixed_keys = (k.cfg, k.wallet, k.held, k.holds, k.hold_expiry)
        self.spend_prefix = k.spend("")
        self.req_prefix = k.request("")
        self.rate_keys = (k.rate_requests(key_id), k.rate_tokens(key_id))
        # check.lua's KEYS 10-21 (see its header): the spend keys end with the period, added per check
        key_level, app_level, team_level = f"key:{key_id}", f"app:{app_id}", f"team:{team_id}"
        self.level_keys = (k.limits, k.guard, k.inflight)
        customer_rates = (k.level_rate_requests("customer"), k.level_rate_tokens("customer"))
        if app_id:
            self.level_spend_prefixes = (k.level_spend(key_level, ""), customer_rates,
                                         (k.level_rate_requests(app_level), k.level_rate_tokens(app_level)),
                                         k.level_spend(app_level, ""),
                                         (k.level_rate_requests(team_level), k.level_rate_tokens(team_level)),
                                         k.level_spend(team_level, ""))
        else:
            self.level_spend_prefixes = (k.level_spend(key_level, ""), customer_rates)
        self.path_argv = (app_id, self.app_kind if app_id else "", team_id)  # ARGV 10-12
        self.limits = None  # (requests/min, tokens/min) last seen: the headers of fail-open answers

    def check_keys(self, period: str, request_id: str) -> tuple[str, ...]:
        """check.lua's KEYS for one check of this key in billing period `period`."""
        p = self.level_spend_prefixes
        keys = (*self.fixed_keys, self.spend_prefix + period, self.req_prefix + request_id, *self.rate_keys,
                *self.level_keys, p[0] + period, *p[1])
        if self.app_id:
            keys += (*p[2], p[3] + period, *p[4], p[5] + period)
        return keys


class KeyCache:
    def __init__(self, guard: Guard, ttl: float, negative_ttl: float = 5.0, clock=time.monotonic):
        self.guard = guard
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.clock = clock
        self._keys: dict[str, KeyInfo] = {}
        self._unknown: dict[str, float] = {}
        self._plans: dict[str, Plan] = {}
        self._loading: dict[str, asyncio.Task] = {}
        self._generation = 0  # bumped by every eviction: a lookup that raced one is not cached

    def _remember_unknown(self, key_hash: str) -> None:
        """Bounded: a flood of random bad keys must not grow the process without limit."""
        now = self.clock()
        if len(self._unknown) >= MAX_UNKNOWN:
            self._unknown = {h: exp for h, exp in self._unknown.items() if exp > now}
            if len(self._unknown) >= MAX_UNKNOWN:
                self._unknown.clear()  # all live: forgetting them costs a lookup each, no more
        self._unknown[key_hash] = now + self.negative_ttl

    async def resolve(self, key_hash: str) -> KeyInfo | str | Failure:
        """KeyInfo (check `.revoked`), UNKNOWN, or a Failure when Redis did not answer."""
        info = self._keys.get(key_hash)
        now = self.clock()
        if info is not None and info.expires > now:
            return info
        exp = self._unknown.get(key_hash)
        if exp is not None and exp > now:
            return UNKNOWN
        task = self._loading.get(key_hash)
        if task is None:  # one lookup per key however many requests wait for it
            task = self._loading[key_hash] = asyncio.ensure_future(self._load(key_hash))
            task.add_done_callback(lambda _: self._loading.pop(key_hash, None))
        found = await asyncio.shield(task)
        if type(found) is Failure and info is not None:
            return info  # stale, but Redis is away: still know whose key it is
        return found

    async def _load(self, key_hash: str) -> KeyInfo | str | Failure:
        metrics.KEY_CACHE_MISSES.inc()
        generation = self._generation
        # Both in one round trip (on a cluster they may live on different nodes: two calls anyway).
        rec, projected = await asyncio.gather(self.guard.call(("HGETALL", api_key_record(key_hash))),
                                              self.guard.call(("EXISTS", PROJECTION_MARKER)))
        if type(rec) is Failure:
            return rec  # no answer (deadline, connect, breaker_open): the caller fails open
        if type(rec) is ReplyError:
            return REDIS_ERROR
        if not rec:
            if type(projected) is Failure:
                return projected
            if type(projected) is ReplyError:
                return REDIS_ERROR
            if not projected:  # not "unknown": Redis does not know any key yet. Not cached.
                return NOT_PROJECTED
            if generation == self._generation:
                self._remember_unknown(key_hash)
            self._keys.pop(key_hash, None)
            return UNKNOWN
        f = dict(zip(rec[::2], rec[1::2]))
        plan = await self._plan(f.get("plan_id", ""))
        if type(plan) is Failure:
            return plan
        info = KeyInfo(key_hash, f.get("customer_id", ""), f.get("key_id", ""), plan, f.get("plan_id", ""),
                       f.get("status") != "active", self.clock() + self.ttl,
                       f.get("app_id", ""), f.get("app_kind", ""), f.get("team_id", ""))
        if not info.customer_id or not info.key_id:
            log.error("api key record %s lacks customer_id/key_id", key_hash[:12])
            info.plan = None  # treated as not provisioned
        if generation == self._generation:
            self._keys[key_hash] = info
            self._unknown.pop(key_hash, None)
        return info

    async def _plan(self, plan_id: str) -> Plan | None | Failure:
        plan = self._plans.get(plan_id)
        if plan is not None:
            return plan
        doc = await self.guard.call(("GET", plan_record(plan_id)))
        if type(doc) is Failure:
            return doc
        if type(doc) is ReplyError:
            return REDIS_ERROR
        if doc is None:
            log.error("plan %s is not in Redis (control-plane projection missing)", plan_id)
            return None
        try:
            plan = parse_plan(orjson.loads(doc))
        except (orjson.JSONDecodeError, PlanError) as e:
            log.error("plan %s in Redis is invalid: %s", plan_id, e)
            return None
        self._plans[plan_id] = plan
        return plan

    # ------------------------------------------------------------------ invalidation

    def invalidate(self, message: str) -> None:
        """"key:<hash>", "plan:<id>", "customer:<id>"; anything else (a rebuild's
        "projection:<generation>") drops the whole cache."""
        kind, _, ident = message.partition(":")
        self._generation += 1
        if kind == "key":
            self._keys.pop(ident, None)
            self._unknown.pop(ident, None)
        elif kind == "plan":
            self._plans.pop(ident, None)
            for h in [h for h, i in self._keys.items() if i.plan_id == ident]:
                del self._keys[h]
        elif kind == "customer":
            for h in [h for h, i in self._keys.items() if i.customer_id == ident]:
                del self._keys[h]
        else:
            self.clear()

    def clear(self) -> None:
        self._generation += 1
        self._keys.clear()
        self._unknown.clear()
        self._plans.clear()

    async def listen(self, redis_url: str) -> None:
        """Background task: apply `tg:invalidate` messages; resubscribe after a gap and start afresh."""
        wait = 0.1
        while True:
            client = connect(redis_url, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await asyncio.wait_for(client.initialize(), 2.0)  # a RedisCluster reads its topology first
                await asyncio.wait_for(pubsub.subscribe(INVALIDATION_CHANNEL), 2.0)
                self.clear()  # whatever changed while we were not listening is now re-read
                wait = 0.1
                last_heard = time.monotonic()
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is not None:
                        last_heard = time.monotonic()
                        if msg["type"] == "message":
                            self.invalidate(msg["data"].decode())
                    elif time.monotonic() - last_heard > 12.0:
                        raise ConnectionError("no answer to PING: the link is dead")
                    else:  # a silent channel or a dead link? the pong tells
                        await asyncio.wait_for(pubsub.ping(), 2.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  (any failure: reconnect and resubscribe)
                log.info("invalidation listener: %s: %s; resubscribing", type(e).__name__, e)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:  # noqa: BLE001
                    pass
            await asyncio.sleep(wait)
            wait = min(wait * 2, 1.0)

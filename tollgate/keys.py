"""Redis key names: the one place they are spelt.

Every key of a customer carries the customer id as hash tag, `tg:{cust_42}:wallet`, so all keys a
script touches live in one Redis Cluster slot and the scripts run unchanged on a cluster.
API-key and plan records are looked up before the customer is known: they are untagged and read
only on an in-process cache miss, never in the same script as customer keys.
"""
from __future__ import annotations

import hashlib
import re

PREFIX = "tg"
INVALIDATION_CHANNEL = "tg:invalidate"  # pub/sub: "key:<hash>", "plan:<id>", "customer:<id>", "projection:<gen>"
EVENTS_STREAM = "tg:events"  # the Redis Streams bus
# The stream's incarnation (set once per stream by lua/bus_publish.lua); its hash tag is the
# stream's name, so both live in one cluster slot and one script can touch both.
EVENTS_EPOCH = "{tg:events}:epoch"
DAY_MS = 24 * 3600 * 1000
SPEND_TTL_MS = 70 * DAY_MS  # spend keys (settle.lua, rebuild): the previous period stays readable for late events


def events_producer(producer_id: str) -> str:
    """A producer's high-water mark on the stream (lua/bus_publish.lua): the id of its latest entry."""
    return f"{{{EVENTS_STREAM}}}:producer:{producer_id}"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# The projection marker: present only once a complete rebuild has written everything the hot path
# reads (string: the rebuild's generation). A Redis that lost its data lost the marker too, so the
# enforcer can tell "no such key" (record missing, marker present) from "not projected yet".
# Written by control.projection.rebuild only, never by the control plane's per-customer writes. The rebuild
# first sets PROJECTION_BUILDING to its generation and turns it into the marker with one script
# at the end, so a Redis that restarted mid-rebuild (losing the first half) gets no marker.
# Both share the hash tag "@projection" ('@' is in no customer id), i.e. one cluster slot.
PROJECTION_MARKER = "tg:{@projection}"
PROJECTION_BUILDING = "tg:{@projection}:building"


def api_key_hash(api_key: str) -> str:
    """Only this hash is ever stored (PostgreSQL and Redis); the key is shown once."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def api_key_record(key_hash: str) -> str:
    # hash: customer_id, key_id, plan_id, status; and the key's path when it has an app:
    # app_id, app_kind (app|agent), team_id
    return f"{PREFIX}:key:{key_hash}"


def plan_record(plan_id: str) -> str:
    return f"{PREFIX}:plan:{plan_id}"  # string: the validated plan document as JSON


def plan_estimate_record(plan_id: str) -> str:
    # hash: a plan's hold estimate in a form Lua reads without the plan engine, for gateways that
    # run check.lua themselves (control.projection.gateway_estimate)
    return f"{PREFIX}:plan:{plan_id}:estimate"


class CustomerKeys:
    """All keys of one customer; `period` is the billing period id, e.g. '202611'."""

    __slots__ = ("tag",)

    def __init__(self, customer_id: str):
        self.tag = f"{PREFIX}:{{{customer_id}}}"

    @property
    def cfg(self) -> str:  # hash: mode, tier, tiers(json), rpm.<tier>, tpm.<tier>, cap.<tier>, plan
        return f"{self.tag}:cfg"

    @property
    def wallet(self) -> str:  # int micros: prepaid balance
        return f"{self.tag}:wallet"

    @property
    def held(self) -> str:  # int micros: sum of open holds
        return f"{self.tag}:held"

    @property
    def holds(self) -> str:  # hash hold_id -> amount micros
        return f"{self.tag}:holds"

    @property
    def hold_expiry(self) -> str:  # zset hold_id -> expiry (ms since epoch), read by the sweeper
        return f"{self.tag}:hold_exp"

    @property
    def hold_released(self) -> str:  # hash hold_id -> "expiry ms:hold": expired, not yet in PostgreSQL
        return f"{self.tag}:hold_released"

    def spend(self, period: str) -> str:  # int micros: period-to-date spend
        return f"{self.tag}:spend:{period}"

    def rate_requests(self, key_id: str) -> str:  # GCRA theoretical arrival time (ms)
        return f"{self.tag}:rl:{key_id}:r"

    def rate_tokens(self, key_id: str) -> str:
        return f"{self.tag}:rl:{key_id}:t"

    def request(self, request_id: str) -> str:  # idempotency: the hold id of the request's ALLOW
        return f"{self.tag}:req:{request_id}"

    @property
    def settled(self) -> str:  # int: the highest settle sequence number settle.lua has settled
        return f"{self.tag}:settled"

    @property
    def settle_outbox(self) -> str:  # hash seq -> settle.lua's result, until PostgreSQL recorded it
        return f"{self.tag}:settle_out"

    def topup(self, topup_id: str) -> str:  # idempotency of wallet top-ups
        return f"{self.tag}:topup:{topup_id}"

    # ---- the billing hierarchy (issue 10). `level` is tollgate.limits.level_field:
    # `customer`, `team:<id>`, `app:<id>`, `key:<id>`.

    @property
    def limits(self) -> str:  # hash level -> "rpm:tpm:cap micros:max in flight" (tollgate.limits.encode)
        return f"{self.tag}:limits"

    @property
    def guard(self) -> str:  # hash level (or `session:<id>`) -> the Margin Guard rule that tripped
        return f"{self.tag}:guard"

    @property
    def inflight(self) -> str:  # hash level -> open holds counted; `held:<level>` -> their micros
        return f"{self.tag}:inflight"

    def level_rate_requests(self, level: str) -> str:  # GCRA TAT of a level above the key
        return f"{self.tag}:lv:{level}:r"

    def level_rate_tokens(self, level: str) -> str:
        return f"{self.tag}:lv:{level}:t"

    def level_spend(self, level: str, period: str) -> str:  # int micros: the level's period-to-date spend
        return f"{self.tag}:lv:{level}:s:{period}"

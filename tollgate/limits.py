"""Limits of one level of the billing hierarchy (key, app or agent, team, customer).

The same object at every level, every field optional:
`{"requests_per_minute": int, "tokens_per_minute": int, "spend_cap": "decimal string", "max_in_flight": int}`.
Explicit level limits are absolute (no tier multiplier); `spend_cap` is per billing period. In
Redis (`CustomerKeys.limits`, field = the level, see `level_field`) one level's limits are one
string `rpm:tpm:cap micros:max in flight`, '' where a limit is not set: check.lua parses it with
one string.match, and a customer without level limits has no such hash at all.
"""
from __future__ import annotations

from typing import Any

import orjson

from tollgate.errors import FieldError
from tollgate.money import MoneyError, format_micros, parse_decimal, to_micros

FIELDS = ("requests_per_minute", "tokens_per_minute", "spend_cap", "max_in_flight")
MAX_RATE = 10**12  # per minute: far above any real limit, far below where Lua's doubles stop being exact
MAX_CAP_MICROS = 10**15  # 1e9 currency units: exact as a Lua number
LEVEL_KINDS = ("key", "app", "agent", "team", "customer")


class LimitsError(FieldError):
    pass


def parse_limits(value: Any, field: str = "limits", *, allow_spend_cap: bool = True) -> dict[str, Any]:
    """The validated limits object (canonical: spend_cap as a decimal string); LimitsError naming
    the field (`limits.max_in_flight`) otherwise. None is no limits ({})."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LimitsError(field, "must be an object with requests_per_minute, tokens_per_minute, spend_cap, max_in_flight")
    out: dict[str, Any] = {}
    for name, v in value.items():
        f = f"{field}.{name}"
        if name not in FIELDS:
            raise LimitsError(f, f"unknown limit; expected {', '.join(FIELDS)}")
        if v is None:
            continue
        if name == "spend_cap":
            if not allow_spend_cap:
                raise LimitsError(f, "the customer's spend cap is its `spend_cap` (or the plan's), not a level limit")
            try:
                d = parse_decimal(v, f)
            except MoneyError as e:
                raise LimitsError(f, str(e).split(": ", 1)[1]) from None
            if d < 0:
                raise LimitsError(f, "must be >= 0")
            if (d * 1_000_000) % 1:
                raise LimitsError(f, "at most 6 decimal places (micros)")
            if to_micros(d) > MAX_CAP_MICROS:
                raise LimitsError(f, f"must be at most {MAX_CAP_MICROS // 1_000_000}")
            out[name] = format_micros(to_micros(d))
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise LimitsError(f, "must be a whole number")
        if name == "max_in_flight" and v < 1:
            raise LimitsError(f, "must be at least 1")
        if v < 0:
            raise LimitsError(f, "must not be negative")
        if v > MAX_RATE:
            raise LimitsError(f, f"must be at most {MAX_RATE}")
        out[name] = v
    return out


def cap_micros(limits: dict[str, Any]) -> int | None:
    cap = limits.get("spend_cap")
    return None if cap is None else to_micros(cap)


def encode(limits: dict[str, Any]) -> str | None:
    """The Redis value of a level's limits, None when it has none (no field is written)."""
    if not limits:
        return None
    cap = cap_micros(limits)
    parts = (limits.get("requests_per_minute"), limits.get("tokens_per_minute"), cap, limits.get("max_in_flight"))
    return ":".join("" if p is None else str(p) for p in parts)


def encoded_cap(value: str | bytes | None) -> int | None:
    """The spend cap (micros) of a level's Redis value (`encode`), None when it has none."""
    if not value:
        return None
    cap = (value.decode() if isinstance(value, bytes) else value).split(":")[2]
    return int(cap) if cap else None


def tracks_holds(limits: dict[str, Any]) -> bool:
    """A level whose open holds are counted (in-flight count, held micros): it has a concurrency
    limit or a spend cap (whose check counts what is held, as the customer's cap does)."""
    return "max_in_flight" in limits or "spend_cap" in limits


def level_field(kind: str, ident: str | None = None) -> str:
    """The field naming a level in the limits, guard and in-flight hashes and in level key names:
    `customer`, `team:<id>`, `app:<id>` (apps and agents alike), `key:<id>`."""
    if kind == "customer":
        return "customer"
    return f"{'app' if kind == 'agent' else kind}:{ident}"


def spend_levels(key_id: str, app_id: str | None, team_id: str | None, key_limits: dict[str, Any]) -> tuple[str, ...]:
    """The levels whose period spend an event of this key adds to (settle.lua; the rebuild sums
    the same from PostgreSQL): the key, its app and team when it has an app; a key without an app
    only when it has a spend cap of its own. The customer's spend is always counted (its own key)."""
    if app_id:
        return (level_field("key", key_id), level_field("app", app_id), level_field("team", team_id))
    return (level_field("key", key_id),) if "spend_cap" in key_limits else ()


def loads(value: Any) -> dict[str, Any]:
    """A stored limits column (jsonb: a dict, or its JSON text from asyncpg) as a dict."""
    if value is None:
        return {}
    if isinstance(value, (str, bytes)):
        return orjson.loads(value)
    return dict(value)

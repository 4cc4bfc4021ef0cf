"""Prometheus metrics of the enforcer.

With several workers, PROMETHEUS_MULTIPROC_DIR (set by `tollgate-enforcer --workers N`) makes
every worker write its samples there and /metrics sums them.
"""
from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REASONS = ("ok", "rate_limited_requests", "rate_limited_tokens", "insufficient_balance", "spend_cap", "suspended",
           "concurrency_limited", "margin_guard", "fail_open")

DECISIONS = Counter("tollgate_decisions_total", "Decisions of /v1/check by reason", ["decision", "reason"])
CHECK_LATENCY = Histogram(
    "tollgate_check_latency_seconds", "Time in the enforcer per /v1/check, body read to response",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
FAIL_OPEN = Counter(
    "tollgate_fail_open_total", "Checks allowed without a decision against Redis, by cause",
    ["cause"],  # deadline, slow, expired, connect, disconnected, breaker_open, redis_error, script_error, not_provisioned, internal
)
SCRIPT_ERRORS = Counter("tollgate_script_errors_total", "Error replies to check.lua (after the NOSCRIPT retry)")
NOSCRIPT = Counter("tollgate_noscript_reloads_total", "check.lua reloaded after a NOSCRIPT reply")
UNAUTHORIZED = Counter("tollgate_unauthorized_total", "Checks and usage reports refused with 401", ["why"])
BAD_REQUESTS = Counter("tollgate_bad_requests_total", "Requests refused as malformed", ["status"])
KEY_CACHE_MISSES = Counter("tollgate_key_cache_misses_total", "API key lookups that went to Redis")
SPOOL_DEPTH = Gauge("tollgate_spool_depth", "Events in the local spool waiting for the bus", multiprocess_mode="livesum")
EVENTS_PUBLISHED = Counter("tollgate_events_total", "Events handed to the bus, by outcome", ["outcome"])  # bus, spooled, lost
USAGE_ACCEPTED = Counter("tollgate_usage_accepted_total", "Usage events answered 202, by where they went", ["to"])
BREAKER_OPEN = Gauge("tollgate_breaker_open", "1 while the Redis circuit breaker is open", multiprocess_mode="max")
BREAKER_TRIPS = Counter("tollgate_breaker_trips_total", "Times the Redis circuit breaker opened")
LATE_ALLOWS = Counter("tollgate_late_allows_total", "check.lua ALLOW replies that came after the check failed open")
LOST_CHECKS = Counter("tollgate_lost_checks_total", "check.lua calls written on a connection lost before their reply")
HOLDS_UNDONE = Counter("tollgate_holds_undone_total", "Holds no answer carried, released by undo_hold.lua")
UNDO_FAILED = Counter("tollgate_hold_undo_failures_total", "undo_hold.lua calls that got no reply after retries")
SHED = Counter("tollgate_shed_total", "Checks answered 503 at once because the process was overloaded")
EVENT_LOOP_LAG = Gauge("tollgate_event_loop_lag_seconds", "How late the load shedder's last 5 ms timer fired",
                       multiprocess_mode="max")


def decision_counter(decision: str, reason: str):
    return DECISIONS.labels(decision, reason)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess  # noqa: PLC0415

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST

"""Prometheus metrics of the rater, served on their own HTTP port (TOLLGATE_RATER_METRICS_PORT).

Cheap on the hot path: counters move once per batch (by the batch's counts), never per event;
the settle delay is one observation per batch (its oldest event); consumer lag is read from the
bus by a background probe every LAG_PROBE_S, not by the consume loop.
docs/ARCHITECTURE.md ("Metrics") says what each one means.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter as Tally
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

LAG_PROBE_S = 5.0  # between reads of the consumer lag from the bus (TOLLGATE_RATER_LAG_PROBE_S)

MESSAGES = Counter("tollgate_rater_messages_total", "Bus messages consumed and acknowledged (batches that went through)")
EVENTS = Counter("tollgate_rater_events_total", "Events of acknowledged batches, by outcome", ["outcome"])
# rated (usage priced now), replayed (priced by an earlier delivery or attempt: settled again only),
# duplicate (the same id twice in one batch), fail_open, decision, dead (dead-lettered)
SPEND = Counter("tollgate_rater_spend_micros_total", "Micros charged by the events rated now (price, after discount and tax)")
BATCHES = Counter("tollgate_rater_batches_total", "Batches rated and acknowledged")
BATCH_FAILURES = Counter("tollgate_rater_batch_failures_total",
                         "Attempts to rate a batch that raised (PostgreSQL or Redis trouble, projection missing): retried")
BATCH_SECONDS = Histogram(
    "tollgate_rater_batch_seconds", "Time to rate, commit and settle one batch (poll returned -> acknowledged), retries included",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SETTLE_DELAY = Histogram(
    "tollgate_rater_settle_delay_seconds",
    "Per batch: the enforcer's receive time (received_at) of the batch's oldest event -> settled and acknowledged",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
)
DEAD_LETTERS = Counter("tollgate_rater_dead_letters_total", "Events recorded as dead letters, by reason", ["reason"])
HOLDS_EXPIRED = Counter("tollgate_rater_holds_expired_total", "Holds past their expiry released by the hold sweeper")
HOLD_SWEEPS = Counter("tollgate_rater_hold_sweeps_total", "Hold sweeps, by outcome (ok, error)", ["outcome"])
ALERTS_RAISED = Counter("tollgate_rater_alerts_raised_total", "Alerts raised by the rater (new rows), by kind", ["kind"])
CONSUMER_LAG = Gauge("tollgate_rater_consumer_lag",
                     "Messages of the consumer group not yet acknowledged, per topic/stream and partition",
                     ["topic", "partition"])
LAG_PROBE_FAILURES = Counter("tollgate_rater_lag_probe_failures_total", "Reads of the consumer lag from the bus that failed")


def serve(port: int, host: str = "0.0.0.0") -> None:
    """/metrics on host:port, from a daemon thread (the event loop never serves it)."""
    start_http_server(port, host)
    log.info("rater metrics on http://%s:%d/metrics", host, port)


def port_from_env() -> int:
    return int(os.environ.get("TOLLGATE_RATER_METRICS_PORT") or 0)


def host_from_env() -> str:
    return os.environ.get("TOLLGATE_RATER_METRICS_HOST") or "0.0.0.0"


def lag_probe_s() -> float:
    return float(os.environ.get("TOLLGATE_RATER_LAG_PROBE_S") or LAG_PROBE_S)


def batch_done(messages: int, res, started: float) -> None:
    """After a batch is acknowledged: its counts, duration and settle delay (res: BatchResult)."""
    now = time.time()
    MESSAGES.inc(messages)
    BATCHES.inc()
    for outcome, n in (("rated", res.rated), ("replayed", res.replayed), ("duplicate", res.duplicates),
                       ("fail_open", res.fail_open), ("decision", res.decisions), ("dead", len(res.dead))):
        if n:
            EVENTS.labels(outcome).inc(n)
    if res.spend_micros > 0:
        SPEND.inc(res.spend_micros)
    BATCH_SECONDS.observe(time.monotonic() - started)
    first = res.first_received
    if first:
        try:
            received = datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return
        SETTLE_DELAY.observe(max(0.0, now - received))


def oldest_received(bodies: Iterable[dict]) -> str | None:
    """The earliest `received_at` (the enforcer's ISO 8601 UTC text, fixed width: compared as
    text) of decoded events; None when none has one."""
    first = None
    for b in bodies:
        r = b.get("received_at")
        if type(r) is str and (first is None or r < first):
            first = r
    return first


def dead_lettered(reasons: Iterable[str]) -> None:
    for reason, n in Tally(reasons).items():
        DEAD_LETTERS.labels(reason).inc(n)


def alerts_raised(kinds: Iterable[str]) -> None:
    for kind, n in Tally(kinds).items():
        ALERTS_RAISED.labels(kind).inc(n)


async def run_lag_probe(consumer, stop: asyncio.Event, interval_s: float) -> None:
    """Every interval_s: consumer.lag() -> CONSUMER_LAG (partitions no longer reported are dropped)."""
    shown: set[tuple[str, str]] = set()
    while not stop.is_set():
        try:
            lags = await consumer.lag()
        except Exception as e:  # the bus is away: the consume loop says so too; try again next round
            LAG_PROBE_FAILURES.inc()
            log.warning("reading the consumer lag failed: %r", e)
        else:
            for key, n in lags.items():
                CONSUMER_LAG.labels(*key).set(n)
            for gone in shown - lags.keys():
                CONSUMER_LAG.remove(*gone)
            shown = set(lags)
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except asyncio.TimeoutError:
            pass

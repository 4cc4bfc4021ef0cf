"""What the rater's metrics (rater.metrics) cost per event: the per-batch calls as the rater makes
them, against a per-event settle-delay histogram (parse each received_at, observe each).

    .venv/bin/python -m loadtest.bench_rater_metrics [--batch 2000] [--rounds 200]

Prints µs per event for each; the rater rates ~17k events/s (BENCHMARKS.md), so 1 µs per event
is ~1.7 % of a core.
"""
from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta, timezone

from prometheus_client import Histogram

from rater import metrics
from rater.pipeline import BatchResult

PER_EVENT = Histogram("bench_settle_delay_per_event_seconds", "the alternative: one observation per event",
                      buckets=metrics.SETTLE_DELAY._upper_bounds[:-1])


def bodies(n: int) -> list[dict]:
    t0 = datetime.now(timezone.utc) - timedelta(seconds=1)
    return [{"id": f"evt_{i}", "received_at": (t0 + timedelta(microseconds=300 * i)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
             + "Z"} for i in range(n)]


def per_batch(batch: list[dict]) -> None:
    res = BatchResult(len(batch), rated=len(batch) - 3, replayed=1, decisions=2, spend_micros=123_456)
    res.first_received = metrics.oldest_received(batch)
    metrics.batch_done(len(batch), res, time.monotonic())


def per_event(batch: list[dict]) -> None:
    now = time.time()
    for b in batch:
        t = datetime.fromisoformat(b["received_at"].replace("Z", "+00:00")).timestamp()
        PER_EVENT.observe(now - t)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=200)
    a = p.parse_args()
    batch = bodies(a.batch)
    for name, fn in (("per batch (as the rater does)", per_batch), ("per-event histogram (not done)", per_event)):
        fn(batch)  # warm
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(a.rounds):
                fn(batch)
            best = min(best, time.perf_counter() - t)
        print(f"{name:32s} {best / (a.rounds * a.batch) * 1e6:6.3f} µs per event  (batches of {a.batch}, best of 5)")


if __name__ == "__main__":
    main()

"""`tollgate-rater`: the bus consumer, the rating pipeline, the hold sweeper and the idle agent
session sweeper (rater.sessions) in one process.
A Redis without its projection (restarted empty) makes settlement wait (NotProjected, retried
with backoff) until the control plane's self-healing has rebuilt it (control.service).

Loop: poll a batch -> Pipeline.process_raw -> ack. A batch that fails (PostgreSQL or Redis
unreachable) is retried as it is, with backoff, and acknowledged only once it went through;
dying meanwhile leaves it unacknowledged on the bus, which redelivers it. SIGTERM/SIGINT finish
the batch in hand, acknowledge it and exit 0.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import replace

import asyncpg

from rater import charges, holds, metrics, rollups, sessions
from rater.consumers import Consumer, Message, make_consumer
from rater.pipeline import BatchResult, Pipeline
from tollgate import tracing
from tollgate.config import Settings, settings as load_settings
from tollgate.gc_tuning import freeze_startup_heap
from tollgate.redis_client import connect

log = logging.getLogger("tollgate.rater")

OnBatch = Callable[[list[Message], BatchResult], None]

# Events per poll at most. A backlog (catching up after a restart, a burst) is drained faster in
# bigger batches: a customer's events share one cumulatives row update, one settle.lua run and one
# transaction's fixed costs. bench_rater, two raters: 1,000 -> 2,000 took the CPU per event from
# 102-114 to 83-92 µs. At a steady rate a poll returns what has arrived, so batches stay small.
DEFAULT_BATCH = 2000


class Rater:
    def __init__(self, consumer: Consumer, pipeline: Pipeline, *, batch_size: int = DEFAULT_BATCH,
                 poll_ms: int = 200, on_batch: OnBatch | None = None):
        """on_batch(messages, result) runs after each batch is acknowledged."""
        self.consumer = consumer
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.poll_ms = poll_ms
        self.on_batch = on_batch
        self.events = 0

    async def run(self, stop: asyncio.Event) -> None:
        # Beside rating: folding the usage rollup deltas that rating transactions append (rater.rollups).
        compactor = asyncio.create_task(rollups.run_compactor(self.pipeline.pool, stop))
        try:
            await self._consume(stop)
        finally:
            compactor.cancel()
            await asyncio.gather(compactor, return_exceptions=True)

    async def _consume(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                msgs = await self.consumer.poll(self.batch_size, self.poll_ms)
            except Exception:
                log.exception("polling the bus failed")
                await _sleep(stop, 1.0)
                continue
            if not msgs:
                continue
            started = time.monotonic()
            res = await self._process(msgs, stop)
            if res is not None:
                await self._ack(msgs, stop)
                metrics.batch_done(len(msgs), res, started)
                if self.on_batch:
                    self.on_batch(msgs, res)

    async def _process(self, msgs: list[Message], stop: asyncio.Event) -> BatchResult | None:
        delay = 0.1
        while True:
            try:
                res = await self.pipeline.process_raw([m.value for m in msgs])
            except Exception:
                metrics.BATCH_FAILURES.inc()
                log.exception("rating a batch of %d failed; retrying it", len(msgs))
                if stop.is_set():
                    return None  # unacknowledged: redelivered to whoever runs next
                await _sleep(stop, delay)
                delay = min(delay * 2, 5.0)
                continue
            self.events += len(msgs)
            if res.dead:
                log.warning("%d events dead-lettered (%s)", len(res.dead), ", ".join(sorted({d.reason for d in res.dead})))
            return res

    async def _ack(self, msgs: list[Message], stop: asyncio.Event) -> None:
        while True:
            try:
                await self.consumer.ack(msgs)
                return
            except Exception:
                log.exception("acknowledging %d messages failed; retrying", len(msgs))
                if stop.is_set():
                    return  # redelivered later; the pipeline makes that harmless
                await _sleep(stop, 0.5)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def serve(cfg: Settings, *, group: str = "rater", consumer_name: str | None = None,
                batch_size: int = DEFAULT_BATCH, sweep_interval_s: float = 5.0, claim_idle_ms: int = 30_000,
                stop: asyncio.Event | None = None, metrics_port: int = 0, metrics_host: str = "0.0.0.0") -> None:
    """metrics_port: serve the rater's Prometheus metrics (rater.metrics) there; 0 = not served."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass  # not the main thread (tests): the caller sets `stop`
    if metrics_port:  # first: a port already taken stops the start-up before anything else runs
        metrics.serve(metrics_port, metrics_host)
    pool = await asyncpg.create_pool(cfg.database_url, min_size=1, max_size=4)
    redis = connect(cfg.redis_url)
    kw = {"name": consumer_name, "claim_idle_ms": claim_idle_ms} if cfg.bus == "redis" else {}
    consumer = make_consumer(cfg, group=group, **kw)
    await consumer.start()
    rater = Rater(consumer, Pipeline(pool, redis, charges=charges.from_settings(cfg, redis)), batch_size=batch_size)
    sweeper = asyncio.create_task(holds.run_sweeper(redis, pool, sweep_interval_s, stop)) if sweep_interval_s > 0 else None
    # Agent sessions idle past their plan's timeout are closed (billed) on the same interval.
    idle = (asyncio.create_task(sessions.run_sweeper(rater.pipeline, sweep_interval_s, stop))
            if sweep_interval_s > 0 else None)
    lag = asyncio.create_task(metrics.run_lag_probe(consumer, stop, metrics.lag_probe_s())) if metrics_port else None
    freeze_startup_heap()  # long-lived objects made so far never need collecting
    log.info("rater started: bus=%s group=%s", cfg.bus, group)
    started = time.monotonic()
    try:
        await rater.run(stop)
    finally:
        stop.set()
        if sweeper:
            await sweeper
        if idle:
            await idle
        if lag:
            await lag
        await consumer.stop()
        if rater.pipeline.charges is not None:
            await rater.pipeline.charges.close()
        await redis.aclose()
        await pool.close()
        log.info("rater stopped after %d events in %.1f s", rater.events, time.monotonic() - started)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bus", choices=("redis", "kafka"), help="default: TOLLGATE_BUS")
    p.add_argument("--group", default="rater", help="consumer group (default: rater)")
    p.add_argument("--consumer", help="Redis Streams consumer name (default: TOLLGATE_RATER_CONSUMER or host-pid)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"events per batch at most (default: {DEFAULT_BATCH})")
    p.add_argument("--sweep-interval", type=float, default=5.0, help="seconds between hold sweeps and idle session sweeps; 0 = off")
    p.add_argument("--claim-idle-ms", type=int, default=30_000,
                   help="Redis Streams: take over another consumer's entries pending this long")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port at /metrics (default: TOLLGATE_RATER_METRICS_PORT; 0 = off)")
    p.add_argument("--metrics-host", default=None,
                   help="address the metrics port listens on (default: TOLLGATE_RATER_METRICS_HOST or 0.0.0.0)")


def run_from_args(args: argparse.Namespace, cfg: Settings | None = None) -> int:
    cfg = cfg or load_settings()
    if args.bus:
        cfg = replace(cfg, bus=args.bus)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tracing.setup("tollgate-rater")  # TOLLGATE_TRACING (off by default)
    coro = serve(cfg, group=args.group, consumer_name=args.consumer, batch_size=args.batch,
                 sweep_interval_s=args.sweep_interval, claim_idle_ms=args.claim_idle_ms,
                 metrics_port=metrics.port_from_env() if args.metrics_port is None else args.metrics_port,
                 metrics_host=args.metrics_host or metrics.host_from_env())
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tollgate-rater", description="Rate events from the bus.")
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


def register(sub) -> None:
    """`tollgate rater run`."""
    from tollgate.cli import command, group  # noqa: PLC0415

    p = command(group(sub, "rater", "the rating service"), "run", lambda ctx: run_from_args(ctx.args, ctx.settings),
                "consume the bus and rate events until SIGTERM")
    add_arguments(p)


if __name__ == "__main__":
    raise SystemExit(main())

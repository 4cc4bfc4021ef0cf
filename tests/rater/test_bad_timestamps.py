"""A usage event whose time cannot be placed in a period (outside years 1-9999 once in UTC, an
epoch number past the platform's time_t) is a dead letter `invalid_value`; the rest of the batch
is rated. Before, OverflowError/OSError escaped decode and failed the whole batch, which the bus
then redelivered for ever."""
from __future__ import annotations

from tests.rater.conftest import raw, usage


async def test_an_unplaceable_timestamp_is_dead_lettered_not_a_poison_batch(pg, redis, pipeline, plan_for, make_customer):
    c = await make_customer(plan_for("postpaid"))
    good = usage(c)
    bad = [usage(c, ts=ts) for ts in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", 1e20, -1e20, 2**63 - 1)]
    res = await pipeline.process_raw(raw([good, *bad]))
    assert res.rated == 1
    assert [d.reason if d else None for d in res.dead_by_index] == [None] + ["invalid_value"] * len(bad)

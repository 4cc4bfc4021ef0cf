"""The units carried into periods by rollover, as stored (`rating_rollovers`, migration 0016):
read by the rater (rater.rollovers), the period close and the preview (control.read.preview).
The rule that computes them is tollgate.rating.rollover; the close writes them."""
from __future__ import annotations

from collections.abc import Iterable

from tollgate.periods import prev_period
from tollgate.rating.pricing import UsageKey


async def read(conn, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[dict[UsageKey, int], bool]]:
    """(customer, period) -> (units carried into it by key, final). Final: the period before is
    invoiced, so its close has written all it will (the rows never change after it)."""
    pairs = sorted(set(pairs))
    out: dict[tuple[str, str], tuple[dict[UsageKey, int], bool]] = {p: ({}, False) for p in pairs}
    if not pairs:
        return out
    rows = await conn.fetch(
        """SELECT b.c, b.p, EXISTS (SELECT 1 FROM invoices i WHERE i.customer_id = b.c AND i.period = b.prev),
                  r.charge_id, r.dimension_key, r.units
           FROM unnest($1::text[], $2::text[], $3::text[]) AS b(c, p, prev)
           LEFT JOIN rating_rollovers r ON r.customer_id = b.c AND r.period = b.p""",
        [p[0] for p in pairs], [p[1] for p in pairs], [prev_period(p[1]) for p in pairs])
    for c, p, final, charge_id, dim_key, units in rows:
        carried = out[(c, p)][0]
        if charge_id is not None:
            carried[(charge_id, dim_key)] = units
        out[(c, p)] = (carried, final)
    return out

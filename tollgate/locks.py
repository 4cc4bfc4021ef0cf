"""The PostgreSQL advisory locks the services agree on: the rating lock groups (the rater and the
period close take them per customer; a projection rebuild takes them all) and the projection locks
(control-plane writes against a rebuild). Constants, because every process must agree on them.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import asyncpg

# Advisory locks serialising the rating of a customer across processes: one per lock group
# (crc32 of the customer id mod LOCK_GROUPS), two-int form (namespace, group). Every rater and the
# period close must agree on LOCK_GROUPS, hence a constant. A batch is split by lock group into
# sub-batches, so two consumers (or two connections of one) rate disjoint groups in parallel.
LOCK_NAMESPACE = 0x7261_7465  # 'rate'
LOCK_GROUPS = 8

# PostgreSQL advisory locks (two-int form) around the projection. A rebuild reads PostgreSQL, then
# writes Redis; a control-plane write (customer, key, plan, top-up) writes PostgreSQL and Redis in
# one transaction. Interleaved, the rebuild could put back what was just changed (a revoked key
# active again, a top-up's credit overwritten by the older balance). So control-plane transactions
# hold PROJECTION_WRITES shared (hold_off_rebuild) and a rebuild holds it exclusively; ONE_REBUILD
# makes rebuilds run one at a time across processes.
PROJECTION_LOCK_NAMESPACE = 0x7072_6A6E  # 'prjn'
ONE_REBUILD = 1
PROJECTION_WRITES = 2


def lock_group(customer_id: str) -> int:
    """Stable across processes (unlike hash())."""
    return zlib.crc32(customer_id.encode()) % LOCK_GROUPS


async def try_lock_groups(conn: asyncpg.Connection, groups: Sequence[int]) -> list[bool]:
    """Take each group's session-level lock if it is free, in one round trip: whether each was
    taken. Held from before the idempotency check until after the Redis settle: the cumulatives,
    the idempotency check and the wallet read for routing all see another consumer's sub-batch
    of the same customers entirely or not at all."""
    rows = await conn.fetch(
        "SELECT pg_try_advisory_lock($1, g) FROM unnest($2::int[]) WITH ORDINALITY AS t(g, i) ORDER BY i",
        LOCK_NAMESPACE, list(groups),
    )
    return [r[0] for r in rows]


async def lock_group_wait(conn: asyncpg.Connection, group: int) -> None:
    await conn.execute("SELECT pg_advisory_lock($1, $2)", LOCK_NAMESPACE, group)


async def unlock_group(conn: asyncpg.Connection, group: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_NAMESPACE, group)


async def unlock_groups(conn: asyncpg.Connection, groups: Sequence[int]) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, g) FROM unnest($2::int[]) AS g", LOCK_NAMESPACE, list(groups))

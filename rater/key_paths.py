"""An API key's path in the billing hierarchy (team, app), for the rater: the ledger lines carry it,
and settlement adds an event's spend to the levels that count it (tollgate.limits.spend_levels).

A key's path is fixed when the key is created, so a key with an app is cached for good. A key
without one is cached ttl_s: whether its own spend counts depends on its limits (a spend cap),
which may change. One query per batch for the keys not cached, none once they are.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from tollgate import limits


class Path(NamedTuple):
    team_id: str | None
    app_id: str | None
    levels: tuple[str, ...]  # whose period spend an event of the key adds to
    app_kind: str | None = None  # 'app' or 'agent': the level name of the app (alerts name it)


NO_PATH = Path(None, None, ())


class KeyPaths:
    def __init__(self, ttl_s: float = 5.0, clock=time.monotonic):
        self.ttl_s = ttl_s
        self.clock = clock
        self._paths: dict[str, tuple[float, Path]] = {}

    async def load(self, conn, key_ids: Iterable[str | None]) -> None:
        """Read the paths of the keys not cached (or expired) from PostgreSQL."""
        now = self.clock()
        missing = [k for k in set(key_ids) if k and self._paths.get(k, (0,))[0] <= now]
        if not missing:
            return
        rows = await conn.fetch(
            "SELECT k.id, k.app_id, a.team_id, a.kind, k.limits FROM api_keys k LEFT JOIN apps a ON a.id = k.app_id"
            " WHERE k.id = ANY($1::text[])", missing)
        for k in missing:  # a key PostgreSQL does not know has no path: not asked again for ttl_s
            self._paths[k] = (now + self.ttl_s, NO_PATH)
        for r in rows:
            levels = limits.spend_levels(r["id"], r["app_id"], r["team_id"], limits.loads(r["limits"]))
            expires = float("inf") if r["app_id"] else now + self.ttl_s
            self._paths[r["id"]] = (expires, Path(r["team_id"], r["app_id"], levels, r["kind"]))

    def get(self, key_id: str | None) -> Path:
        """The cached path (NO_PATH for no key, or one PostgreSQL does not know)."""
        hit = self._paths.get(key_id) if key_id else None
        return hit[1] if hit else NO_PATH

    async def annotate(self, conn, items: Sequence):
        """rater.settlement.SettleItems with their key's spend levels."""
        await self.load(conn, (it.key_id for it in items))
        return [it._replace(levels=levels) if (levels := self.get(it.key_id).levels) else it for it in items]

"""First-match-wins lookup of dimension matches, without scanning: the override index.

A charge's overrides (and a cost's) are tried in order and the first whose `match` holds wins:
`all(str(dimensions.get(name)) == value for name, value in match.items())`. A plan with a price
per MCP tool has thousands of them, and a scan costs ~0.3 µs per override per event (and per
/v1/check estimate). The index answers the same question in O(number of dimension names used):

- each override with a non-empty match is filed under its first field (sorted): by_field[name][value]
  lists, in plan order, the overrides whose match has that name with that value (usually one);
- the first override with an empty match (it matches every event) is remembered: nothing after it
  can win, so later ones are dropped.

lookup(dimensions) takes, for each indexed name, the earliest candidate filed under the event's
value that matches in full, and returns the smallest position among them and the match-all one:
exactly the position the ordered scan would find.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class OverrideIndex:
    __slots__ = ("_fields", "_match_all", "_matches")

    def __init__(self, matches: Sequence[Mapping[str, str]]):
        self._matches = tuple(matches)
        self._match_all: int | None = None
        by_field: dict[str, dict[str, list[int]]] = {}
        for i, m in enumerate(self._matches):
            if not m:
                if self._match_all is None:
                    self._match_all = i
                continue
            name = min(m)
            by_field.setdefault(name, {}).setdefault(m[name], []).append(i)
        # (name, value -> positions): a tuple of pairs iterates faster than a dict per event
        self._fields = tuple((name, {v: tuple(p) for v, p in values.items()}) for name, values in by_field.items())

    def lookup(self, dimensions: Mapping[str, Any]) -> int | None:
        """The position of the first override matching `dimensions`, or None."""
        best = self._match_all
        for name, values in self._fields:
            positions = values.get(str(dimensions.get(name)))
            if positions is None:
                continue
            for i in positions:
                if best is not None and i >= best:
                    break
                m = self._matches[i]
                if len(m) == 1 or all(str(dimensions.get(k)) == v for k, v in m.items()):
                    best = i
                    break
        return best

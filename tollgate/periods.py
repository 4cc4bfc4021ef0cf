"""Billing periods: calendar months in UTC, named 'YYYYMM' (the suffix of the spend key)."""
from __future__ import annotations

from datetime import datetime, timezone


def period_of(ts: float | datetime) -> str:
    dt = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, tz=timezone.utc)
    dt = dt.astimezone(timezone.utc)
    return f"{dt.year:04d}{dt.month:02d}"


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """[start, end) of a period in UTC."""
    y, m = int(period[:4]), int(period[4:])
    start = datetime(y, m, 1, tzinfo=timezone.utc)
    end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=timezone.utc)
    return start, end

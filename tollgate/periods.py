"""Billing periods, named 'YYYYMM' (the suffix of the spend key).

A period starts at 00:00 UTC on the plan's anchor day (`billing_period.anchor_day`, 1-28, default 1:
calendar months) of a month and ends at the same instant of the next month, so every month has
exactly one period start. Its id is the 'YYYYMM' of the month it starts in: with anchor day 15,
2026-03-14T23:59:59Z is in '202602' (Feb 15 - Mar 15) and 2026-03-15T00:00:00Z in '202603'.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

MAX_ANCHOR_DAY = 28  # every month has a day 28: a period never starts on a day a month lacks
_PERIOD = re.compile(r"^\d{4}(0[1-9]|1[0-2])$")


def _anchor(anchor_day: int) -> int:
    if type(anchor_day) is not int or not 1 <= anchor_day <= MAX_ANCHOR_DAY:
        raise ValueError(f"anchor_day must be a whole number from 1 to {MAX_ANCHOR_DAY}, got {anchor_day!r}")
    return anchor_day


def is_period(value: object) -> bool:
    """A period id: 'YYYYMM'."""
    return isinstance(value, str) and _PERIOD.match(value) is not None


def _split(period: str) -> tuple[int, int]:
    if not is_period(period):
        raise ValueError(f"period must be 'YYYYMM', got {period!r}")
    return int(period[:4]), int(period[4:])


def period_of(ts: float | datetime, anchor_day: int = 1) -> str:
    """Id of the period an instant (epoch seconds, or an aware datetime) falls in."""
    dt = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, tz=timezone.utc)
    dt = dt.astimezone(timezone.utc)
    y, m = dt.year, dt.month
    if dt.day < _anchor(anchor_day):  # before this month's start: still the period begun last month
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return f"{y:04d}{m:02d}"


def period_bounds(period: str, anchor_day: int = 1) -> tuple[datetime, datetime]:
    """[start, end) of a period in UTC."""
    y, m = _split(period)
    a = _anchor(anchor_day)
    return (datetime(y, m, a, tzinfo=timezone.utc),
            datetime(y + (m == 12), m % 12 + 1, a, tzinfo=timezone.utc))


def shift_period(period: str, months: int) -> str:
    """The period `months` later (negative: earlier); the same for every anchor day."""
    y, m = _split(period)
    n = y * 12 + (m - 1) + months
    return f"{n // 12:04d}{n % 12 + 1:02d}"


def next_period(period: str) -> str:
    return shift_period(period, 1)


def prev_period(period: str) -> str:
    return shift_period(period, -1)

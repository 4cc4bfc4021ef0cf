"""Validation of service inputs: each failure is an InvalidInput naming the field."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from control.errors import InvalidInput
from tollgate.keys import ID_PATTERN
from tollgate.money import MoneyError, parse_decimal, to_micros

# A balance must stay exact as a Lua number (a double): 2**53 micros is ~9e9 units.
MAX_AMOUNT = Decimal(1_000_000_000)


def ident(value: Any, field: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise InvalidInput(field, "must be 1-64 characters of letters, digits, '_', '-', '.'")
    return value


def text(value: Any, field: str, max_len: int = 200, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(field, "required: a non-empty string")
    if "\x00" in value:
        raise InvalidInput(field, "must not contain NUL characters")
    if len(value) > max_len:
        raise InvalidInput(field, f"must be at most {max_len} characters")
    return value.strip()


def money_micros(value: Any, field: str, *, positive: bool) -> int:
    """A decimal string (or integer) of currency units -> exact micros; never rounds silently."""
    if value is None or value == "":
        raise InvalidInput(field, "required: an amount such as \"10.00\"")
    try:
        d = parse_decimal(value, field)
    except MoneyError as e:
        raise InvalidInput(field, str(e).split(": ", 1)[1]) from None
    if positive and d <= 0:
        raise InvalidInput(field, "must be greater than 0")
    if d < 0:
        raise InvalidInput(field, "must be >= 0")
    if d > MAX_AMOUNT:
        raise InvalidInput(field, f"must be at most {MAX_AMOUNT}")
    if (d * 1_000_000) % 1:
        raise InvalidInput(field, "at most 6 decimal places (micros)")
    return to_micros(d)


def choice(value: Any, options: tuple[str, ...], field: str) -> str:
    if value not in options:
        raise InvalidInput(field, f"must be one of {', '.join(options)}")
    return value


def iso(ts) -> str | None:
    return None if ts is None else ts.isoformat()

"""rater.ledger's text-format COPY of processed_events and ledger_lines: any string round-trips
exactly (tabs, newlines, CR, backslashes, a literal \\N, unicode, '' vs NULL), numbers exactly
(Decimal scale and exponent notation, int64 bounds), a recorded event still raises
UniqueViolationError, and what cannot be sent (a NUL, a float, a bool) is refused, naming the
column, before anything reaches PostgreSQL (the transaction stays usable).

Every test runs in a transaction it rolls back: nothing is left in the session database."""
from __future__ import annotations

import random
import uuid
from contextlib import asynccontextmanager
from decimal import Decimal

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rater import ledger
from rater.ledger import LEDGER_COLUMNS, PROCESSED_COLUMNS, Processed

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# Strings that need escaping, look like escapes, or are merely unusual.
AWKWARD = [
    "", "a\tb", "a\nb", "a\rb", "\r\n", "\t", "\n", "\\", "\\\\", "end\\", "\\N", "\\n", "\\t", "\\.", ".",
    "N", "None", "NULL", "\\x41", "\\101", "a\\Nb", "é", "Ünïcødé ✓", "😀", "emoji 👩‍💻 mixed\tTAB",
    "\u2028", "\x0b\x0c\x1f\x7f", "'\"", "  spaced  ", "x" * 5000,
]


def eid() -> str:
    return f"evt_{uuid.uuid4().hex}"


@asynccontextmanager
async def rolled_back(pg):
    """A connection in a transaction that is always rolled back."""
    async with pg.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            yield conn
        finally:
            await tr.rollback()


def lines_of(event_id: str, /, **overrides) -> tuple:
    """A typical ledger row with some fields overridden."""
    base = dict(event_id=event_id, line_no=0, correlation_id=f"req_{event_id}", customer_id="cus_copy",
                plan_id="plan_copy", period="202611", kind="usage", charge_id="input_tokens",
                metric="input_tokens", dimension_key="default", quantity=1234, unit_price=Decimal("0.000003"),
                amount_micros=3702, cost_micros=3085, key_id="key_copy", team_id="team_copy", app_id="app_copy",
                session_id=None)
    base.update(overrides)
    return tuple(base[c] for c in LEDGER_COLUMNS)


def processed_of(event_id: str, /, **overrides) -> Processed:
    base = dict(event_id=event_id, kind="usage", customer_id="cus_copy", period="202611", spend_micros=12345,
                wallet_micros=0, invoice_micros=12345, hold_id=None, actual_tokens=2300,
                correlation_id=f"req_{event_id}")
    base.update(overrides)
    return Processed(**base)


async def read_lines(conn, event_ids) -> dict[tuple[str, int], tuple]:
    rows = await conn.fetch(
        f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger_lines WHERE event_id = ANY($1::text[])", list(event_ids))
    return {(r["event_id"], r["line_no"]): tuple(r.values()) for r in rows}


async def read_processed(conn, event_ids) -> dict[str, Processed]:
    rows = await conn.fetch(
        f"SELECT {', '.join(PROCESSED_COLUMNS)} FROM processed_events WHERE event_id = ANY($1::text[])",
        list(event_ids))
    return {r["event_id"]: Processed(*r.values()) for r in rows}


async def write_and_read(conn, procs, lines) -> tuple[dict[str, Processed], dict[tuple[str, int], tuple]]:
    """Both COPYs, then what PostgreSQL holds for those events."""
    await ledger.insert_processed(conn, procs)
    await ledger.copy_lines(conn, lines)
    return (await read_processed(conn, [p.event_id for p in procs]),
            await read_lines(conn, {ln[0] for ln in lines}))


def assert_same_lines(got: tuple, sent: tuple) -> None:
    assert got == sent
    assert [type(v) for v in got] == [type(v) for v in sent]  # no '' came back as None, nor the reverse


# ----------------------------------------------------------------------------- round trips


async def test_awkward_strings_round_trip_in_every_text_column(pg):
    lines, procs = [], []
    for i, s in enumerate(AWKWARD):
        e = f"{eid()}{s[:100]}"  # every text column carries the awkward value (the key: a btree's size limit)
        lines.append(lines_of(e, line_no=i, correlation_id=s, customer_id=s, plan_id=s, period=s, kind=s,
                              charge_id=s, metric=s, dimension_key=s))
        procs.append(processed_of(e, kind=s, customer_id=s, period=s, hold_id=s, correlation_id=s))
    async with rolled_back(pg) as conn:
        got_p, got_l = await write_and_read(conn, procs, lines)
    assert got_p == {p.event_id: p for p in procs}
    assert len(got_l) == len(lines)
    for ln in lines:
        assert_same_lines(got_l[(ln[0], ln[1])], ln)


async def test_empty_string_and_null_stay_distinct(pg):
    e1, e2 = eid(), eid()
    lines = [lines_of(e1, correlation_id="", metric="", unit_price=None),
             lines_of(e2, correlation_id=None, metric=None, unit_price=Decimal("1.50"))]
    procs = [processed_of(e1, hold_id="", correlation_id=""), processed_of(e2, hold_id=None, correlation_id=None)]
    async with rolled_back(pg) as conn:
        got_p, got_l = await write_and_read(conn, procs, lines)
        nulls = await conn.fetch(
            "SELECT event_id, correlation_id IS NULL AS c, metric IS NULL AS m, unit_price IS NULL AS u"
            " FROM ledger_lines WHERE event_id = ANY($1::text[]) ORDER BY event_id = $2 DESC", [e1, e2], e1)
    assert got_p[e1].hold_id == "" and got_p[e1].correlation_id == ""
    assert got_p[e2].hold_id is None and got_p[e2].correlation_id is None
    assert got_l[(e1, 0)] == lines[0] and got_l[(e2, 0)] == lines[1]
    assert [(r["c"], r["m"], r["u"]) for r in nulls] == [(False, False, True), (True, True, False)]


async def test_decimals_round_trip_with_their_scale_as_binary_copy_stores_them(pg):
    """Each Decimal is stored exactly as binary COPY stores it (the column's text, hence the scale,
    compared), exponent notation included: str(Decimal('3E-7')) is '3E-7', which numeric accepts."""
    prices = [Decimal("0.000003"), Decimal("3E-7"), Decimal("1.50"), Decimal("-2.5"), Decimal("0"),
              Decimal("0E-7"), Decimal("-0"), Decimal("1E+2"), Decimal("1.2E+5"), Decimal("-1.5E-10"),
              Decimal("0.0000031"), Decimal("123456789012345678901234567890.123456789"), Decimal("1E-30"),
              Decimal("9" * 40), 7, -3, None]
    text_ids = [eid() for _ in prices]
    binary_ids = [eid() for _ in prices]
    async with rolled_back(pg) as conn:
        await ledger.copy_lines(conn, [lines_of(e, unit_price=p) for e, p in zip(text_ids, prices)])
        await conn.copy_records_to_table(
            "ledger_lines", columns=LEDGER_COLUMNS,
            records=[lines_of(e, unit_price=None if p is None else Decimal(p)) for e, p in zip(binary_ids, prices)])
        as_text = {r[0]: (r[1], r[2]) for r in await conn.fetch(
            "SELECT event_id, unit_price::text, unit_price FROM ledger_lines WHERE event_id = ANY($1::text[])",
            text_ids + binary_ids)}
    for p, t, b in zip(prices, text_ids, binary_ids):
        assert as_text[t] == as_text[b], p
        assert as_text[t][1] == (None if p is None else Decimal(p))
    assert as_text[text_ids[prices.index(Decimal("1.50"))]][0] == "1.50"
    assert as_text[text_ids[prices.index(Decimal("3E-7"))]][0] == "0.0000003"


async def test_integers_at_the_column_bounds_and_negative_amounts(pg):
    e = eid()
    lines = [lines_of(e, line_no=32767, quantity=INT64_MAX, amount_micros=INT64_MIN, cost_micros=INT64_MAX),
             lines_of(e, line_no=-32768, quantity=INT64_MIN, amount_micros=INT64_MAX, cost_micros=INT64_MIN),
             lines_of(e, line_no=0, quantity=-1, amount_micros=-3702, unit_price=Decimal("-0.000003"))]
    procs = [processed_of(e, spend_micros=INT64_MAX, wallet_micros=INT64_MIN, invoice_micros=-1,
                          actual_tokens=INT64_MAX - 1)]
    async with rolled_back(pg) as conn:
        got_p, got_l = await write_and_read(conn, procs, lines)
    assert got_p == {e: procs[0]}
    assert sorted(got_l.values()) == sorted(lines)


async def test_a_large_mixed_batch_round_trips(pg):
    """A thousand ordinary rows and a few awkward ones in one batch (the awkward ones send the whole
    batch down the escaping path): every row comes back as sent."""
    rnd = random.Random(20261)
    alphabet = ["a", "Z", "0", "_", "-", "\\", "\t", "\n", "\r", "N", "é", "😀", " ", "."]
    lines, procs = [], []
    for i in range(1000):
        e = eid()
        awkward = i % 97 == 5
        s = "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 12))) if awkward else f"cus_{i % 50}"
        lines.append(lines_of(e, line_no=i % 3, customer_id=s, correlation_id=None if i % 5 == 0 else f"req_{i}",
                              unit_price=None if i % 7 == 0 else Decimal(rnd.randrange(1, 10**6)).scaleb(-9),
                              quantity=rnd.randrange(-10**12, 10**12), amount_micros=rnd.randrange(-10**9, 10**9)))
        procs.append(processed_of(e, customer_id=s, hold_id=f"hold_{i}" if i % 4 == 0 else None,
                                  spend_micros=rnd.randrange(10**9)))
    async with rolled_back(pg) as conn:
        got_p, got_l = await write_and_read(conn, procs, lines)
    assert got_p == {p.event_id: p for p in procs}
    assert got_l == {(ln[0], ln[1]): ln for ln in lines}


async def test_rows_of_other_sequence_types_are_accepted(pg):
    """Lists as rows, str subclasses, int subclasses (not bool) as binary COPY accepted them."""
    class Id(str):
        pass

    class Quantity(int):
        pass

    e = eid()
    lines = [list(lines_of(e, customer_id=Id("cus_sub"), quantity=Quantity(5)))]
    async with rolled_back(pg) as conn:
        await ledger.copy_lines(conn, lines)
        got = await read_lines(conn, [e])
    assert got[(e, 0)][LEDGER_COLUMNS.index("customer_id")] == "cus_sub"
    assert got[(e, 0)][LEDGER_COLUMNS.index("quantity")] == 5


# ----------------------------------------------------------------------------- conflicts


async def test_a_recorded_event_raises_unique_violation(pg):
    e = eid()
    async with rolled_back(pg) as conn:
        await ledger.insert_processed(conn, [processed_of(e)])
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():  # a savepoint: the error aborts it, not the outer transaction
                await ledger.insert_processed(conn, [processed_of(eid()), processed_of(e)])
        # also within one batch, and with an id that needs escaping
        odd = eid() + "\t\\N"
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await ledger.insert_processed(conn, [processed_of(odd), processed_of(odd)])
        assert list(await read_processed(conn, [e])) == [e]


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("column", ["event_id", "correlation_id", "customer_id", "hold_id"])
async def test_nul_in_processed_is_refused_naming_the_column(pg, column):
    row = processed_of(eid(), hold_id="hold_1")._replace(**{column: "bad\x00value"})
    async with rolled_back(pg) as conn:
        with pytest.raises(ValueError, match=rf"processed_events\.{column}: .*NUL"):
            await ledger.insert_processed(conn, [processed_of(eid()), row])
        assert await conn.fetchval("SELECT 1") == 1  # nothing was sent: the transaction is intact


@pytest.mark.parametrize("column", ["event_id", "correlation_id", "metric", "dimension_key"])
async def test_nul_in_ledger_lines_is_refused_naming_the_column(pg, column):
    row = lines_of(eid(), **{column: "\x00"})
    async with rolled_back(pg) as conn:
        with pytest.raises(ValueError, match=rf"ledger_lines\.{column}: .*NUL"):
            await ledger.copy_lines(conn, [lines_of(eid()), row])
        assert await conn.fetchval("SELECT 1") == 1


@pytest.mark.parametrize(("column", "value"), [
    ("unit_price", 0.000003), ("unit_price", 1.0), ("unit_price", True), ("quantity", 1234.0),
    ("amount_micros", False), ("cost_micros", 1.0), ("line_no", 1.5), ("amount_micros", Decimal("3702")), ("quantity", "1234"),
])
async def test_inexact_or_wrong_numbers_in_ledger_lines_are_refused(pg, column, value):
    async with rolled_back(pg) as conn:
        with pytest.raises(TypeError, match=rf"ledger_lines\.{column}: "):
            await ledger.copy_lines(conn, [lines_of(eid()), lines_of(eid(), **{column: value})])
        assert await conn.fetchval("SELECT 1") == 1


@pytest.mark.parametrize(("column", "value"), [
    ("spend_micros", 1.5), ("wallet_micros", True), ("invoice_micros", Decimal("1")), ("actual_tokens", 2300.0),
])
async def test_inexact_numbers_in_processed_are_refused(pg, column, value):
    async with rolled_back(pg) as conn:
        with pytest.raises(TypeError, match=rf"processed_events\.{column}: "):
            await ledger.insert_processed(conn, [processed_of(eid(), **{column: value})])
        assert await conn.fetchval("SELECT 1") == 1


async def test_wrong_shapes_are_refused_before_sending(pg):
    async with rolled_back(pg) as conn:
        with pytest.raises(TypeError, match=r"ledger_lines\.plan_id: expected str"):
            await ledger.copy_lines(conn, [lines_of(eid(), plan_id=42)])
        with pytest.raises(ValueError, match=rf"ledger_lines: a row of {len(LEDGER_COLUMNS) - 1} values for {len(LEDGER_COLUMNS)} columns"):
            await ledger.copy_lines(conn, [lines_of(eid())[:-1]])
        with pytest.raises(ValueError, match=r"ledger_lines\.customer_id: not encodable"):
            await ledger.copy_lines(conn, [lines_of(eid(), customer_id="lone \ud800 surrogate")])
        assert await conn.fetchval("SELECT 1") == 1


async def test_null_in_a_not_null_column_is_left_to_postgresql(pg):
    """As with binary COPY: a None is sent as NULL, and the NOT NULL constraint refuses it."""
    async with rolled_back(pg) as conn:
        with pytest.raises(asyncpg.NotNullViolationError):
            await ledger.copy_lines(conn, [lines_of(eid(), plan_id=None)])


# ----------------------------------------------------------------------------- the payload, for any input


def parse_copy_text(data: bytes, ncols: int) -> list[list[str | None]]:
    """A reference reader of COPY text format (the subset the writer may produce)."""
    text = data.decode()
    assert text.endswith("\n")
    out = []
    for line in text[:-1].split("\n"):
        fields = line.split("\t")
        assert len(fields) == ncols
        row = []
        for f in fields:
            if f == "\\N":
                row.append(None)
                continue
            chars, i = [], 0
            while i < len(f):
                if f[i] == "\\":
                    chars.append({"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}[f[i + 1]])  # no other escape
                    i += 2
                else:
                    chars.append(f[i])
                    i += 1
            row.append("".join(chars))
        out.append(row)
    return out


def as_copy_text(v) -> str | None:
    return None if v is None else v if isinstance(v, str) else str(v)


texts = st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=12)
specials = st.text(alphabet="\\\t\n\rN.a", max_size=6)
some_text = st.one_of(texts, specials, st.just("\\N"))
int64 = st.integers(INT64_MIN, INT64_MAX)
decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(some_text, st.integers(-32768, 32767), st.none() | some_text, some_text, some_text,
                          some_text, some_text, some_text, st.none() | some_text, some_text, int64,
                          st.none() | decimals, int64, int64, st.none() | some_text, st.none() | some_text,
                          st.none() | some_text, st.none() | some_text), min_size=1, max_size=8))
def test_ledger_payload_decodes_to_the_values_sent(rows):
    decoded = parse_copy_text(bytes(ledger.ledger_text(rows)), len(LEDGER_COLUMNS))
    assert decoded == [[as_copy_text(v) for v in r] for r in rows]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(Processed, some_text, some_text, some_text, some_text, int64, int64, int64,
                          st.none() | some_text, int64, st.none() | some_text, st.none() | some_text,
                          st.none() | int64), min_size=1, max_size=8))
def test_processed_payload_decodes_to_the_values_sent(rows):
    decoded = parse_copy_text(bytes(ledger._processed_text(rows)), len(PROCESSED_COLUMNS))
    assert decoded == [[as_copy_text(v) for v in r] for r in rows]


def test_plain_rows_take_the_fast_path_and_awkward_ones_the_escaping_path():
    plain = [lines_of(eid(), session_id="ses_1"), lines_of(eid(), correlation_id=None, metric=None, unit_price=None)]
    escaped = [ledger._escaped_row("ledger_lines", LEDGER_COLUMNS, ledger._LEDGER_KINDS, r) for r in plain]
    assert ledger._ledger_text_fast(plain) == b"".join(escaped)
    for s in ["a\tb", "a\nb", "a\rb", "a\\b", "\\N", "\x00"]:
        assert ledger._ledger_text_fast(plain + [lines_of(eid(), metric=s)]) is None
        assert ledger._processed_text_fast([processed_of(eid(), hold_id=s)]) is None
    assert ledger._processed_text_fast([processed_of(eid())]) is not None
    # one awkward row: the others keep their fast-path text
    awkward = lines_of(eid(), metric="a\tb")
    payload = bytes(ledger.ledger_text([plain[0], awkward, plain[1]]))
    middle = ledger._escaped_row("ledger_lines", LEDGER_COLUMNS, ledger._LEDGER_KINDS, awkward)
    assert b"\ta\\tb\t" in middle
    assert payload == escaped[0] + middle + escaped[1]

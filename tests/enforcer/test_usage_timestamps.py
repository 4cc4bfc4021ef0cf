"""Property: whatever a client puts in a usage report's `timestamp`, the real enforcer answers 202
(and puts the time on the bus as RFC 3339 UTC) or 400 naming `timestamp`, never a 500.

The report that found the bug: "0001-01-01T00:00:00+01:00" and "9999-12-31T23:59:59-01:00" are
valid local times whose UTC lies outside years 1-9999; converting them raised OverflowError.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.tenants import provision, uid
from tollgate.keys import EVENTS_STREAM

EDGES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00-00:01",
         "9999-12-31T23:59:59.999999+00:00", "0001-01-01T00:59:59+01:00", "0001-01-01T01:00:00+01:00"]

# Offsets RFC 3339 can spell: -23:59 .. +23:59.
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
near_the_edges = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1, 1, 2)),
    st.datetimes(min_value=datetime(9999, 12, 30), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)),
    st.datetimes(),
)


@st.composite
def aware_datetimes(draw) -> tuple[str, str | None]:
    """(text, its UTC time as the enforcer must write it, or None where UTC leaves years 1-9999)."""
    dt = draw(near_the_edges).replace(tzinfo=draw(offsets))
    spec = draw(st.sampled_from(["seconds", "milliseconds", "microseconds"]))
    dt = dt.replace(microsecond={"seconds": 0, "milliseconds": dt.microsecond // 1000 * 1000}.get(spec, dt.microsecond))
    text = dt.isoformat(sep=draw(st.sampled_from("Tt")), timespec=spec)
    if text.endswith("+00:00") and draw(st.booleans()):
        text = text[:-6] + draw(st.sampled_from("Zz"))
    try:
        utc = dt.astimezone(timezone.utc)
    except OverflowError:
        return text, None
    stamp = f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    return text, stamp + (f".{utc.microsecond:06d}Z" if utc.microsecond else "Z")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
near_misses = st.from_regex(
    r"\A[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}[Tt ][0-9]{1,2}:[0-9]{2}(:[0-9]{2})?(\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:?[0-9]{2}(:[0-9]{2})?)?\Z")
anything = st.one_of(json_values, st.text(), near_misses, st.sampled_from(EDGES))


@pytest.fixture(scope="module")
def tenant_box():
    return {}


async def _tenant(redis, box):
    if "t" not in box or not await redis.exists(f"tg:key:{box['t'].key_hash}"):
        box["t"] = await provision(redis)
    return box["t"]


async def _post(enforcer, http, redis, box, ts) -> tuple[int, dict, str]:
    t = await _tenant(redis, box)
    eid = uid("evt")
    doc = {"event_id": eid, "api_key": t.api_key, "timestamp": ts, "measurements": [{"metric": "input_tokens", "value": 1}]}
    # stdlib json: it writes integers of any size, as a client may
    r = await http.post(f"{enforcer.url}/v1/usage", content=json.dumps(doc), headers={"content-type": "application/json"})
    assert r.status_code < 500, (ts, r.status_code, r.text)
    return r.status_code, r.json(), eid


async def _published(redis, eid: str) -> dict:
    for _, fields in await redis.xrevrange(EVENTS_STREAM, count=20):
        event = orjson.loads(fields[b"event"])
        if event["id"] == eid:
            return event
    raise AssertionError(f"{eid} got a 202 but is not on the bus")


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(ts=anything)
@example(ts="0001-01-01T00:00:00+01:00")
@example(ts="9999-12-31T23:59:59-01:00")
@example(ts=2**70)
@example(ts=-1.5e308)
async def test_any_timestamp_is_202_or_a_400_naming_it(enforcer, http, redis, tenant_box, ts):
    status, body, eid = await _post(enforcer, http, redis, tenant_box, ts)
    if ts is None:
        assert status == 202, body  # optional: the receive time is used
    elif status == 202:
        stamp = (await _published(redis, eid))["timestamp"]
        assert datetime.fromisoformat(stamp[:-1] + "+00:00").tzinfo is not None and stamp.endswith("Z"), stamp
    else:
        assert (status, body["error"], body["field"]) == (400, "invalid_field", "timestamp"), (ts, body)


@SETTINGS
@given(case=aware_datetimes())
async def test_a_valid_date_time_is_normalised_to_utc_or_refused_out_of_range(enforcer, http, redis, tenant_box, case):
    text, utc = case
    status, body, eid = await _post(enforcer, http, redis, tenant_box, text)
    if utc is None:
        assert (status, body["field"]) == (400, "timestamp"), (text, body)
        assert "years 0001-9999" in body["message"]
    else:
        assert status == 202, (text, body)
        assert (await _published(redis, eid))["timestamp"] == utc, text

"""Request bodies: read them within the size limit, parse them, and refuse bad input with a 4xx
naming the problem. Nothing here touches Redis, so a bad request never consumes quota."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import orjson

from tollgate.keys import ID_PATTERN
from tollgate.plans import MAX_QUANTITY_PER_EVENT_CEILING, Plan

MAX_BODY = 64 * 1024
MAX_COUNT = 2**40  # far above any real estimate, far below where Lua's doubles stop being exact
JSON = b"application/json"
_PRINTABLE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # gateway request ids: printable ASCII, no spaces


class BadRequest(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.field = status, error, message, field

    def body(self) -> bytes:
        doc = {"error": self.error, "message": self.message}
        if self.field:
            doc["field"] = self.field
        return orjson.dumps(doc)


def _header(scope: dict, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


async def read_json(scope: dict, receive) -> dict[str, Any]:
    """The JSON object of the body, or BadRequest (415 not JSON, 413 over 64 KiB, 400 malformed)."""
    _, doc = await read_typed_json(scope, receive)
    return json_object(doc)


def json_object(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise BadRequest(400, "invalid_json", "the body must be a JSON object")
    return doc


async def read_typed_json(scope: dict, receive, media_types: tuple[bytes, ...] = (JSON,)) -> tuple[bytes, Any]:
    """(media type, parsed body) for a body sent as one of `media_types` (JSON all of them)."""
    ctype = _header(scope, b"content-type")
    media = ctype.split(b";", 1)[0].strip().lower() if ctype is not None else b""
    if media not in media_types:
        raise BadRequest(415, "unsupported_media_type",
                         "send the body as Content-Type: " + " or ".join(t.decode() for t in media_types))
    length = _header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise BadRequest(413, "body_too_large", f"the body is over {MAX_BODY} bytes")
    body = b""
    more = True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise BadRequest(400, "client_disconnected", "the client went away")
        body += msg.get("body", b"")
        if len(body) > MAX_BODY:
            raise BadRequest(413, "body_too_large", f"the body is over {MAX_BODY} bytes")
        more = msg.get("more_body", False)
    try:
        return media, orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(400, "invalid_json", f"the body is not valid JSON: {e}") from None


def invalid(field: str, message: str) -> BadRequest:
    return BadRequest(400, "invalid_field", f"{field}: {message}", field)


def req_str(doc: dict, field: str, required: bool = True) -> str | None:
    v = doc.get(field)
    if v is None:
        if required:
            raise invalid(field, "required")
        return None
    if not isinstance(v, str):
        raise invalid(field, "must be a string")
    if not _PRINTABLE_ID.match(v):
        raise invalid(field, "1-128 printable characters without spaces")
    return v


def api_key(doc: dict) -> str:
    v = doc.get("api_key")
    if v is None:
        raise invalid("api_key", "required")
    if not isinstance(v, str) or not 0 < len(v) <= 256:
        raise invalid("api_key", "must be a non-empty string")
    return v


def session_id(doc: dict) -> str | None:
    """The optional top-level `session_id` of a check or usage report (an agent's session)."""
    v = doc.get("session_id")
    if v is None:
        return None
    if not isinstance(v, str) or not ID_PATTERN.match(v):
        raise invalid("session_id", "1-64 characters of letters, digits, '_', '-', '.'")
    return v


def count(v: Any, field: str) -> int:
    """A whole, non-negative number of units (JSON 3.0 is refused: counts are integers)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise invalid(field, "must be a whole number")
    if v < 0:
        raise invalid(field, "must not be negative")
    if v > MAX_COUNT:
        raise invalid(field, f"must be at most {MAX_COUNT}")
    return v


def quantity(v: Any, field: str) -> int:
    """A usage measurement's value: a count (400 otherwise), at most the largest maximum per event
    any plan may set (422 beyond: the key's own plan is checked once it is known, `within_plan`)."""
    if isinstance(v, float) and v.is_integer() and v > MAX_QUANTITY_PER_EVENT_CEILING:
        v = int(v)  # JSON integers past 64 bits arrive as floats: too large, not fractional
    if isinstance(v, bool) or not isinstance(v, int):
        raise invalid(field, "must be a whole number")
    if v < 0:
        raise invalid(field, "must not be negative")
    if v > MAX_QUANTITY_PER_EVENT_CEILING:
        raise _too_large(field, v, f"the ceiling of {MAX_QUANTITY_PER_EVENT_CEILING} units per event "
                                   "(the most limits.max_quantity_per_event may allow)")
    return v


def within_plan(measurements: list[dict], plan: Plan) -> None:
    """Each measurement at most its plan's `limits.max_quantity_per_event` (422 naming it otherwise)."""
    for i, m in enumerate(measurements):
        limit = plan.max_quantity(m["metric"])
        if m["value"] > limit:
            raise _too_large(f"measurements[{i}].value", m["value"],
                             f"the plan's maximum of {limit} {m['metric']} per event (limits.max_quantity_per_event)")


def _too_large(field: str, value: int, limit: str) -> BadRequest:
    return BadRequest(422, "quantity_too_large", f"{field}: {value} is over {limit}", field)


def dimensions(doc: dict) -> dict[str, Any]:
    v = doc.get("dimensions")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise invalid("dimensions", "must be an object")
    if len(v) > 64:
        raise invalid("dimensions", "at most 64 entries")
    for k, x in v.items():
        if not isinstance(x, (str, int, float, bool)):
            raise invalid(f"dimensions.{k}", "must be a string, number or boolean")
    return v


def estimate(doc: dict) -> dict[str, int]:
    """Units the request is expected to use, by metric; `requests` defaults to 1."""
    v = doc.get("estimate")
    if v is None:
        return {"requests": 1}
    if not isinstance(v, dict):
        raise invalid("estimate", "must be an object")
    out = {}
    for k, x in v.items():
        if not ID_PATTERN.match(k):
            raise invalid("estimate", f"bad metric name {k[:64]!r}")
        out[k] = count(x, f"estimate.{k}")
    out.setdefault("requests", 1)
    return out


# RFC 3339 section 5.6 date-time, checked before parsing: datetime.fromisoformat alone also takes
# ISO 8601 forms RFC 3339 does not (a trailing space, '+0100', a comma before the fraction).
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)", re.ASCII)
_TS_FORMAT = "must be an RFC 3339 date-time, e.g. 2026-11-21T10:00:00Z"


def timestamp(doc: dict, field: str = "timestamp") -> str | None:
    """RFC 3339 with an offset, normalised to UTC ('...Z'); None when absent."""
    v = doc.get(field)
    if v is None:
        return None
    m = _RFC3339.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise invalid(field, _TS_FORMAT)
    text, frac, zone = m.groups()
    if frac:  # to microseconds, truncated: nanosecond clocks send 9 digits
        text += "." + frac[:6]
    try:
        dt = datetime.fromisoformat(text + ("+00:00" if zone in "Zz" else zone))
        return iso_utc(dt)
    except ValueError:  # month 13, Feb 30, hour 24, offset +25:00
        raise invalid(field, _TS_FORMAT) from None
    except OverflowError:  # inside years 1-9999 locally, outside them in UTC
        raise invalid(field, "out of range: the UTC time must lie within years 0001-9999") from None


def iso_utc(dt: datetime) -> str:
    """'YYYY-MM-DDTHH:MM:SS[.ffffff]Z' (four-digit year: strftime's %Y writes year 1 as '1')."""
    dt = dt.astimezone(timezone.utc)
    base = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    return base + (f".{dt.microsecond:06d}Z" if dt.microsecond else "Z")

"""A usage report sent as a CloudEvent (CloudEvents 1.0, JSON event format, structured mode).

`POST /v1/usage` with `Content-Type: application/cloudevents+json` carries one event whose `data`
is the usage body of the plain JSON form; `application/cloudevents-batch+json` carries a JSON
array of them, accepted or refused whole. The context attributes map onto the usage event:

    id     -> event_id (the idempotency key: the same id is billed once)
    time   -> timestamp (optional; RFC 3339)
    type   -> event_type, unless `data` names its own
    source, specversion ("1.0"), datacontenttype (JSON or absent): checked, not stored
    data   -> everything else (api_key, correlation_id, hold_id, properties, measurements, ...)

`data` may repeat `event_id` or `timestamp` only with the attribute's value. A bad attribute is a
400 naming it (`id`, `time`, `specversion`, ...); a bad field of the usage body names it under
`data.` (and `[i].` in a batch), as the plain form names it at the top.
"""
from __future__ import annotations

from typing import Any

from enforcer import validation as v

CLOUDEVENT = b"application/cloudevents+json"
CLOUDEVENT_BATCH = b"application/cloudevents-batch+json"
SPEC_VERSION = "1.0"
MAX_BATCH = 100  # events per batch (the 64 KiB body limit comes first for real usage reports)
_ATTRIBUTES = ("specversion", "id", "source", "type")  # required by CloudEvents 1.0


def prefixed(e: v.BadRequest, prefix: str) -> v.BadRequest:
    """The same refusal, its field named from the batch or event it sits in."""
    field = prefix + e.field if e.field else prefix.rstrip(".")
    message = f"{prefix}{e.message}" if e.field else f"{field}: {e.message}"
    return v.BadRequest(e.status, e.error, message, field)


def usage_doc(ce: Any) -> dict:
    """The plain usage body a structured CloudEvent stands for (BadRequest naming the attribute)."""
    if not isinstance(ce, dict):
        raise v.BadRequest(400, "invalid_json", "a CloudEvent must be a JSON object")
    for name in _ATTRIBUTES:
        value = ce.get(name)
        if value is None:
            raise v.invalid(name, "required (a CloudEvents 1.0 context attribute)")
        if not isinstance(value, str) or not value:
            raise v.invalid(name, "must be a non-empty string")
    if ce["specversion"] != SPEC_VERSION:
        raise v.invalid("specversion", f"must be {SPEC_VERSION!r}")
    event_id = v.req_str(ce, "id")  # our event ids: 1-128 printable characters without spaces
    timestamp = v.timestamp(ce, "time")
    ctype = ce.get("datacontenttype")
    if ctype is not None and (not isinstance(ctype, str) or not _is_json(ctype)):
        raise v.invalid("datacontenttype", "must be application/json (or absent): data is a usage event")
    if "data_base64" in ce:
        raise v.invalid("data_base64", "binary data is not a usage event: send data as a JSON object")
    data = ce.get("data")
    if data is None:
        raise v.invalid("data", "required: the usage event (api_key, measurements, ...)")
    if not isinstance(data, dict):
        raise v.invalid("data", "must be an object: the usage event")
    doc = dict(data)
    for attr, field, value in (("id", "event_id", event_id), ("time", "timestamp", timestamp)):
        given = doc.get(field)
        if given is not None and value is not None and _normal(field, given) != value:
            raise v.invalid(f"data.{field}", f"differs from the CloudEvent's {attr!r}: give one or the same")
        if value is not None:
            doc[field] = value
    doc.setdefault("event_type", ce["type"])
    return doc


def batch_docs(batch: Any) -> list[dict]:
    """The usage bodies of a CloudEvents batch (a JSON array), each refusal naming `[i].`."""
    if not isinstance(batch, list):
        raise v.BadRequest(400, "invalid_json", "a CloudEvents batch must be a JSON array")
    if not batch:
        raise v.BadRequest(400, "invalid_json", "a CloudEvents batch must hold at least one event")
    if len(batch) > MAX_BATCH:
        raise v.BadRequest(400, "invalid_json", f"at most {MAX_BATCH} events per batch")
    docs = []
    for i, ce in enumerate(batch):
        try:
            docs.append(usage_doc(ce))
        except v.BadRequest as e:
            raise prefixed(e, f"[{i}].") from None
    return docs


def usage_docs(media: bytes, body: Any) -> list[tuple[dict, str]]:
    """The usage bodies of a /v1/usage request by its media type, each with the prefix that names
    its fields in a refusal ('' plain JSON, 'data.' a CloudEvent, '[i].data.' in a batch)."""
    if media == CLOUDEVENT:
        return [(usage_doc(body), "data.")]
    if media == CLOUDEVENT_BATCH:
        return [(doc, f"[{i}].data.") for i, doc in enumerate(batch_docs(body))]
    return [(v.json_object(body), "")]


def _is_json(ctype: str) -> bool:
    media = ctype.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _normal(field: str, value: Any) -> Any:
    """A data field as the attribute it must equal would read (timestamps normalised to UTC)."""
    if field == "timestamp":
        try:
            return v.timestamp({"t": value}, "t")
        except v.BadRequest:
            return value
    return value

"""What the enforcer's and the admin API's OpenAPI 3.1 documents share: the error body, the
endpoint that serves a document at GET /openapi.json, and the list of routed operations a test
compares with the documented ones (the documents are written by hand, beside each service)."""
from __future__ import annotations

from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

OPENAPI_VERSION = "3.1.0"
PATH = "/openapi.json"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "A stable code (or, in the admin API, the field and the problem)."},
        "field": {"type": "string", "description": "The input at fault, when one is."},
        "message": {"type": "string", "description": "What is wrong, for a human."},
    },
}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": json_content({"$ref": "#/components/schemas/Error"})}
    if headers:
        out["headers"] = headers
    return out


def header(description: str, schema: dict[str, Any] | None = None, required: bool = False) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}, "required": required}


def openapi_route(spec: dict[str, Any]) -> Route:
    """GET /openapi.json: the document, serialised once."""
    body = orjson.dumps(spec)

    async def openapi(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Route(PATH, openapi, methods=["GET"])


def documented_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the document."""
    verbs = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    return {(m.upper(), p) for p, item in spec["paths"].items() for m in item if m in verbs}


# The web console (control/console): HTML pages and their assets for people in a browser, behind
# its own cookie login, not API operations; the admin document does not describe them.
NOT_API = "/console"


def routed_operations(app: Starlette, raw_asgi_methods: dict[str, set[str]] | None = None) -> set[tuple[str, str]]:
    """(METHOD, path) the app routes. A raw ASGI endpoint takes every method and refuses the others
    itself, so its methods are given in `raw_asgi_methods`; HEAD, which Starlette adds to GET, is not counted."""
    out = set()
    for r in app.routes:
        if r.path == NOT_API or r.path.startswith(NOT_API + "/"):
            continue
        if r.methods is None:
            out |= {(m, r.path) for m in (raw_asgi_methods or {}).get(r.path, set())}
        else:
            out |= {(m, r.path) for m in r.methods if m != "HEAD"}
    return out

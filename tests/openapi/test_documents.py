"""The OpenAPI documents say what the apps route, and each app serves its own at /openapi.json."""
import httpx

from enforcer.app import create_app as create_enforcer
from enforcer.openapi import SPEC as ENFORCER_SPEC
from control.http.app import create_app as create_admin
from control.http.openapi import SPEC as ADMIN_SPEC
from tollgate.config import Settings
from tollgate.openapi import documented_operations, routed_operations

# The raw ASGI endpoints take any method and answer 405 to the others themselves (GET /v1/check:
# forward-auth proxies, enforcer.forward_auth).
ENFORCER_RAW = {"/v1/check": {"GET", "POST"}, "/v1/usage": {"POST"}}


def test_enforcer_document_lists_exactly_the_routes():
    hot = create_enforcer(Settings())  # HotPath: /v1/check straight, the rest to the Starlette app
    assert documented_operations(ENFORCER_SPEC) == routed_operations(hot.app, ENFORCER_RAW)
    assert [r.endpoint for r in hot.app.routes if r.path == "/v1/check"] == [hot.check]


def test_admin_document_lists_exactly_the_routes():
    assert documented_operations(ADMIN_SPEC) == routed_operations(create_admin(Settings(admin_token="t")))


def test_route_agreement_notices_an_undocumented_route():
    app = create_admin(Settings(admin_token="t"))
    spec = {**ADMIN_SPEC, "paths": {k: v for k, v in ADMIN_SPEC["paths"].items() if k != "/admin/plans"}}
    assert routed_operations(app) - documented_operations(spec) == {("GET", "/admin/plans"), ("POST", "/admin/plans")}


async def test_both_serve_their_document_without_a_token():
    admin = create_admin(Settings(admin_token="secret"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=admin), base_url="http://admin") as c:
        r = await c.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == ADMIN_SPEC and r.json()["openapi"].startswith("3.1")
    enforcer = create_enforcer(Settings())  # no lifespan: /openapi.json needs no Redis
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=enforcer), base_url="http://enf") as c:
        r = await c.get("/openapi.json")
    assert r.status_code == 200 and r.json() == ENFORCER_SPEC


def test_documents_are_valid_openapi_3_1():
    import schemathesis  # noqa: PLC0415
    # The OpenAPI 3.1 meta-schema (as published by the OAI) that schemathesis ships.
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR  # noqa: PLC0415

    for spec in (ENFORCER_SPEC, ADMIN_SPEC):
        errors = [f"{list(e.instance_path)}: {e.message}" for e in OPENAPI_31_VALIDATOR.iter_errors(spec)]
        assert not errors, errors
        schema = schemathesis.openapi.from_dict(spec)
        ops = [r.ok() for r in schema.get_all_operations()]  # .ok() raises on an invalid operation
        assert len(ops) == len(documented_operations(spec))

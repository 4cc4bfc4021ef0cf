"""The console's routes under /console: login and logout, the pages (overview, customer, plan,
simulator), their live JSON (/console/live/...), and the static assets. Mounted by
control.http.app beside the admin API, which keeps its bearer auth; these routes authenticate by
the console's cookie (control.console.auth) instead."""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from control.console import auth, data, pages
from control.errors import ControlError
from tollgate.backends import Backends

log = logging.getLogger("tollgate.console")

STATIC = Path(__file__).parent / "static"
# Our own files only: no inline script, no third-party origin, no framing.
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
           "X-Content-Type-Options": "nosniff"}


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status, headers=HEADERS)


def _json(obj, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json", headers=HEADERS)


def routes(token: str, backends: Backends) -> list[BaseRoute]:
    csrf = auth.csrf_token(token) if token else ""

    def page(render: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """A read page: the session cookie, else the login page (303)."""
        async def endpoint(request: Request) -> Response:
            if not token:
                return _html(pages.login("The console is disabled: set TOLLGATE_ADMIN_TOKEN."), 503)
            if not auth.signed_in(request, token):
                return RedirectResponse("/console/login", 303, headers=HEADERS)
            try:
                return await render(request)
            except ControlError as e:
                return _html(pages.page("Not found" if e.status == 404 else "Refused",
                                        f'<p class="error" role="alert">{pages.escape(str(e))}</p>', csrf), e.status)
        endpoint.__name__ = render.__name__
        return endpoint

    def live(build: Callable[[Request], Awaitable[dict]]) -> Callable[[Request], Awaitable[Response]]:
        """A page's live JSON: 401 without the session (the script then goes to the login page)."""
        async def endpoint(request: Request) -> Response:
            if not token or not auth.signed_in(request, token):
                return _json({"error": "not signed in", "field": "cookie"}, 401)
            try:
                found = await build(request)
                return _json({k: v for k, v in found.items() if k != "data"})
            except ControlError as e:
                return _json(e.to_json(), e.status)
        endpoint.__name__ = build.__name__
        return endpoint

    async def login_page(request: Request) -> Response:
        if token and auth.signed_in(request, token):
            return RedirectResponse("/console/", 303, headers=HEADERS)
        return _html(pages.login())

    async def login(request: Request) -> Response:
        if not token:
            return _html(pages.login("The console is disabled: set TOLLGATE_ADMIN_TOKEN."), 503)
        given = (await auth.form(request)).get("token", "").strip()
        if not auth.matches(given, token):
            return _html(pages.login("That is not the admin token."), 401)
        response = RedirectResponse("/console/", 303, headers=HEADERS)
        auth.set_session(response, request, token)
        return response

    async def logout(request: Request) -> Response:
        if not token or not await auth.csrf_ok(request, token):
            return _html(pages.login("Refused: missing or wrong CSRF token."), 403)
        response = RedirectResponse("/console/login", 303, headers=HEADERS)
        auth.clear_session(response, request)
        return response

    # ---------------------------------------------------------------- pages and their live data

    async def overview_data(request: Request) -> dict:
        db, redis = await backends.get()
        d = await data.overview(db, redis)
        return {"html": pages.overview_live(d), "data": d}

    async def overview(request: Request) -> Response:
        d = await overview_data(request)
        body = pages.live_region("/console/live/overview", d["html"])
        return _html(pages.page("Overview", body, csrf, live=True))

    async def customer_data(request: Request) -> dict:
        db, redis = await backends.get()
        d = await data.customer(db, redis, request.path_params["id"])
        return {"html": pages.customer_live(d), "charts": pages.customer_charts(d), "data": d}

    async def customer(request: Request) -> Response:
        cid = request.path_params["id"]
        d = await customer_data(request)
        url = "/console/live/customers/" + pages.quote(cid, safe="")
        body = pages.live_region(url, d["html"], pages.customer_charts_html())
        return _html(pages.page(f'Customer {d["data"]["customer"]["name"]} ({cid})', body, csrf,
                                charts=True, live=True))

    async def plan_data(request: Request) -> dict:
        db, _ = await backends.get()
        d = await data.plan(db, request.path_params["id"])
        return {"html": pages.plan_live(d), "data": d}

    async def plan(request: Request) -> Response:
        pid = request.path_params["id"]
        d = await plan_data(request)
        body = pages.live_region("/console/live/plans/" + pages.quote(pid, safe=""), d["html"])
        return _html(pages.page(f'Plan {d["data"]["plan"]["name"]} ({pid})', body, csrf, live=True))

    async def simulator(request: Request) -> Response:
        return _html(pages.page("Billing simulator", pages.simulator_form(csrf), csrf))

    async def simulate(request: Request) -> Response:
        if not token or not await auth.csrf_ok(request, token):
            return _html(pages.login("Refused: missing or wrong CSRF token."), 403)
        form = await auth.form(request)
        draft, period, who = form.get("plan", ""), form.get("period", "").strip(), form.get("customers", "")
        try:
            doc = pages.yaml.safe_load(draft) if draft.strip() else None
        except pages.yaml.YAMLError as e:
            status, answer = 400, {"error": f"the draft plan is not YAML or JSON: {e}", "field": "plan"}
        else:
            body = {"plan": doc, "period": period}
            names = [c.strip() for c in who.split(",") if c.strip()]
            if names:
                body["customers"] = names
            # the admin API's own route, in process, with the admin token: one implementation
            transport = httpx.ASGITransport(app=request.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://console.internal", timeout=60,
                                         headers={"authorization": f"Bearer {token}"}) as client:
                r = await client.post("/admin/simulate", json=body)
            status = r.status_code
            try:
                answer = r.json()
            except ValueError:
                answer = r.text
        html = pages.simulator_form(csrf, draft, period, who) + pages.simulator_result(status, answer)
        return _html(pages.page("Billing simulator", html, csrf), 200 if status < 500 else 502)

    return [
        Route("/console", lambda request: RedirectResponse("/console/", 307), methods=["GET"]),
        Route("/console/login", login_page, methods=["GET"]),
        Route("/console/login", login, methods=["POST"]),
        Route("/console/logout", logout, methods=["POST"]),
        Route("/console/", page(overview), methods=["GET"]),
        Route("/console/customers/{id}", page(customer), methods=["GET"]),
        Route("/console/plans/{id}", page(plan), methods=["GET"]),
        Route("/console/simulator", page(simulator), methods=["GET"]),
        Route("/console/simulator", simulate, methods=["POST"]),
        Route("/console/live/overview", live(overview_data), methods=["GET"]),
        Route("/console/live/customers/{id}", live(customer_data), methods=["GET"]),
        Route("/console/live/plans/{id}", live(plan_data), methods=["GET"]),
        Mount("/console/static", StaticFiles(directory=STATIC), name="console-static"),
    ]

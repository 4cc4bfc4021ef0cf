"""The web console (control/console) in Debian's chromium against the real services: login, every
page, its numbers against the admin API's, live refresh after a usage report, keyboard-only use,
CSRF, and a screenshot of each page under artifacts/console/."""
from __future__ import annotations

import re
import time
from decimal import Decimal

import httpx
import pytest_asyncio

from tests.console.conftest import TOKEN, screenshot
from tests.stack import uid

PLAN = """\
id: {id}
name: Console demo
currency: USD
billing_mode: prepaid
limits:
  requests_per_minute: 600
  tokens_per_minute: 1000000
  monthly_spend_cap: "50.00"
minimum_commit: "10.00"
charges:
  - id: requests
    model: per_unit
    metric: requests
    unit_price: "0.01"
  - id: input_tokens
    model: per_unit
    metric: input_tokens
    unit_price: "0.00001"
    prices_by:
      dimension: model
      prices:
        gpt-4o: "0.00002"
  - id: tool_calls
    model: per_unit
    metric: tool_calls
    unit_price: "0.005"
    prices_by:
      dimension: tool
      prices:
        web_search: "0.02"
"""


class Demo:
    def __init__(self, stack, plan_id: str, cid: str, api_key: str):
        self.stack, self.plan_id, self.cid, self.api_key = stack, plan_id, cid, api_key

    async def report(self, model: str, used: dict, props: dict | None = None) -> None:
        """One request through the real enforcer: /v1/check, then its usage report (202)."""
        dims = {"model": model, **(props or {})}
        decision = await self.stack.check(self.api_key, dims, {"input_tokens": used.get("input_tokens", 1)})
        assert decision["decision"] == "ALLOW", decision
        await self.stack.usage(self.api_key, decision["hold_id"], "llm.completion", dims, used)

    async def rated(self, events: int) -> None:
        async def done() -> bool:
            u = await self.stack.call("GET", f"/admin/customers/{self.cid}/usage?metric=requests")
            return sum(t["events"] for t in u["totals"]) == events
        await self.stack.until(done, f"{events} events rated")


@pytest_asyncio.fixture(scope="module")
async def demo(stack) -> Demo:
    plan_id = uid("console")
    await stack.call("POST", "/admin/plans", content=PLAN.format(id=plan_id).encode(),
                     headers={"content-type": "application/yaml"})
    cid = await stack.customer(plan_id, "100.00")
    team = await stack.team(cid, "Research")
    app = await stack.app(cid, team, "agent", "Scout", max_in_flight=5)
    _, api_key = await stack.key(cid, app)
    d = Demo(stack, plan_id, cid, api_key)
    await d.report("gpt-4o", {"requests": 1, "input_tokens": 1000})
    await d.report("gpt-4o-mini", {"requests": 1, "input_tokens": 500})
    await d.report("gpt-4o", {"requests": 1, "tool_calls": 2}, {"tool": "web_search"})
    await d.rated(3)
    return d


async def text(page, selector: str) -> str:
    return (await page.locator(selector).inner_text()).strip()


# --------------------------------------------------------------------------- auth and CSRF


async def _log_in(client: httpx.AsyncClient) -> None:
    r = await client.post("/console/login", data={"token": TOKEN})
    assert r.status_code == 303 and r.headers["location"] == "/console/", r.text


async def test_login_sets_an_httponly_strict_cookie_and_pages_need_it(stack, demo):
    async with httpx.AsyncClient(base_url=stack.control.url, timeout=10) as anon:
        r = await anon.get("/console")
        assert (r.status_code, r.headers["location"]) == (307, "/console/")
        r = await anon.get("/console/")
        assert (r.status_code, r.headers["location"]) == (303, "/console/login")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert (await anon.get(f"/console/live/customers/{demo.cid}")).status_code == 401
        assert (await anon.get(f"/console/customers/{demo.cid}")).status_code == 303
        wrong = await anon.post("/console/login", data={"token": "not-the-token"})
        assert wrong.status_code == 401 and "not the admin token" in wrong.text
        assert "set-cookie" not in wrong.headers
        ok = await anon.post("/console/login", data={"token": TOKEN})
        assert ok.status_code == 303 and TOKEN not in ok.headers["location"]  # never a token in a URL
        cookie = ok.headers["set-cookie"]
        assert re.search(r"(?i)\bHttpOnly\b", cookie) and re.search(r"(?i)SameSite=Strict", cookie), cookie
        assert "Path=/console" in cookie and "Secure" not in cookie  # plain http on loopback: not Secure
        # the admin API keeps its bearer auth: the console's cookie opens nothing there
        assert (await anon.get("/admin/customers")).status_code == 401


async def test_state_changes_without_the_csrf_token_are_refused(stack, demo):
    async with httpx.AsyncClient(base_url=stack.control.url, timeout=10) as client:
        await _log_in(client)
        page = await client.get("/console/")
        assert page.status_code == 200
        csrf = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text).group(1)
        for path in ("/console/logout", "/console/simulator"):
            assert (await client.post(path, data={})).status_code == 403, path
            assert (await client.post(path, data={"csrf": "0" * 64})).status_code == 403, path
        assert (await client.post("/console/logout", headers={"x-csrf-token": "bad"})).status_code == 403
        # another site's form cannot carry the cookie (SameSite=Strict) nor know the token; ours can:
        out = await client.post("/console/logout", data={"csrf": csrf})
        assert (out.status_code, out.headers["location"]) == (303, "/console/login")
        assert 'tollgate_console=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
    # the CSRF token of one admin token is useless with another session's cookie
    async with httpx.AsyncClient(base_url=stack.control.url, timeout=10,
                                 cookies={"tollgate_console": "guess"}) as forged:
        assert (await forged.post("/console/logout", data={"csrf": csrf})).status_code == 403


# --------------------------------------------------------------------------- pages


async def test_overview_ranks_customers_with_the_apis_numbers(page, stack, demo):
    tree = await stack.call("GET", f"/admin/customers/{demo.cid}/tree")
    row = page.locator("#customers tbody tr", has=page.locator(f'a[href="/console/customers/{demo.cid}"]'))
    assert await row.locator('[data-col="spend"]').inner_text() == tree["spend"]
    assert await row.locator('[data-col="spend_cap"]').inner_text() == tree["spend_cap"]
    assert Decimal(tree["spend_cap"]) == 50
    assert Decimal(tree["spend"]) > 0
    assert re.fullmatch(r"\d+\.\d %", await text(page, "#fail-open-rate")), await text(page, "#fail-open-rate")
    assert re.fullmatch(r"[\d.]+ s", await text(page, "#rater-lag"))
    await screenshot(page, "overview")


async def test_customer_page_shows_the_apis_numbers_and_charts(page, stack, demo):
    await page.goto(f"/console/customers/{demo.cid}")
    tree = await stack.call("GET", f"/admin/customers/{demo.cid}/tree")
    wallet = await stack.call("GET", f"/admin/customers/{demo.cid}/wallet")
    preview = await stack.call("GET", f"/admin/customers/{demo.cid}/preview")
    assert await text(page, "#spend") == tree["spend"]
    assert await text(page, "#spend-cap") == tree["spend_cap"]
    assert await text(page, "#balance") == wallet["balance"]
    assert await text(page, "#available") == wallet["available"]
    assert await text(page, "#preview-total") == preview["total"]
    assert await text(page, "#commit") == preview["minimum_commit"]
    assert Decimal(preview["minimum_commit"]) == 10
    usage = await stack.call("GET", f"/admin/customers/{demo.cid}/usage?group_by=model&from={preview['period_start'][:10]}")
    want = sorted((r["dimensions"]["model"], r["metric"], str(r["quantity"]), r["amount"]) for r in usage["rows"])
    got = []
    for row in await page.locator("#usage-by-model tbody tr").all():
        got.append(tuple([await row.locator(f'[data-col="{c}"]').inner_text()
                          for c in ("model", "metric", "quantity", "amount")]))
    got.sort()
    assert got == want and len(want) >= 3
    tools = await page.locator('#usage-by-tool [data-col="tool"]').all_inner_texts()
    assert "web_search" in tools
    assert "Scout" in await text(page, "#tree")
    # the charts are drawn by the vendored Chart.js, served by us
    for canvas in ("chart-spend", "chart-model", "chart-tool"):
        await page.wait_for_function(f"() => window.Chart && Chart.getChart('{canvas}') !== undefined")
    points = await page.evaluate("() => Chart.getChart('chart-spend').data.datasets[0].data.at(-1)")
    assert abs(points - float(tree["spend"])) < 1e-6  # the last point is the period's spend
    await screenshot(page, "customer")


async def test_customer_page_shows_denials_by_reason_as_the_api(page, stack, demo):
    """A DENY leaves no hold: the rater counts decisions from the bus (rater.decisions)."""
    denied = await stack.check(demo.api_key, {"model": "gpt-4o"}, {"input_tokens": 2_000_000}, expect=429)
    assert denied["reason"] == "rate_limited_tokens"

    async def counted() -> bool:
        d = (await stack.call("GET", f"/admin/customers/{demo.cid}/decisions"))["decisions"]
        return any(r["decision"] == "DENY" and r["reason"] == "rate_limited_tokens" for r in d)
    await stack.until(counted, "the DENY counted")
    api = (await stack.call("GET", f"/admin/customers/{demo.cid}/decisions?hours=24"))["decisions"]
    assert any(r["decision"] == "ALLOW" and r["reason"] == "ok" and r["count"] >= 3 for r in api), api
    await page.goto(f"/console/customers/{demo.cid}")
    got = sorted([tuple([await row.locator(f'[data-col="{c}"]').inner_text() for c in ("decision", "reason", "count")])
                  for row in await page.locator("#decisions tbody tr").all()])
    assert got == sorted((r["decision"], r["reason"], str(r["count"])) for r in api)
    r = await stack.admin.get(f"/admin/customers/{demo.cid}/decisions?hours=0")
    assert (r.status_code, r.json()["field"]) == (422, "hours")


async def test_customer_page_follows_a_usage_report_within_2_s_without_reload(page, stack, demo):
    await page.goto(f"/console/customers/{demo.cid}")
    before = await text(page, "#spend")
    await page.evaluate("() => { window.__same_document = true; }")  # gone if the page reloads
    await page.wait_for_function("() => document.getElementById('live-status').textContent.includes('updated')")
    started = time.monotonic()
    await demo.report("gpt-4o", {"requests": 1, "input_tokens": 250})
    await page.wait_for_function(f"() => document.getElementById('spend').textContent.trim() !== '{before}'",
                                 timeout=2000)
    elapsed = time.monotonic() - started
    print(f"customer page followed the usage report in {elapsed:.3f} s")
    assert elapsed < 2.0, elapsed
    assert await page.evaluate("() => window.__same_document === true")
    tree = await stack.call("GET", f"/admin/customers/{demo.cid}/tree")
    assert await text(page, "#spend") == tree["spend"]


async def test_plan_page_shows_the_document_version_and_customers(page, stack, demo):
    await page.goto(f"/console/plans/{demo.plan_id}")
    plan = await stack.call("GET", f"/admin/plans/{demo.plan_id}")
    assert await text(page, "#version") == str(plan["version"])
    assert f"id: {demo.plan_id}" in await text(page, "#plan-document")
    assert demo.cid in await page.locator('#plan-customers [data-col="id"]').all_inner_texts()
    await screenshot(page, "plan")


async def test_plan_page_lists_the_versions_as_the_api(page, stack):
    pid = uid("versioned")
    for price in ("0.01", "0.01", "0.03"):  # the second apply changes nothing: no version
        await stack.call("POST", "/admin/plans", content=PLAN.format(id=pid).replace('"0.01"', f'"{price}"').encode(),
                         headers={"content-type": "application/yaml"})
    versions = (await stack.call("GET", f"/admin/plans/{pid}/versions"))["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert [c["unit_price"] for c in versions[0]["document"]["charges"] if c["id"] == "requests"] == ["0.03"]
    await page.goto(f"/console/plans/{pid}")
    shown = await page.locator('#plan-versions [data-col="version"]').all_inner_texts()
    assert shown == ["2", "1"]
    r = await stack.admin.get("/admin/plans/nope/versions")
    assert (r.status_code, r.json()["field"]) == (404, "plan_id")


async def test_simulator_posts_the_draft_and_shows_the_answer(page, stack, demo):
    import yaml  # noqa: PLC0415

    draft = PLAN.format(id=demo.plan_id).replace('"0.01"', '"0.02"')
    period = time.strftime("%Y%m", time.gmtime())
    await page.goto("/console/simulator")
    await page.get_by_label("Draft plan (YAML or JSON)").fill(draft)
    await page.get_by_label("Period (YYYYMM)").fill(period)
    await page.get_by_label("Customers", exact=False).fill(demo.cid)
    await page.get_by_role("button", name="Simulate").press("Enter")
    await page.wait_for_selector("#sim-result")
    # the same request straight to the admin API: the page shows its answer
    api = await stack.admin.post("/admin/simulate", json={"plan": yaml.safe_load(draft), "period": period,
                                                          "customers": [demo.cid]})
    result = await text(page, "#sim-result")
    if api.status_code == 404:  # the simulator route is not on this control plane yet: said plainly
        assert "not available" in result and "404" in result
    elif api.status_code >= 400:
        assert f"refused ({api.status_code})" in result, result
    else:
        rows = next((v for v in api.json().values() if isinstance(v, list) and v and isinstance(v[0], dict)), [])
        assert await page.locator("#sim-rows tbody tr").count() == max(1, len(rows))
    await screenshot(page, "simulator")


async def test_pages_work_with_the_keyboard_alone(page, demo):
    await page.keyboard.press("Tab")
    assert await page.evaluate("() => document.activeElement.textContent.trim()") == "Skip to main content"
    outline = await page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # the focus is visible
    await page.keyboard.press("Enter")
    assert await page.evaluate("() => document.activeElement.id") == "main"

    async def tab_to(href: str, limit: int = 200) -> None:
        for _ in range(limit):
            await page.keyboard.press("Tab")
            if await page.evaluate("() => document.activeElement.getAttribute('href')") == href:
                return
        raise AssertionError(f"Tab never reached {href}")

    await tab_to(f"/console/customers/{demo.cid}")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"**/console/customers/{demo.cid}")
    await tab_to(f"/console/plans/{demo.plan_id}")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"**/console/plans/{demo.plan_id}")
    await tab_to("/console/simulator")
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/console/simulator")
    # log out with the keyboard: the button is a real button in a form carrying the CSRF token
    for _ in range(20):
        await page.keyboard.press("Tab")
        if await page.evaluate("() => document.activeElement.textContent.trim()") == "Log out":
            break
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/console/login")


def test_without_the_chart_library_the_pages_say_so_and_keep_the_tables(monkeypatch, tmp_path):
    from control.console import pages  # noqa: PLC0415

    monkeypatch.setattr(pages, "VENDOR_CHART", tmp_path / "missing.js")
    assert "Charts are off" in pages.customer_charts_html()
    html = pages.page("Customer", "<table id='t'></table>", "c" * 64, charts=True, live=True)
    assert "chart.umd" not in html and "console.js" in html and "<table id='t'>" in html

"""The console in a real browser: Debian's chromium (/usr/bin/chromium, never a downloaded one)
driven by Playwright for Python, against the real `tollgate-control`, enforcer and `tollgate-rater`
on loopback (tests.stack), PostgreSQL and a Redis of the module's own.
Screenshots of each page go to artifacts/console/ (git-ignored; CI keeps them as artefacts)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import pytest_asyncio

from tests.stack import running_stack

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "console"
CHROMIUM = os.environ.get("TOLLGATE_CHROMIUM", "/usr/bin/chromium")
TOKEN = "console-admin-token"
# As the machine's probe starts it: headless, no sandbox (root), nothing reaching the internet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest_asyncio.fixture(scope="module")
async def stack(pg_dsn):
    async with running_stack(pg_dsn, TOKEN) as s:
        yield s


@pytest_asyncio.fixture(scope="module")
async def browser():
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: scripts/test installs Debian's chromium (scripts/_venv.sh)")
    from playwright.async_api import async_playwright  # noqa: PLC0415

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest_asyncio.fixture
async def page(browser, stack):
    """A fresh browser context, logged in through the login page with the keyboard."""
    context = await browser.new_context(base_url=stack.control.url, viewport={"width": 1280, "height": 900})
    pg = await context.new_page()
    await pg.goto("/console/")
    assert pg.url.endswith("/console/login"), pg.url  # no cookie: the login page
    await pg.get_by_label("Admin token").fill(TOKEN)
    await pg.keyboard.press("Enter")
    await pg.wait_for_url("**/console/")
    try:
        yield pg
    finally:
        await context.close()


async def screenshot(pg, name: str) -> None:
    await pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

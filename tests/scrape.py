"""Scraping a real /metrics endpoint over HTTP, for tests."""
from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

# Sample names a metric family of each type exposes (prometheus_client's text format).
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "gauge": ("",), "info": ("_info",),
            "stateset": ("",), "enum": ("",), "unknown": ("",)}


class Scrape:
    """One scrape: sample values by (name, labels), and every family declared (samples or not)."""

    def __init__(self, text: str):
        self.samples: dict[tuple[str, frozenset], float] = {}
        self.names: set[str] = set()
        for fam in text_string_to_metric_families(text):
            self.names.update(fam.name + s for s in SUFFIXES.get(fam.type, ("",)))
            for s in fam.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 when it does not exist (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def labelled(self, name: str) -> dict[frozenset, float]:
        return {lab: v for (n, lab), v in self.samples.items() if n == name}


async def scrape(url: str) -> Scrape:
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(url)
    assert r.status_code == 200, r.text
    return Scrape(r.text)


async def scrape_until(url: str, cond, what: str, timeout: float = 60.0, alive=None) -> Scrape:
    """Scrape until cond(scrape) holds; `alive()` (optional) returning False stops the wait early."""
    deadline = time.monotonic() + timeout
    last: Scrape | None = None
    while True:
        try:
            last = await scrape(url)
            if cond(last):
                return last
        except httpx.HTTPError:
            pass  # not listening yet
        if alive is not None and not alive():
            raise AssertionError(f"the process exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last scrape: "
                                 f"{sorted(f'{k[0]}{dict(k[1])} {v}' for k, v in (last.samples if last else {}).items() if 'tollgate' in k[0])}")
        await asyncio.sleep(0.1)

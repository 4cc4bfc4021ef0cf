"""Per-call cost of the rate-limit headers every /v1/check answer carries (enforcer.rate_headers).

    .venv/bin/python loadtest/bench_rate_headers.py
    PYTHONPATH=<older tree> .venv/bin/python loadtest/bench_rate_headers.py   # the same for an older commit

It is imported through enforcer.checks, where older trees defined it (and newer ones import it).
Prints the best of five runs of 200,000 calls (µs per call) and the headers' bytes per answer.
"""
from __future__ import annotations

import timeit

from enforcer.checks import rate_headers

CALLS = 200_000


def main() -> None:
    args = (600, 412, 17_350, 150_000, 98_765)  # a key part-way through both budgets
    runs = [timeit.timeit(lambda: rate_headers(*args), number=CALLS) / CALLS * 1e6 for _ in range(5)]
    headers = rate_headers(*args)
    size = sum(len(k) + len(v) + 4 for k, v in headers)  # "name: value\r\n"
    print(f"rate_headers ({rate_headers.__module__}): best {min(runs):.2f} us/call "
          f"(runs {', '.join(f'{r:.2f}' for r in runs)}); {len(headers)} headers, {size} bytes")


if __name__ == "__main__":
    main()

"""The simulator's tests: usage rated by the real pipeline (tests.rater fixtures) on PostgreSQL and
Redis, periods closed by rater.periods, then simulated through the service, the admin API (in
process, over ASGI) and the `tollgate` CLI (a subprocess)."""
from __future__ import annotations

from tests.control.conftest import TOKEN, client, settings  # noqa: F401  (fixtures)
from tests.control.test_cli import cli  # noqa: F401  (fixture)
from tests.rater.conftest import make_customer, pipeline  # noqa: F401  (fixtures)

ADMIN = {"Authorization": f"Bearer {TOKEN}"}

"""The read API's tests: events rated by the real pipeline (tests.rater fixtures) on PostgreSQL and
Redis, then read through the admin API (in process, over ASGI) as an operator or a customer would."""
from __future__ import annotations

from tests.control.conftest import TOKEN, client, customer_id, plan_id, settings  # noqa: F401  (fixtures)
from tests.rater.conftest import make_customer, pipeline, plan_for  # noqa: F401  (fixtures)

ADMIN = {"Authorization": f"Bearer {TOKEN}"}

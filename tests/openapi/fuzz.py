"""Run schemathesis against a served OpenAPI document, one operation at a time, within a budget.

Checks: no 5xx, every answer as documented (status code, content type, headers, body schema),
and a request the document calls invalid is refused (never a 2xx: the document is not looser
than the validators).
Deterministic (hypothesis derandomized, no example database) and loopback only.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]
# Explore beyond the fixed CI run: TOLLGATE_FUZZ_SEED=n TOLLGATE_FUZZ_EXAMPLES=2000 scripts/test tests/openapi
SEED = os.environ.get("TOLLGATE_FUZZ_SEED")
MAX_EXAMPLES = int(os.environ.get("TOLLGATE_FUZZ_EXAMPLES", "100"))  # per operation: both services together take ~15-20 s

# A refused body over the size limit (413) is a rejection too.
CONFIG = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": [
    "400", "401", "403", "404", "405", "406", "409", "412", "413", "415", "422", "428", "429", "5xx"]}}})


def load(base_url: str):
    """The document the server itself serves, with requests going to that server."""
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=CONFIG)


def fuzz(schema, method: str, path: str, base_url: str, prepare: Callable | None = None,
         max_examples: int = MAX_EXAMPLES) -> Counter:
    """Send up to `max_examples` generated requests (valid ones, and invalid ones where the
    operation takes input) to one operation; `prepare(case)` may put real ids or a token in.
    Returns how many answers of each status came; a failed check raises (hypothesis shrinks it first)."""
    op = schema[path][method]
    strategy = op.as_strategy(GenerationMode.POSITIVE)
    if op.body or any(True for _ in op.iter_parameters()):
        strategy = st.one_of(strategy, op.as_strategy(GenerationMode.NEGATIVE))
    statuses: Counter = Counter()

    @given(case=strategy)
    @seed(int(SEED or 0))
    @settings(max_examples=max_examples, derandomize=SEED is None, database=None, deadline=None,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    def run(case):
        if prepare is not None:
            prepare(case)
        response = case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=10)
        statuses[response.status_code] += 1

    run()
    return statuses

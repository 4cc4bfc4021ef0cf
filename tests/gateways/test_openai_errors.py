"""The shared OpenAI error table covers every DENY reason check.lua can give, and is well formed."""
import re
from pathlib import Path

from gateway_plugins import openai_errors

ROOT = Path(__file__).resolve().parents[2]


def test_every_reason_of_check_lua_has_a_row():
    lua = (ROOT / "lua" / "check.lua").read_text()
    reasons = set(re.findall(r"reason, retry, level = .*?'([a-z_]+)'", lua))
    reasons |= set(re.findall(r"reason, level = '([a-z_]+)'", lua))
    reasons |= set(re.findall(r"return \{0, '([a-z_]+)'", lua))
    reasons -= {"ok", "expired", "not_provisioned"}  # an ALLOW, or the enforcer fails open: never a DENY
    assert {"rate_limited_requests", "insufficient_balance", "suspended", "margin_guard"} <= reasons
    assert reasons <= set(openai_errors.REASONS), reasons - set(openai_errors.REASONS)


def test_rows_are_well_formed_and_no_retry_matches_the_enforcer():
    from enforcer.checks import _NO_RETRY
    for reason, row in openai_errors.REASONS.items():
        assert row["status"] in (401, 402, 403, 429), reason
        assert row["type"] and row["code"] and row["message"], reason
    assert {r for r, row in openai_errors.REASONS.items() if not row["retry"]} == _NO_RETRY | {"invalid_api_key"}


def test_body_and_headers():
    body = openai_errors.error_body("insufficient_balance", level="customer")
    assert body["error"]["code"] == "insufficient_quota" and body["error"]["tollgate_level"] == "customer"
    assert openai_errors.error_headers("insufficient_balance", 5) == {"x-should-retry": "false"}
    assert openai_errors.error_headers("rate_limited_tokens", 3) == {"retry-after": "3"}
    assert openai_errors.for_reason("something_new")["status"] == 429

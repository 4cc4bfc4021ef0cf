"""The Azure APIM policy: no APIM here, so the document is parsed and its structure checked
against what the policy must do (pre-flight send-request with a timeout and ignore-error, fail open
on a null response, a DENY in OpenAI's error shape with Retry-After or x-should-retry, usage
report not awaited)."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from gateway_plugins import openai_errors
from tests.gateways.harness import ROOT

POLICY = ROOT / "gateway_plugins" / "apim" / "tollgate-policy.xml"
EXISTS_ACTIONS = {"override", "skip", "append", "delete"}


@pytest.fixture(scope="module")
def root() -> ET.Element:
    return ET.parse(POLICY).getroot()  # well-formed XML, or this raises


def expressions(root: ET.Element) -> list[str]:
    out = []
    for el in root.iter():
        for v in [*el.attrib.values(), el.text or ""]:
            v = v.strip()
            if v.startswith("@(") or v.startswith("@{"):
                out.append(v)
    return out


def balanced(expr: str) -> bool:
    pairs, stack, in_str = {")": "(", "}": "{", "]": "["}, [], False
    prev = ""
    for c in expr:
        if c == '"' and prev != "\\":
            in_str = not in_str
        elif not in_str:
            if c in "({[":
                stack.append(c)
            elif c in ")}]":
                if not stack or stack.pop() != pairs[c]:
                    return False
        prev = c
    return not stack and not in_str


def test_sections_keep_base(root):
    assert root.tag == "policies"
    assert [c.tag for c in root] == ["inbound", "backend", "outbound", "on-error"]
    for section in root:
        assert section.find("base") is not None, f"{section.tag} must keep <base />"


def test_preflight_send_request(root):
    inbound = root.find("inbound")
    sends = inbound.findall("send-request")
    assert len(sends) == 1
    sr = sends[0]
    assert sr.get("mode") == "new"
    assert sr.get("ignore-error") == "true"  # a failure leaves the variable null instead of erroring
    assert 1 <= int(sr.get("timeout")) <= 5  # seconds; the default 60 would hang every request
    var = sr.get("response-variable-name")
    assert var == "tollgateCheck"
    assert sr.findtext("set-url").strip() == "{{tollgate-sidecar-url}}/v1/check"
    assert sr.findtext("set-method").strip() == "POST"
    ct = [h for h in sr.findall("set-header") if h.get("name") == "Content-Type"]
    assert ct and ct[0].findtext("value").strip() == "application/json"
    body_var = [v for v in inbound.findall("set-variable") if v.get("name") == "tollgateCheckBody"][0].get("value")
    for field in ('"api_key"', '"request_id"', '"dimensions"', '"estimate"', '"requests"', '"input_tokens"',
                  '"output_tokens"', '"max_tokens"'):
        assert field in body_var, field
    # the check is built and sent before the decision branches
    children = list(inbound)
    decision = [c for c in children if c.tag == "choose"][-1]
    assert children.index(sr) < children.index(decision)


def _decision(root) -> ET.Element:
    return [c for c in root.find("inbound") if c.tag == "choose"][-1]


def test_null_response_fails_open(root):
    whens = _decision(root).findall("when")
    first = whens[0]
    assert re.search(r'GetValueOrDefault\("tollgateCheck"\)\s*==\s*null', first.get("condition"))
    assert first.find(".//return-response") is None  # lets the request through
    assert [h.findtext("value").strip() for h in first.findall("set-header") if h.get("name") == "X-Tollgate-Degraded"] == ["fail-open"]
    otherwise = _decision(root).find("otherwise")  # 5xx and the unexpected: fail open too
    assert otherwise is not None and otherwise.find(".//return-response") is None


def test_a_deny_answers_in_openai_s_shape_with_retry_after_or_x_should_retry(root):
    denials = [w for w in _decision(root).findall("when") if "StatusCode == 429" in w.get("condition")]
    assert len(denials) == 1
    deny = denials[0]
    variables = {v.get("name"): v.get("value") for v in deny.findall("set-variable")}
    assert {"tollgateErrorRow", "tollgateErrorBody"} <= set(variables)
    for field in ('"error"', '"message"', '"type"', '"param"', '"code"', '"tollgate_reason"', '"tollgate_level"'):
        assert field in variables["tollgateErrorBody"], field
    retry, no_retry = deny.find("choose/when"), deny.find("choose/otherwise")
    assert '["retry"]' in retry.get("condition") and 'ContainsKey("Retry-After")' in retry.get("condition")
    rr = retry.find("return-response")
    assert rr.find("set-status").get("code") == "429"
    names = {h.get("name"): h.findtext("value") for h in rr.findall("set-header")}
    assert 'GetValueOrDefault("Retry-After"' in names["Retry-After"] and "x-should-retry" not in names
    rr = no_retry.find("return-response")
    assert '["status"]' in rr.find("set-status").get("code")  # 402 / 403 / 429 from the table
    names = {h.get("name"): h.findtext("value") for h in rr.findall("set-header")}
    assert names["x-should-retry"].strip() == "false" and "Retry-After" not in names
    for rr in (retry.find("return-response"), no_retry.find("return-response")):
        names = {h.get("name") for h in rr.findall("set-header")}
        assert {"X-RateLimit-Limit", "X-RateLimit-Remaining-Requests", "X-RateLimit-Reset-Tokens", "RateLimit-Policy",
                "RateLimit", "Content-Type"} <= names
        assert "tollgateErrorBody" in rr.findtext("set-body")


def test_the_policy_s_table_mirrors_openai_errors_json(root):
    row = [v for v in root.iter("set-variable") if v.get("name") == "tollgateErrorRow"][0].get("value")
    found = {m[0]: {"status": int(m[1]), "type": m[2], "code": m[3], "retry": m[4] == "true", "message": m[5]}
             for m in re.findall(r'\{ "(\w+)", new JObject\(new JProperty\("status", (\d+)\), new JProperty\("type", "([^"]*)"\), '
                                 r'new JProperty\("code", "([^"]*)"\), new JProperty\("retry", (true|false)\), '
                                 r'new JProperty\("message", "([^"]*)"\)\) \}', row)}
    assert found == openai_errors.REASONS
    d = openai_errors.DEFAULT
    assert (f'new JProperty("status", {d["status"]}), new JProperty("type", "{d["type"]}"), '
            f'new JProperty("code", "{d["code"]}")') in row and d["message"] in row


def test_unauthorized_and_bad_requests_are_denied_not_failed_open(root):
    whens = _decision(root).findall("when")
    unauth = [w for w in whens if "StatusCode == 401" in w.get("condition")]
    assert unauth and unauth[0].find("return-response/set-status").get("code") == "401"
    bad = [w for w in whens if "StatusCode >= 400" in w.get("condition")]
    assert bad and bad[0].find("return-response/set-status").get("code") == "400"
    # the missing-key check answers before any call
    first_choose = root.find("inbound").find("choose")
    assert first_choose.find("when/return-response/set-status").get("code") == "401"


def test_allow_forwards_the_hold_id(root):
    allow = [w for w in _decision(root).findall("when") if "StatusCode == 200" in w.get("condition")][0]
    names = [h.get("name") for h in allow.findall("set-header")]
    assert "X-Tollgate-Hold-Id" in names and "X-Tollgate-Request-Id" in names
    deleted = [h.get("name") for h in root.find("inbound").findall("set-header") if h.get("exists-action") == "delete"]
    assert {"X-Tollgate-Hold-Id", "X-Tollgate-Request-Id", "X-Tollgate-Degraded"} <= set(deleted)


def test_outbound_headers_and_usage_report(root):
    outbound = root.find("outbound")
    headers = {h.get("name") for h in outbound.iter("set-header")}
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "RateLimit-Policy", "RateLimit",
            "X-RateLimit-Limit-Requests", "X-RateLimit-Reset-Requests", "X-RateLimit-Limit-Tokens",
            "X-RateLimit-Remaining-Tokens"} <= headers
    reports = outbound.findall("send-one-way-request")  # fire and forget: the client does not wait
    assert len(reports) == 1
    rep = reports[0]
    assert rep.findtext("set-url").strip() == "{{tollgate-sidecar-url}}/v1/usage"
    assert rep.findtext("set-method").strip() == "POST"
    body = rep.findtext("set-body")
    for field in ('"event_id"', '"api_key"', '"correlation_id"', '"hold_id"', '"event_type"', '"timestamp"',
                  '"measurements"', '"metric"', '"value"', '"usage"', '"prompt_tokens"', '"input_tokens"'):
        assert field in body, field
    assert not root.find("inbound").findall("send-one-way-request")


def test_expressions_are_well_formed(root):
    exprs = expressions(root)
    assert len(exprs) > 20
    for e in exprs:
        assert balanced(e), e
    for el in root.iter("set-header"):
        assert el.get("exists-action") in EXISTS_ACTIONS, el.attrib
    for el in root.iter("set-status"):
        assert el.get("code").isdigit() or el.get("code").startswith("@(")

"""The Azure APIM policy: no APIM here, so the document is parsed and its structure checked
against what the policy must do (pre-flight send-request with a timeout and ignore-error, fail open
on a null response, 429 with Retry-After, usage report not awaited)."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

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


def test_429_branch_with_retry_after(root):
    denials = [w for w in _decision(root).findall("when") if "StatusCode == 429" in w.get("condition")]
    assert denials
    with_retry = denials[0]
    rr = with_retry.find("return-response")
    assert rr.find("set-status").get("code") == "429"
    retry = [h for h in rr.findall("set-header") if h.get("name") == "Retry-After"]
    assert retry and 'Headers.GetValueOrDefault("Retry-After"' in retry[0].findtext("value")
    assert "tollgateCheck" in rr.findtext("set-body")  # the enforcer's JSON reason goes to the client
    for w in denials:
        assert w.find("return-response/set-status").get("code") == "429"


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
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "RateLimit-Policy", "RateLimit"} <= headers
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
        assert el.get("code").isdigit()

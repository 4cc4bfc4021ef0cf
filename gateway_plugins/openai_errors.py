"""A tollgate DENY as an OpenAI-compatible client expects it: status, error body, retry hint.

The table is `openai_errors.json` beside this module (the Lua plugin mirrors it; a test keeps them
equal). Standard library only: the Lambda@Edge package ships this module as is.
"""
from __future__ import annotations

import json
from pathlib import Path

_TABLE = json.loads((Path(__file__).resolve().parent / "openai_errors.json").read_text())
REASONS: dict[str, dict] = _TABLE["reasons"]
DEFAULT: dict = _TABLE["default"]


def for_reason(reason: str | None) -> dict:
    """The row of a reason (status, type, code, retry, message); unknown reasons get the default."""
    return REASONS.get(reason or "", DEFAULT)


def error_body(reason: str | None, message: str | None = None, level: str | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}} (+ tollgate's reason/level)."""
    row = for_reason(reason)
    error = {"message": message or row["message"], "type": row["type"], "param": None, "code": row["code"],
             "tollgate_reason": reason}
    if level:
        error["tollgate_level"] = level
    return {"error": error}


def error_headers(reason: str | None, retry_after_s: int | None = None) -> dict[str, str]:
    """x-should-retry: false where waiting cannot cure it; Retry-After where it can."""
    row = for_reason(reason)
    if not row["retry"]:
        return {"x-should-retry": "false"}
    return {"retry-after": str(max(1, retry_after_s))} if retry_after_s else {}

"""Token counts of the usage blocks LiteLLM hands its callbacks (standard library only, so the
tests read them without LiteLLM installed)."""
from __future__ import annotations

import math


def _count(v) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else 0


def field(obj, name: str):
    """A field of a usage block, whether LiteLLM gives it as an object or a dict."""
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def usage_measurements(usage) -> dict[str, int] | None:
    """tollgate metrics of a usage block, cached prompt tokens apart from the uncached ones (as the
    Kong plugin reports them). Chat/completions (`prompt_tokens`, which LiteLLM counts cache reads
    and writes into) and the Responses API (`input_tokens` with `input_tokens_details`) include the
    cached tokens in the prompt; Anthropic's messages (`input_tokens` beside
    `cache_read_input_tokens`) do not."""
    if usage is None:
        return None
    prompt, completion = field(usage, "prompt_tokens"), field(usage, "completion_tokens")
    anthropic = prompt is None and field(usage, "input_tokens_details") is None and (
        field(usage, "cache_read_input_tokens") is not None or field(usage, "cache_creation_input_tokens") is not None)
    if prompt is None:
        prompt, completion = field(usage, "input_tokens"), field(usage, "output_tokens")
    if prompt is None and completion is None:
        return None
    details = field(usage, "prompt_tokens_details") or field(usage, "input_tokens_details")
    cached = _count(field(details, "cached_tokens")) or _count(field(usage, "cache_read_input_tokens"))
    written = _count(field(usage, "cache_creation_input_tokens")) or _count(field(details, "cache_creation_tokens"))
    uncached = _count(prompt) if anthropic else max(_count(prompt) - cached - written, 0)
    out = {"input_tokens": uncached, "output_tokens": _count(completion)}
    if cached:
        out["cache_read_tokens"] = cached
    if written:
        out["cache_write_tokens"] = written
    return out

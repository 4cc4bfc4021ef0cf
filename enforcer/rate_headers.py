"""The rate-limit headers of every /v1/check reply (ALLOW, DENY and fail-open), in three dialects:

- `X-RateLimit-Limit/Remaining/Reset`: requests per minute, reset in whole seconds (the old
  de-facto convention; kept for clients and gateways that read it).
- OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`: what OpenAI-compatible SDKs and
  tools read; resets as Go durations ("1s", "6m0s", "20ms"), the format OpenAI's API sends.
- The IETF draft's (draft-ietf-httpapi-ratelimit-headers) `RateLimit-Policy` and `RateLimit`:
  one policy item per budget, `"requests"` (no `qu`: the draft's default unit is requests) and
  `"tokens"` with `qu="tokens"`: the draft's registry has no unit for LLM tokens, and without a
  `qu` a client reads the quota as requests. A client that does not know the unit ignores that
  policy instead of counting it as 10,000 requests. No `pk` (optional): the quota's partition is
  the API key the client sent, which it knows already.

Built as byte strings once per reply: integer formatting only, no dict or str round trips.
"""
from __future__ import annotations

WINDOW_MS = 60_000  # both budgets are per minute (GCRA over one minute, lua/check.lua)


def go_duration(ms: int) -> bytes:
    """Milliseconds as Go's time.Duration prints them (OpenAI's reset format): 0s, 20ms, 1.5s, 6m0s, 1h0m0s."""
    if ms < 1000:
        return b"%dms" % ms if ms > 0 else b"0s"
    s, frac = divmod(ms, 1000)
    sec = b"%d" % (s % 60) if not frac else (b"%d.%03d" % (s % 60, frac)).rstrip(b"0")
    if s < 60:
        return sec + b"s"
    m = s // 60
    if m < 60:
        return b"%dm%bs" % (m, sec)
    return b"%dh%dm%bs" % (m // 60, m % 60, sec)


def rate_headers(rpm: int, rem_r: int, reset_ms: int, tpm: int, rem_t: int) -> list[tuple[bytes, bytes]]:
    """The headers for limits of `rpm` requests and `tpm` tokens per minute with `rem_r`, `rem_t` left.

    `reset_ms`: until the requests bucket is full again (check.lua's reply); the tokens bucket's
    follows from what is left (it refills at tpm per minute).
    """
    reset_t_ms = -(-(tpm - rem_t) * WINDOW_MS // tpm) if tpm > 0 and rem_t < tpm else 0
    reset_r = -(-reset_ms // 1000)
    reset_t = -(-reset_t_ms // 1000)
    limit_r, left_r = b"%d" % rpm, b"%d" % rem_r
    return [
        (b"x-ratelimit-limit", limit_r),
        (b"x-ratelimit-remaining", left_r),
        (b"x-ratelimit-reset", b"%d" % reset_r),
        (b"x-ratelimit-limit-requests", limit_r),
        (b"x-ratelimit-remaining-requests", left_r),
        (b"x-ratelimit-reset-requests", go_duration(reset_ms)),
        (b"x-ratelimit-limit-tokens", b"%d" % tpm),
        (b"x-ratelimit-remaining-tokens", b"%d" % rem_t),
        (b"x-ratelimit-reset-tokens", go_duration(reset_t_ms)),
        (b"ratelimit-policy", b'"requests";q=%d;w=60, "tokens";q=%d;qu="tokens";w=60' % (rpm, tpm)),
        (b"ratelimit", b'"requests";r=%d;t=%d, "tokens";r=%d;t=%d' % (rem_r, reset_r, rem_t, reset_t)),
    ]

"""Enforcer-only knobs (TOLLGATE_*), beside the shared tollgate.config.Settings."""
from __future__ import annotations

from dataclasses import dataclass, field

from tollgate.config import _env  # one reader of TOLLGATE_* for both configs


@dataclass(frozen=True)
class EnforcerConfig:
    # Consecutive Redis failures that open the circuit breaker, and how long it stays open.
    breaker_failures: int = field(default_factory=lambda: int(_env("BREAKER_FAILURES", "5")))
    breaker_cooldown_s: float = field(default_factory=lambda: float(_env("BREAKER_COOLDOWN_S", "1.0")))
    # How long "this API key does not exist" is believed without asking Redis again.
    negative_cache_ttl_s: float = field(default_factory=lambda: float(_env("NEGATIVE_CACHE_TTL_S", "5")))
    # While Redis is answering (bytes flowing), a check waits at most this long for its own reply,
    # then fails open (cause "slow"); a silent Redis fails it at TOLLGATE_CHECK_DEADLINE_MS. Below
    # the gateways' own timeouts (Kong, nginx: 50 ms), so our answer is the one they act on.
    check_max_wait_ms: float = field(default_factory=lambda: float(_env("CHECK_MAX_WAIT_MS", "40")))
    # Load shedding (enforcer.loadshed): /v1/check answers 503 while the event loop's lag stays
    # above this, sample after sample, for at least the window (0: never shed).
    shed_lag_ms: float = field(default_factory=lambda: float(_env("SHED_LAG_MS", "10")))
    shed_window_ms: float = field(default_factory=lambda: float(_env("SHED_WINDOW_MS", "50")))
    # A connection with no reply for this long is dropped and reopened.
    redis_hang_timeout_s: float = field(default_factory=lambda: float(_env("REDIS_HANG_TIMEOUT_S", "0.5")))
    redis_connect_timeout_s: float = field(default_factory=lambda: float(_env("REDIS_CONNECT_TIMEOUT_S", "0.25")))
    # Decision events wait this long in memory so they go to the bus in batches.
    event_linger_ms: float = field(default_factory=lambda: float(_env("EVENT_LINGER_MS", "5")))
    # Redis Streams bus: approximate MAXLEN of tg:events (0 = never trim; consumers trim).
    stream_maxlen: int = field(default_factory=lambda: int(_env("STREAM_MAXLEN", "0")))
    # The collector was most of the p99 tail: freeze start-up objects, collect young objects rarely.
    gc_tuning: bool = field(default_factory=lambda: _env("GC_TUNING", "1") == "1")

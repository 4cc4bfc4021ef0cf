"""Settings from the environment (TOLLGATE_*), one frozen object per process."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TOLLGATE_{name}", default)


@dataclass(frozen=True)
class Settings:
    redis_url: str = field(default_factory=lambda: _env("REDIS_URL", "redis://127.0.0.1:6379/0"))
    database_url: str = field(default_factory=lambda: _env("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    bus: str = field(default_factory=lambda: _env("BUS", "redis"))  # "redis" | "kafka"
    kafka_bootstrap: str = field(default_factory=lambda: _env("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    kafka_topic: str = field(default_factory=lambda: _env("KAFKA_TOPIC", "tollgate.events"))
    # Idempotent producer: on for Apache Kafka; the Tansu test broker has none, so tests turn it off.
    kafka_idempotence: bool = field(default_factory=lambda: _env("KAFKA_IDEMPOTENCE", "1") == "1")
    # How long Redis may stay silent (no byte on the connection) before a check fails open. 10, not
    # 3: on a 2-core box shared by generator, enforcer and Redis, Redis waits for a core for over
    # 3 ms often enough to fail 0.05 % of checks open with Redis healthy; at 10 none did up to
    # saturation (BENCHMARKS.md). A dead Redis costs the first checks 10 ms until the breaker opens.
    check_deadline_ms: float = field(default_factory=lambda: float(_env("CHECK_DEADLINE_MS", "10")))
    key_cache_ttl_s: float = field(default_factory=lambda: float(_env("KEY_CACHE_TTL_S", "30")))
    spool_path: str = field(default_factory=lambda: _env("SPOOL_PATH", "./tollgate-spool.jsonl"))
    admin_token: str = field(default_factory=lambda: _env("ADMIN_TOKEN", ""))
    # How long a check's request id is remembered (its hold id, for gateway retries). A retry after
    # it is decided afresh (a second hold, released by the sweeper if no usage report names it).
    # Gateway retries come within seconds; memory is ~200 bytes x checks/s x this (docs/ARCHITECTURE.md).
    idempotency_ttl_s: int = field(default_factory=lambda: int(_env("IDEMPOTENCY_TTL_S", "60")))


def settings() -> Settings:
    return Settings()

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
    check_deadline_ms: float = field(default_factory=lambda: float(_env("CHECK_DEADLINE_MS", "3")))
    key_cache_ttl_s: float = field(default_factory=lambda: float(_env("KEY_CACHE_TTL_S", "30")))
    spool_path: str = field(default_factory=lambda: _env("SPOOL_PATH", "./tollgate-spool.jsonl"))
    admin_token: str = field(default_factory=lambda: _env("ADMIN_TOKEN", ""))
    idempotency_ttl_s: int = field(default_factory=lambda: int(_env("IDEMPOTENCY_TTL_S", "900")))


def settings() -> Settings:
    return Settings()

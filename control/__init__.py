"""The control plane: plans, customers, API keys and wallets, kept in PostgreSQL and projected
into Redis for the hot path. One service module per concept; the CLI (`tollgate ...`, see
`commands`) and the admin HTTP API (`control.http.app`) both call these services, never SQL.

Every service takes an asyncpg pool and a redis.asyncio client and returns JSON-ready dicts
(money as decimal strings, times as ISO 8601). Bad input raises `errors.ControlError` naming
the field.
"""

async def test_fixtures_give_real_redis_and_migrated_postgres(redis, pg):
    assert await redis.ping()
    names = {r["name"] for r in await pg.fetch("SELECT name FROM schema_migrations")}
    assert "0001_control_plane.sql" in names

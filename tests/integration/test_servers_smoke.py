"""The test servers themselves: real, password-protected, isolated per test."""

from __future__ import annotations

import psycopg2
import pytest
import redis

from devstack.servers import PostgresServer, RedisServer


def test_postgres_requires_password(pg_server: PostgresServer, pg_db: str) -> None:
    with psycopg2.connect(pg_server.dsn(pg_db)) as conn, conn.cursor() as cur:
        cur.execute("select current_database(), version()")
        name, version = cur.fetchone()
    assert name == pg_db and "PostgreSQL 15" in version
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(pg_server.dsn(pg_db, password="wrong"))


def test_redis_requires_password(redis_server: RedisServer) -> None:
    good = redis.Redis(host=redis_server.host, port=redis_server.port, password=redis_server.password)
    assert good.ping()
    bad = redis.Redis(host=redis_server.host, port=redis_server.port)
    with pytest.raises(redis.AuthenticationError):
        bad.set("x", "1")

"""Shared fixtures: one real PostgreSQL and one real Redis per test session, a fresh database
and Redis key prefix per test, and a Config pointing at them."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
import redis

from devstack.servers import PostgresServer, RedisServer
from facusync.config import Config, config_from_mapping

# The stand-in's GETDATE(), the workloads and the daemons all read "local time": make it the
# SOURCE_TIMEZONE default's zone (west of UTC) for every process of the session, whatever the
# host's is, so the clocks agree as at a real site on every machine. On a UTC host they used
# to disagree by four hours and every row looked four hours ahead: a newest-version defect
# (LEAST skipping NULLs) passed there, and failed only with TZ set to this zone.
os.environ["TZ"] = os.environ.get("FACUSYNC_TEST_TZ", "America/Santo_Domingo")
time.tzset()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture()
def pg_db(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = psycopg2.connect(pg_server.dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture()
def redis_prefix(redis_server: RedisServer) -> Iterator[str]:
    """A key prefix unique to one test; its keys are deleted afterwards."""
    prefix = "t" + uuid.uuid4().hex[:10] + ":"
    yield prefix
    client = redis.Redis(host=redis_server.host, port=redis_server.port,
                         password=redis_server.password)
    try:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
    except redis.RedisError:
        pass  # a test may have stopped or restarted the server
    finally:
        client.close()


def base_env(pg: PostgresServer, rds: RedisServer, database: str, prefix: str) -> dict[str, str]:
    """The environment a daemon would get, pointing at the test servers."""
    return {
        "MSSQL_HOST": "127.0.0.1",
        "MSSQL_PORT": "1",
        "MSSQL_USER": "facusync_ro",
        "MSSQL_PASSWORD": "unused-in-this-test",
        "PG_HOST": pg.host,
        "PG_PORT": str(pg.port),
        "PG_DATABASE": database,
        "PG_USER": pg.user,
        "PG_PASSWORD": pg.password,
        "REDIS_HOST": rds.host,
        "REDIS_PORT": str(rds.port),
        "REDIS_PASSWORD": rds.password,
        "REDIS_PREFIX": prefix,
        "LOG_FORMAT": "json",
    }


@pytest.fixture()
def env(pg_server: PostgresServer, redis_server: RedisServer, pg_db: str,
        redis_prefix: str) -> dict[str, str]:
    """A mutable environment mapping for this test's database and prefix."""
    return base_env(pg_server, redis_server, pg_db, redis_prefix)


@pytest.fixture()
def make_config(env: dict[str, str]) -> Callable[..., Config]:
    """Build a validated Config from the test environment plus overrides."""

    def build(**overrides: Any) -> Config:
        merged = dict(env)
        merged.update({k: str(v) for k, v in overrides.items()})
        return config_from_mapping(merged)

    return build


@pytest.fixture()
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A SQL Server stand-in process with an empty VW_VENTAS_SYNC; stopped afterwards."""
    from devstack.standin.harness import StandIn

    server = StandIn(tmp_path_factory.mktemp("standin"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def pipeline_env(env: dict[str, str], standin: Any) -> dict[str, str]:
    """The environment of a whole pipeline: stand-in, Redis, PostgreSQL (schema applied)."""
    from facusync.migrate import apply_migrations
    from facusync.pgconn import connect_pg

    env.update(standin.env())
    env.update({"SYNC_INTERVAL": "0.5", "SYNC_OVERLAP": "60", "MSSQL_LOGIN_TIMEOUT": "3",
                "MSSQL_QUERY_TIMEOUT": "5", "BACKOFF_MAX": "2", "CLAIM_IDLE": "2"})
    cfg = config_from_mapping(env)
    conn = connect_pg(cfg)
    try:
        list(apply_migrations(conn, cfg))
    finally:
        conn.close()
    return env

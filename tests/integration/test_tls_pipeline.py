"""The whole pipeline with all three hops encrypted and verified, end to end.

The servers accept nothing else: the SQL Server stand-in forces encryption (the whole session
over TLS, like "Force Encryption"), PostgreSQL allows only `hostssl` logins and Redis listens
only on its tls-port, so every connection the daemons and commands make (migrate, producer,
consumer, reconcile, verify, status, check) must use TLS, verified against the test CA, or the
run fails. Run on Debian 12's own python3-pymssql (FreeTDS + GnuTLS), python3-psycopg2 and
python3-redis, as the .deb does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import redis

from devstack.servers import PostgresServer, RedisServer
from devstack.standin.harness import StandIn
from devstack.tlsca import TestCA
from facusync.config import config_from_mapping
from facusync.errors import SinkError
from facusync.pgconn import connect_pg
from tests.conftest import base_env
from tests.integration.test_debian_runtime import debian

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path("/usr/lib/python3/dist-packages/pymssql").exists(),
                       reason="python3-pymssql is not installed (make deps installs it)"),
]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture()
def tls_servers(ca: TestCA) -> Iterator[tuple[PostgresServer, RedisServer]]:
    pg = PostgresServer(tls=ca.issue("pg"), tls_only=True).start()
    rds = RedisServer(tls=ca.issue("redis"), tls_only=True)
    try:
        rds.start()
        pg.psql("CREATE DATABASE facusync")
        yield pg, rds
    finally:
        rds.destroy()
        pg.destroy()


@pytest.fixture()
def standin(ca: TestCA, tmp_path: Path) -> Iterator[StandIn]:
    """The SQL Server stand-in with Force Encryption (TLS 1.2, as SQL Server 2016 offers)."""
    pair = ca.issue("sqlserver")
    server = StandIn(tmp_path / "standin", encryption="on", certificate=(pair.cert, pair.key))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def tls_env(tls_servers: tuple[PostgresServer, RedisServer], ca: TestCA,
            standin: StandIn) -> dict[str, str]:
    pg, rds = tls_servers
    env = base_env(pg, rds, "facusync", "tlspipe:")
    env.update(standin.env())
    env.update({"MSSQL_ENCRYPT": "require", "MSSQL_CA_FILE": str(ca.ca.cert),
                "PG_SSLMODE": "verify-full", "PG_SSLROOTCERT": str(ca.ca.cert),
                "REDIS_TLS": "on", "REDIS_CA_FILE": str(ca.ca.cert), "REDIS_PORT": str(rds.tls_port),
                "SYNC_INTERVAL": "0.5", "SYNC_OVERLAP": "60", "LOG_FORMAT": "json"})
    return env


def test_plaintext_is_refused_by_these_servers(tls_servers: tuple[PostgresServer, RedisServer],
                                               tls_env: dict[str, str]) -> None:
    """What makes the pipeline test below mean something: no connection gets in unencrypted."""
    pg, rds = tls_servers
    with pytest.raises(psycopg2.OperationalError, match="no encryption"):
        psycopg2.connect(pg.dsn("facusync"), sslmode="disable", connect_timeout=5)
    plaintext = config_from_mapping({**tls_env, "PG_SSLMODE": "disable", "PG_SSLROOTCERT": ""})
    with pytest.raises(SinkError) as refused:
        connect_pg(plaintext)
    assert str(refused.value) == ("PostgreSQL: the server accepts only encrypted connections: "
                                  "set PG_SSLMODE=verify-full (with PG_SSLROOTCERT) or require")
    assert rds.port == 0 and rds.tls_port
    plain = redis.Redis(host=rds.host, port=rds.tls_port, password=rds.password,
                        socket_timeout=3, socket_connect_timeout=3)
    with pytest.raises(redis.ConnectionError):
        plain.ping()


def test_pipeline_syncs_over_verified_tls(tls_env: dict[str, str], standin: StandIn) -> None:
    standin.seed(800, seed=19)

    def run(*args: str) -> str:
        out = debian(tls_env, "-m", *args)
        assert out.returncode == 0, " ".join(args) + "\n" + out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout

    run("facusync.cli", "migrate")
    run("facusync.producer", "--once")
    run("facusync.consumer", "--once")
    standin.update(standin.rows()[7]["CONDUCE"], bump=False, cliente="Ferretería Cifrada, S.R.L.")
    standin.delete(standin.rows()[8]["CONDUCE"])
    run("facusync.cli", "reconcile")
    run("facusync.consumer", "--once")
    run("facusync.cli", "verify")  # exits 0 only when PostgreSQL matches the view exactly
    # The daemons ran with --once and have stopped, so status is not healthy (exit 1 or 2), but it
    # read both servers over TLS.
    out = debian(tls_env, "-m", "facusync.cli", "status", "--json")
    assert out.returncode in (1, 2), out.stdout[-2000:] + out.stderr[-2000:]
    status = json.loads(out.stdout)
    assert status["postgresql"]["rows"] == 800

    check = debian(tls_env, "-m", "facusync.cli", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    lines = {hop: next(row for row in check.stdout.splitlines() if hop in row)
             for hop in ("SQL Server", "PostgreSQL", "Redis")}
    assert lines["SQL Server"].endswith("; encrypted (whole session), TLSv1.2, certificate verified")
    for hop in ("PostgreSQL", "Redis"):
        assert lines[hop].endswith("; TLSv1.3, certificate and host name verified"), lines[hop]
    # Every login the run made to SQL Server was a TLS session (the stand-in logs each one).
    log = standin.log_path.read_text()
    assert log.count("TLS up") >= 5 and "TLS up" in log


def test_plaintext_login_is_refused_by_the_forced_encryption_stand_in(
        tls_env: dict[str, str]) -> None:
    out = debian({**tls_env, "MSSQL_ENCRYPT": "off", "MSSQL_CA_FILE": ""}, "-m", "facusync.cli",
                 "check")
    assert out.returncode == 69
    sql = next(row for row in out.stdout.splitlines() if "SQL Server" in row)
    assert sql.startswith("FAIL") and "MSSQL_ENCRYPT" in sql, sql

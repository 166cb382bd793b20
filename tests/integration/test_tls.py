"""TLS on the PostgreSQL and Redis hops, against real servers with certificates from a test CA.

Each server is real (PostgreSQL 15 with ssl=on, redis-server 7 with a tls-port); only the
certificates change: the right CA passes and is reported as verified, and another CA, an
expired certificate, a host-name mismatch, a TLS-version mismatch and a server without TLS
each fail with one line naming the hop and the setting to change, never a password.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.servers import PostgresServer, RedisServer
from devstack.tlsca import KeyPair, TestCA
from facusync.config import config_from_mapping
from facusync.errors import QueueError, SinkError
from facusync.pgconn import connect_pg, pg_tls_state
from facusync.redisconn import connect_redis, redis_tls_state
from tests.conftest import base_env

pytestmark = pytest.mark.timeout(180)

# Server variants: which certificate, and which TLS versions the server allows.
KINDS = ("good", "expired", "wrongname", "oldtls")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("other_ca"), name="some other CA")


def _cert(ca: TestCA, kind: str) -> KeyPair:
    if kind == "expired":
        return ca.issue(kind, expired=True)
    if kind == "wrongname":
        return ca.issue(kind, ("db.example.invalid",))
    return ca.issue(kind)


@pytest.fixture(scope="module")
def tls_pg(ca: TestCA) -> Iterator[dict[str, PostgresServer]]:
    old = {"ssl_min_protocol_version": "TLSv1", "ssl_max_protocol_version": "TLSv1.1"}
    servers: dict[str, PostgresServer] = {}
    try:
        for kind in KINDS:
            settings = old if kind == "oldtls" else None
            servers[kind] = PostgresServer(tls=_cert(ca, kind), settings=settings).start()
        yield servers
    finally:
        for server in servers.values():
            server.destroy()


@pytest.fixture(scope="module")
def tls_redis(ca: TestCA) -> Iterator[dict[str, RedisServer]]:
    servers: dict[str, RedisServer] = {}
    try:
        for kind in KINDS:
            args = ("--tls-protocols", "TLSv1.1") if kind == "oldtls" else ()
            servers[kind] = RedisServer(tls=_cert(ca, kind), tls_args=args).start()
        yield servers
    finally:
        for server in servers.values():
            server.destroy()


def tls_env(pg: PostgresServer, rds: RedisServer, ca: Path) -> dict[str, str]:
    """Both hops verified against `ca`; Redis on its TLS port."""
    env = base_env(pg, rds, "postgres", "tls:")
    env.update({"PG_SSLMODE": "verify-full", "PG_SSLROOTCERT": str(ca), "REDIS_TLS": "on",
                "REDIS_CA_FILE": str(ca), "REDIS_PORT": str(rds.tls_port),
                "REDIS_CONNECT_TIMEOUT": "2", "MSSQL_LOGIN_TIMEOUT": "1"})
    return env


def check(env: dict[str, str]) -> tuple[int, dict[str, str], str]:
    """Run `facusync check`; its exit code, its line per hop, and everything it printed."""
    out = subprocess.run([sys.executable, "-m", "facusync.cli", "check"], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60)
    lines = {hop: next(row for row in out.stdout.splitlines() if hop in row)
             for hop in ("PostgreSQL", "Redis")}
    return out.returncode, lines, out.stdout + out.stderr


def test_verify_full_on_both_hops_is_encrypted_and_verified(
        tls_pg: dict[str, PostgresServer], tls_redis: dict[str, RedisServer], ca: TestCA) -> None:
    cfg = config_from_mapping(tls_env(tls_pg["good"], tls_redis["good"], ca.ca.cert))
    conn = connect_pg(cfg)
    try:
        state = pg_tls_state(conn, cfg)
    finally:
        conn.close()
    assert state.encrypted and state.verified and state.hostname_checked
    assert state.version == "TLSv1.3"
    client = connect_redis(cfg)
    try:
        assert client.set("tls:probe", "1") and client.get("tls:probe") == b"1"
        rstate = redis_tls_state(client)
    finally:
        client.close()
    assert rstate.encrypted and rstate.verified and rstate.hostname_checked
    assert rstate.version == "TLSv1.3"

    code, lines, _ = check(tls_env(tls_pg["good"], tls_redis["good"], ca.ca.cert))
    assert code == 69  # no SQL Server in this test; the other two hops are OK
    assert lines["PostgreSQL"].startswith("OK") and lines["Redis"].startswith("OK")
    assert lines["PostgreSQL"].endswith("; TLSv1.3, certificate and host name verified")
    assert lines["Redis"].endswith("; TLSv1.3, certificate and host name verified")


def test_default_prefer_encrypts_when_offered_without_verifying(
        tls_pg: dict[str, PostgresServer], pg_server: PostgresServer,
        redis_server: RedisServer) -> None:
    offered = config_from_mapping(base_env(tls_pg["good"], redis_server, "postgres", "tls:"))
    plain = config_from_mapping(base_env(pg_server, redis_server, "postgres", "tls:"))
    states = []
    for cfg in (offered, plain):
        conn = connect_pg(cfg)
        try:
            states.append(pg_tls_state(conn, cfg))
        finally:
            conn.close()
    assert states[0].describe() == "TLSv1.3, certificate NOT verified"
    assert states[1].describe() == "not encrypted"
    client = connect_redis(plain)
    try:
        assert redis_tls_state(client).describe() == "not encrypted"
    finally:
        client.close()


# case -> (PostgreSQL variant, Redis variant, CA, expected in the PostgreSQL line, ... Redis line)
FAILURES = {
    "untrusted": ("good", "good", "other", "not signed by a CA in PG_SSLROOTCERT: set PG_SSLROOTCERT",
                  "not signed by a CA in REDIS_CA_FILE: set REDIS_CA_FILE"),
    "expired": ("expired", "expired", "ca", "certificate has expired or is not yet valid: renew it "
                "(the server's ssl_cert_file)", "certificate has expired or is not yet valid: renew "
                "it (the server's tls-cert-file)"),
    "hostname": ("wrongname", "wrongname", "ca", "does not name PG_HOST=127.0.0.1: set it to a name",
                 "does not name REDIS_HOST=127.0.0.1: set it to a name"),
    "version": ("oldtls", "oldtls", "ca", "no TLS version in common with the server (facusync needs "
                "TLS 1.2 or later): allow TLSv1.2/TLSv1.3 in the server's ssl_min/max_protocol_version",
                "allow TLSv1.2/TLSv1.3 in the server's tls-protocols"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_each_tls_failure_is_one_line_naming_hop_and_setting(
        case: str, tls_pg: dict[str, PostgresServer], tls_redis: dict[str, RedisServer],
        ca: TestCA, other_ca: TestCA) -> None:
    pg_kind, redis_kind, which_ca, pg_expected, redis_expected = FAILURES[case]
    trusted = (other_ca if which_ca == "other" else ca).ca.cert
    env = tls_env(tls_pg[pg_kind], tls_redis[redis_kind], trusted)
    cfg = config_from_mapping(env)
    with pytest.raises(SinkError) as pg_failure:
        connect_pg(cfg)
    with pytest.raises(QueueError) as redis_failure:
        connect_redis(cfg)
    assert pg_expected in str(pg_failure.value) and redis_expected in str(redis_failure.value)

    code, lines, printed = check(env)
    assert code == 69
    assert lines["PostgreSQL"].startswith("FAIL PostgreSQL") and pg_expected in lines["PostgreSQL"]
    assert lines["Redis"].startswith("FAIL Redis") and redis_expected in lines["Redis"]
    assert env["PG_PASSWORD"] not in printed and env["REDIS_PASSWORD"] not in printed


def test_tls_demanded_of_a_plaintext_server_names_the_mode(
        pg_server: PostgresServer, redis_server: RedisServer, ca: TestCA) -> None:
    env = tls_env(pg_server, redis_server, ca.ca.cert)
    env.update(REDIS_PORT=str(redis_server.port), REDIS_CONNECT_TIMEOUT="0.5")  # the plaintext port
    code, lines, _ = check(env)
    assert code == 69
    assert ("TLS: the server does not speak TLS on this port: enable TLS on the server, or change "
            "PG_SSLMODE=verify-full") in lines["PostgreSQL"]
    assert "timed out during the TLS handshake: is REDIS_PORT the server's tls-port" in lines["Redis"]


def test_client_certificates_are_presented_when_the_server_demands_them(ca: TestCA,
                                                                        tmp_path: Path) -> None:
    client_ca = TestCA(tmp_path / "client-ca", name="client CA")
    pg = PostgresServer(tls=ca.issue("pg-mtls"), client_ca=client_ca.ca.cert).start()
    rds = RedisServer(tls=ca.issue("redis-mtls"), client_ca=client_ca.ca.cert)
    try:
        rds.start()
        env = tls_env(pg, rds, ca.ca.cert)
        code, lines, _ = check(env)
        assert code == 69
        assert "TLS: the server wants a client certificate it trusts: set PG_SSLCERT and PG_SSLKEY" \
            in lines["PostgreSQL"]
        assert "TLS: the server wants a client certificate it trusts: set REDIS_CERT_FILE and " \
            "REDIS_KEY_FILE" in lines["Redis"]
        mine = client_ca.issue("client", ("postgres",), client=True)  # CN = the PostgreSQL role
        env.update(PG_SSLCERT=str(mine.cert), PG_SSLKEY=str(mine.key),
                   REDIS_CERT_FILE=str(mine.cert), REDIS_KEY_FILE=str(mine.key))
        code, lines, _ = check(env)
        assert lines["PostgreSQL"].startswith("OK"), lines["PostgreSQL"]
        assert lines["Redis"].startswith("OK"), lines["Redis"]
    finally:
        rds.destroy()
        pg.destroy()

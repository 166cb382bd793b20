"""The packaged services over TLS on all three hops: CA file and client key under
/etc/facusync, read by the sandboxed units (ProtectSystem=strict, PrivateUsers=yes,
PrivateTmp=yes) as the _facusync user.

The SQL Server stand-in forces encryption, the host's PostgreSQL accepts only `hostssl`
logins with a client certificate (clientcert=verify-full), and Redis listens only on its
tls-port and demands client certificates too, so rows reach PostgreSQL only if the daemons
read the CA file and the client key where the README says to put them, and verify the
servers. Its own container (module-scoped `box`) and its own stand-in, so it never disturbs
the ordered steps of test_package.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from devstack.servers import PostgresServer, RedisServer
from devstack.standin.harness import StandIn
from devstack.tlsca import KeyPair, TestCA
from tests.system.conftest import DEB_DIR_IN_CONTAINER, REPO
from tests.system.nspawn import Container, wait_for
from tests.system.test_package import DROPINS, ENV_FILE, SERVICES, env_values, render_env, start, wait_active

ROWS = 90
CA_FILE, CERT_FILE, KEY_FILE = "/etc/facusync/ca.crt", "/etc/facusync/client.crt", "/etc/facusync/client.key"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def client_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("client_ca"), name="facusync clients CA")


@pytest.fixture(scope="module")
def client(client_ca: TestCA) -> KeyPair:
    return client_ca.issue("client", ("postgres",), client=True)  # CN = the PostgreSQL role


@pytest.fixture(scope="module")
def tls_pg(ca: TestCA, client_ca: TestCA, client: KeyPair) -> Iterator[PostgresServer]:
    server = PostgresServer(tls=ca.issue("pg"), client_ca=client_ca.ca.cert).start()
    try:
        admin = psycopg2.connect(server.dsn(), sslcert=str(client.cert), sslkey=str(client.key))
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE DATABASE facusync")
        admin.close()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def tls_rds(ca: TestCA, client_ca: TestCA) -> Iterator[RedisServer]:
    server = RedisServer(tls=ca.issue("redis"), client_ca=client_ca.ca.cert, tls_only=True).start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def tls_standin(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    pair = ca.issue("sqlserver")
    server = StandIn(tmp_path_factory.mktemp("standin-tls"), encryption="on",
                     certificate=(pair.cert, pair.key))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def synced_rows(box: Container) -> int:
    """Rows in datos_vista, as `facusync status` (over the same TLS settings) reports them."""
    out = box.run("facusync", "status", "--json", check=False, timeout=60).stdout
    return int(json.loads(out).get("postgresql", {}).get("rows", -1)) if out.strip() else -1


def test_services_sync_over_verified_tls_with_client_certificates(
        box: Container, deb_path: Path, tls_pg: PostgresServer, tls_rds: RedisServer,
        ca: TestCA, client: KeyPair, tls_standin: StandIn) -> None:
    box.run("apt-get", "install", "-y", f"{DEB_DIR_IN_CONTAINER}/{deb_path.name}",
            env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
    for drop_unit, text in DROPINS.items():
        box.write(f"/etc/systemd/system/{drop_unit}.d/50-test.conf", text)
    box.run("systemctl", "daemon-reload")
    for path, source, mode in ((CA_FILE, ca.ca.cert, "0644"), (CERT_FILE, client.cert, "0644"),
                               (KEY_FILE, client.key, "0640")):
        box.write(path, source.read_text())
        box.run("chown", "root:_facusync", path)
        box.run("chmod", mode, path)
    values = {**env_values(tls_pg, tls_rds, tls_standin), "REDIS_PORT": str(tls_rds.tls_port),
              "MSSQL_ENCRYPT": "require", "MSSQL_CA_FILE": CA_FILE,
              "PG_SSLMODE": "verify-full", "PG_SSLROOTCERT": CA_FILE, "PG_SSLCERT": CERT_FILE,
              "PG_SSLKEY": KEY_FILE, "REDIS_TLS": "on", "REDIS_CA_FILE": CA_FILE,
              "REDIS_CERT_FILE": CERT_FILE, "REDIS_KEY_FILE": KEY_FILE}
    box.write(ENV_FILE, render_env((REPO / "facusync.env.example").read_text(), values))
    box.run("facusync", "migrate", timeout=120)
    # The service user (not root) reads the key and verifies both servers.
    check = box.run("runuser", "-u", "_facusync", "--", "facusync", "check", timeout=60).stdout
    sql = next(row for row in check.splitlines() if row.startswith("OK   SQL Server"))
    assert sql.endswith("; encrypted (whole session), TLSv1.2, certificate verified"), check
    for hop in ("PostgreSQL", "Redis"):
        line = next(row for row in check.splitlines() if row.startswith(f"OK   {hop}"))
        assert line.endswith("; TLSv1.3, certificate and host name verified"), check

    tls_standin.seed(ROWS)
    start(box, *SERVICES)
    for unit in SERVICES:
        wait_active(box, unit)
    wait_for(f"{ROWS} rows in datos_vista", lambda: synced_rows(box) == ROWS, timeout=90,
             detail=lambda: synced_rows(box))
    for unit in SERVICES:
        assert wait_active(box, unit)["NRestarts"] == "0"

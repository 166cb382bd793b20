"""One stack for the NocoDB acceptance tests, per NocoDB version: the SQL Server stand-in,
Redis, PostgreSQL with our schema and roles (`facusync migrate --create-roles`), the real
producer and consumer processes connected as the sync role, and NocoDB connected by
`facusync nocodb-setup` as the NocoDB role, its workspace built."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2

from devstack.servers import PostgresServer
from devstack.stack import Stack as DevStack
from devstack.standin.harness import StandIn
from tests.nocodb.conftest import MEASUREMENTS
from tests.nocodb.harness import NocoDB

REPO = Path(__file__).resolve().parents[2]
DATABASE = "syncdb"
SYNC_PASSWORD = "sync-Pw-" + os.urandom(6).hex()
NOCODB_ROLE_PASSWORD = "nocodb-Pw-" + os.urandom(6).hex()
SEED_ROWS = 30
# Rows whose times make a wrong time zone obvious: late evening and just after midnight local
# time (next day in UTC), one with a fraction of a second (datetime's 1/300 s ticks).
TZ_ROWS = {
    "TZ-NOCHE": (datetime(2026, 11, 20, 22, 30, 15), datetime(2026, 11, 20, 23, 59, 59, 997000)),
    "TZ-MADRUGADA": (datetime(2026, 3, 1, 0, 0, 1), datetime(2026, 3, 1, 0, 15, 0, 3000)),
}

@dataclass
class Stack:
    version: str
    pg: PostgresServer
    standin: StandIn
    nocodb: NocoDB
    env_file: Path
    setup_report: dict[str, Any]
    token: str

    @property
    def base_id(self) -> str:
        return str(self.setup_report["base_id"])

    def table(self, name: str) -> str:
        return str(self.setup_report["tables"][name])

    @property
    def link_field(self) -> str:
        return str(self.setup_report["link_field"]["id"])

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = psycopg2.connect(self.pg.dsn(DATABASE))
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A planner's request, with an API token; the status is returned, not judged."""
        return self.nocodb.call(method, path, body, token=self.token, check=False)

    def row_path(self, table: str, pk: str) -> str:
        """The endpoint NocoDB's grid calls to save or delete one row."""
        return f"/api/v1/db/data/noco/{self.base_id}/{self.table(table)}/{pk}"

    def pg_log_offset(self) -> int:
        return self.pg.logfile.stat().st_size

    def pg_log_since(self, offset: int) -> str:
        with open(self.pg.logfile, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0,
             logs: Path | None = None) -> Any:
    """Poll until probe() is true; on timeout, fail with the daemons' last log lines."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = ""
            for log in sorted(logs.glob("*.log")) if logs else []:
                lines = log.read_text(errors="replace").splitlines()[-15:]
                tails += f"\n--- {log.name}\n" + "\n".join(lines)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{tails}")
        time.sleep(0.2)


def run_setup(nocodb: NocoDB, pg: PostgresServer, *args: str, coordinates: bool = True,
              **env: str) -> subprocess.CompletedProcess[str]:
    """`facusync nocodb-setup` with NocoDB's address and the database's in its environment."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if coordinates:
        base.update({"NOCODB_URL": nocodb.url, "PG_HOST": pg.host, "PG_PORT": str(pg.port),
                     "PG_DATABASE": DATABASE})
    base.update(env)
    return subprocess.run([sys.executable, "-m", "facusync.cli", "nocodb-setup", *args], env=base,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
                          cwd=REPO)


@contextlib.contextmanager
def open_stack(home: Path, workdir: Path) -> Iterator[Stack]:
    """Start everything, connect NocoDB with `facusync nocodb-setup`; tear it all down."""
    version = (home / ".complete").read_text().strip()
    dev = DevStack(workdir, database=DATABASE, prefix="nocodbtest:", overrides={
        "SYNC_INTERVAL": "0.5", "SYNC_OVERLAP": "60", "MSSQL_LOGIN_TIMEOUT": "3",
        "MSSQL_QUERY_TIMEOUT": "5", "BACKOFF_MAX": "2", "CLAIM_IDLE": "2",
        "SOURCE_TIMEZONE": "America/Santo_Domingo", "LOG_FORMAT": "json"})
    dev.sync_password, dev.nocodb_password = SYNC_PASSWORD, NOCODB_ROLE_PASSWORD
    cleanup: list[Callable[[], object]] = [dev.close]
    try:
        def seed(standin: StandIn) -> None:
            standin.seed(SEED_ROWS, seed=12)
            standin.insert([{"CONDUCE": key, "FECHA_EMISION": emitted, "ULTIMA_MODIFICACION": changed,
                             "CLIENTE": "Colmado La Madrugada"}
                            for key, (emitted, changed) in TZ_ROWS.items()])

        dev.start_servers(seed)
        dev.migrate()
        dev.write_env_file()  # the daemons run as the sync role, as installed
        dev.start_daemons()
        pg, standin = dev.pg, dev.standin
        assert pg is not None and standin is not None
        total = SEED_ROWS + len(TZ_ROWS)
        wait_for("the first load", lambda: psql_count(pg) == total, timeout=90, logs=workdir)

        nocodb = NocoDB(Path(home), pg, workdir)
        cleanup.append(nocodb.stop)
        nocodb.start()
        MEASUREMENTS[f"{version}: NocoDB start (process to first request)"] = f"{nocodb.start_seconds:.1f} s"
        MEASUREMENTS[f"{version}: NocoDB memory after start (RSS)"] = f"{nocodb.rss_mb():.0f} MB"

        started = time.monotonic()
        result = run_setup(nocodb, pg, "--json", NOCODB_EMAIL=nocodb.admin_email,
                           NOCODB_PASSWORD=nocodb.admin_password,
                           PG_NOCODB_ROLE_PASSWORD=NOCODB_ROLE_PASSWORD)
        MEASUREMENTS[f"{version}: facusync nocodb-setup (base, source, workspace)"] = \
            f"{time.monotonic() - started:.1f} s"
        assert result.returncode == 0, result.stderr + result.stdout
        for secret in (nocodb.admin_password, NOCODB_ROLE_PASSWORD):
            assert secret not in result.stdout + result.stderr
        token = nocodb.create_api_token("facusync acceptance: planner")
        yield Stack(version, pg, standin, nocodb, dev.env_file, json.loads(result.stdout), token)
        MEASUREMENTS[f"{version}: NocoDB memory at the end (RSS)"] = f"{nocodb.rss_mb():.0f} MB"
    finally:
        for step in reversed(cleanup):
            try:
                problems = step()
            except Exception as exc:  # keep tearing down the rest
                problems = [str(exc)]
            for problem in problems if isinstance(problems, list) else []:
                print(f"teardown: {problem}", file=sys.stderr)


def psql_count(pg: PostgresServer) -> int:
    try:
        return int(pg.psql("SELECT count(*) FROM datos_vista", DATABASE))
    except subprocess.CalledProcessError:
        return -1


def tracking_row(stack: Stack, conduce: str) -> dict[str, Any]:
    rows = stack.query("SELECT id, conduce, nota, ruta, trabajado, preparador FROM datos_seguimiento "
                       "WHERE conduce = %s", (conduce,))
    assert len(rows) == 1, rows
    return dict(zip(("id", "conduce", "nota", "ruta", "trabajado", "preparador"), rows[0],
                    strict=True))


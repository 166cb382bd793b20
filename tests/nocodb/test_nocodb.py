"""NocoDB acceptance: planners edit tracking rows through a real NocoDB while the sync runs.

One stack for the module: the SQL Server stand-in, Redis, PostgreSQL with our schema and roles
(`facusync migrate --create-roles`), the real producer and consumer processes connected as the
sync role, and NocoDB 0.262.5 connected by scripts/nocodb-setup as the NocoDB role. The tests
run in file order and share it; what NocoDB answers is checked against PostgreSQL's data and
PostgreSQL's log, never against NocoDB's HTTP status alone.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg2
import pytest

from tests.conftest import base_env
from tests.nocodb.conftest import MEASUREMENTS
from tests.nocodb.harness import NocoDB
from tests.servers import PostgresServer, RedisServer
from tests.standin.harness import StandIn

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "nocodb-setup"
SOURCE_TZ = ZoneInfo("America/Santo_Domingo")
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
    pg: PostgresServer
    standin: StandIn
    nocodb: NocoDB
    env_file: Path
    setup_report: dict[str, Any]
    token: str
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

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
    """scripts/nocodb-setup with NocoDB's address and the database's in its environment."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if coordinates:
        base.update({"NOCODB_URL": nocodb.url, "PG_HOST": pg.host, "PG_PORT": str(pg.port),
                     "PG_DATABASE": DATABASE})
    base.update(env)
    return subprocess.run([sys.executable, str(SETUP), *args], env=base, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)


def start_daemon(name: str, env_file: Path, workdir: Path) -> subprocess.Popen[bytes]:
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", f"facusync.{name}", "--env-file", str(env_file)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = os.environ.get("FACUSYNC_NOCODB_HOME")
    if not home or not (Path(home) / ".complete").is_file():
        pytest.fail("FACUSYNC_NOCODB_HOME does not name a finished install: run `make test-nocodb`")
    workdir = tmp_path_factory.mktemp("nocodb-stack")
    cleanup: list[Callable[[], None]] = []
    try:
        pg = PostgresServer().start()
        cleanup.append(pg.destroy)
        redis_server = RedisServer().start()
        cleanup.append(redis_server.destroy)
        standin = StandIn(workdir / "standin")
        standin.start()
        cleanup.append(standin.stop)
        pg.psql(f"CREATE DATABASE {DATABASE}")

        standin.seed(SEED_ROWS, seed=12)
        standin.insert([{"CONDUCE": key, "FECHA_EMISION": emitted, "ULTIMA_MODIFICACION": changed,
                         "CLIENTE": "Colmado La Madrugada"}
                        for key, (emitted, changed) in TZ_ROWS.items()])

        env = base_env(pg, redis_server, DATABASE, "nocodbtest:")
        env.update(standin.env())
        env.update({"SYNC_INTERVAL": "0.5", "SYNC_OVERLAP": "60", "MSSQL_LOGIN_TIMEOUT": "3",
                    "MSSQL_QUERY_TIMEOUT": "5", "BACKOFF_MAX": "2", "CLAIM_IDLE": "2",
                    "SOURCE_TIMEZONE": "America/Santo_Domingo"})
        migrate = subprocess.run(
            [sys.executable, "-m", "facusync.cli", "migrate", "--create-roles"],
            env={**os.environ, **env, "PG_SYNC_ROLE_PASSWORD": SYNC_PASSWORD,
                 "PG_NOCODB_ROLE_PASSWORD": NOCODB_ROLE_PASSWORD},
            capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL, timeout=120)
        assert migrate.returncode == 0, migrate.stderr + migrate.stdout

        # The daemons run as the sync role, as installed.
        env_file = workdir / "facusync.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in
                                    {**env, "PG_USER": "facusync_sync",
                                     "PG_PASSWORD": SYNC_PASSWORD}.items()))
        env_file.chmod(0o600)
        daemons: dict[str, subprocess.Popen[bytes]] = {}
        for name in ("consumer", "producer"):
            daemons[name] = start_daemon(name, env_file, workdir)
            cleanup.append(functools.partial(stop_process, daemons[name]))
        total = SEED_ROWS + len(TZ_ROWS)
        wait_for("the first load", lambda: psql_count(pg) == total, timeout=90, logs=workdir)

        nocodb = NocoDB(Path(home), pg, workdir)
        cleanup.append(nocodb.stop)
        nocodb.start()
        MEASUREMENTS["NocoDB start (process to first request)"] = f"{nocodb.start_seconds:.1f} s"
        MEASUREMENTS["NocoDB memory after start (RSS)"] = f"{nocodb.rss_mb():.0f} MB"

        started = time.monotonic()
        result = run_setup(nocodb, pg, "--json", NOCODB_EMAIL=nocodb.admin_email,
                           NOCODB_PASSWORD=nocodb.admin_password,
                           PG_NOCODB_ROLE_PASSWORD=NOCODB_ROLE_PASSWORD)
        MEASUREMENTS["scripts/nocodb-setup (base + source + checks)"] = \
            f"{time.monotonic() - started:.1f} s"
        assert result.returncode == 0, result.stderr + result.stdout
        for secret in (nocodb.admin_password, NOCODB_ROLE_PASSWORD):
            assert secret not in result.stdout + result.stderr
        token = nocodb.create_api_token("facusync acceptance: planner")
        yield Stack(pg, standin, nocodb, env_file, json.loads(result.stdout), token, daemons)
        MEASUREMENTS["NocoDB memory at the end (RSS)"] = f"{nocodb.rss_mb():.0f} MB"
    finally:
        for step in reversed(cleanup):
            try:
                step()
            except Exception as exc:  # keep tearing down the rest
                print(f"teardown: {exc}", file=sys.stderr)


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


# --- the tests, in order --------------------------------------------------------------------


def test_setup_script_reports_tables_key_and_link(stack: Stack, tmp_path: Path) -> None:
    report = stack.setup_report
    assert report["passed"] and report["nocodb_version"] == "0.262.5"
    assert report["base_action"] == "created" and report["source_action"] == "added"
    assert {c["what"] for c in report["checks"] if c["ok"]} >= {
        "datos_vista", "datos_seguimiento", "datos_seguimiento -> datos_vista", "v_planificacion",
        "metadata"}
    # Re-run with an API token and the settings in a file: reuses the base and source,
    # checks again, prints no secret.
    settings = tmp_path / "nocodb.env"
    settings.write_text(f"# NocoDB\nNOCODB_URL={stack.nocodb.url}\nPG_HOST='{stack.pg.host}'\n"
                        f"export PG_PORT={stack.pg.port}\nPG_DATABASE={DATABASE}\n")
    again = run_setup(stack.nocodb, stack.pg, "--check-only", "--env-file", str(settings),
                      coordinates=False, NOCODB_TOKEN=stack.token)
    assert again.returncode == 0, again.stderr + again.stdout
    assert "exists" in again.stdout and "primary key conduce" in again.stdout
    assert stack.token not in again.stdout + again.stderr
    # A wrong role password: NocoDB's connection test fails before anything is created.
    bad_password = "wrong-" + os.urandom(8).hex()
    bad = run_setup(stack.nocodb, stack.pg, "--base", "Otra", NOCODB_TOKEN=stack.token,
                    PG_NOCODB_ROLE_PASSWORD=bad_password)
    assert bad.returncode == 69, bad.stderr + bad.stdout
    assert "password authentication failed" in bad.stderr
    assert bad_password not in bad.stdout + bad.stderr
    _, bases = stack.nocodb.call("GET", "/api/v2/meta/bases")
    assert "Otra" not in [b["title"] for b in bases["list"]]


def test_nocodb_sees_primary_key_and_link(stack: Stack) -> None:
    _, vista = stack.api("GET", f"/api/v2/meta/tables/{stack.table('datos_vista')}")
    _, seg = stack.api("GET", f"/api/v2/meta/tables/{stack.table('datos_seguimiento')}")
    assert [c["column_name"] for c in vista["columns"] if c["pk"]] == ["conduce"]
    assert [c["column_name"] for c in seg["columns"] if c["pk"]] == ["id"]
    link = next(c for c in seg["columns"] if c["id"] == stack.link_field)
    assert link["uidt"] == "LinkToAnotherRecord"
    assert link["colOptions"]["type"] == "bt"
    assert link["colOptions"]["fk_related_model_id"] == stack.table("datos_vista")
    # conduce itself is a system column: NocoDB sets it only through the link.
    conduce = next(c for c in seg["columns"] if c["column_name"] == "conduce")
    assert conduce["system"] and conduce["uidt"] == "ForeignKey"
    back = [c for c in vista["columns"] if c["uidt"] == "Links"]
    assert back and back[0]["colOptions"]["fk_related_model_id"] == stack.table("datos_seguimiento")


def test_planner_edits_survive_concurrent_sync_updates(stack: Stack) -> None:
    conduce = stack.standin.rows()[5]["CONDUCE"]
    row_id = tracking_row(stack, conduce)["id"]
    final = {"nota": "Entregar antes de las 10; llamar al llegar", "ruta": "Ruta Norte 3",
             "trabajado": True, "preparador": "Ana Pérez"}
    statuses: list[int] = []

    def planner() -> None:
        """Saves one cell at a time, as NocoDB's grid does, several rounds."""
        for round_ in range(3):
            for name, value in final.items():
                value = value if round_ == 2 else (
                    not value if isinstance(value, bool) else f"{value} (borrador {round_})")
                status, _ = stack.api("PATCH", stack.row_path("datos_seguimiento", str(row_id)),
                                      {name: value})
                statuses.append(status)
                time.sleep(0.15)

    seen: set[str] = set()
    editor = threading.Thread(target=planner, name="planner")
    editor.start()
    versions = []
    try:
        for i in range(10):
            versions.append(stack.standin.update(conduce, cliente=f"Cliente versión {i}"))
            time.sleep(0.2)
            seen.update(r[0] for r in stack.query(
                "SELECT cliente FROM datos_vista WHERE conduce = %s", (conduce,)))
    finally:
        editor.join(timeout=120)
    assert statuses and all(s == 200 for s in statuses), statuses

    def synced() -> bool:
        rows = stack.query("SELECT cliente FROM datos_vista WHERE conduce = %s", (conduce,))
        return bool(rows[0][0] == "Cliente versión 9")

    wait_for("the consumer to apply the last update", synced, timeout=60,
             logs=stack.env_file.parent)
    # The consumer applied updates to this conduce while the planner was editing it.
    assert len({s for s in seen if s.startswith("Cliente versión")}) >= 2, seen
    # Both survive: the planner's four columns and the source's newest version.
    row = tracking_row(stack, conduce)
    assert {k: row[k] for k in final} == final
    (stored,) = stack.query("SELECT ultima_modificacion FROM datos_vista WHERE conduce = %s",
                            (conduce,))[0]
    assert stored.astimezone(SOURCE_TZ).replace(tzinfo=None) == versions[-1]
    # And NocoDB shows both.
    _, seen_seg = stack.api("GET", f"/api/v2/tables/{stack.table('datos_seguimiento')}/records/"
                                   f"{row_id}")
    assert {k: seen_seg[k] for k in final} == final
    _, seen_vista = stack.api("GET", f"/api/v2/tables/{stack.table('datos_vista')}/records/"
                                     f"{conduce}")
    assert seen_vista["cliente"] == "Cliente versión 9"


def test_forbidden_writes_are_refused_by_postgresql(stack: Stack) -> None:
    conduce, other = (r["CONDUCE"] for r in stack.standin.rows()[10:12])
    row_id = str(tracking_row(stack, conduce)["id"])
    seg, vista, link = stack.table("datos_seguimiento"), stack.table("datos_vista"), stack.link_field

    def snapshot() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        return (stack.query("SELECT * FROM datos_vista ORDER BY conduce"),
                stack.query("SELECT * FROM datos_seguimiento ORDER BY id"))

    before = snapshot()
    offset = stack.pg_log_offset()
    attempts = [
        # (what, method, path, body, the statement PostgreSQL must have refused)
        ("edit datos_vista (grid)", "PATCH", stack.row_path("datos_vista", conduce),
         {"cliente": "Cambiado en NocoDB"}, 'update "datos_vista"'),
        ("edit datos_vista (API)", "PATCH", f"/api/v2/tables/{vista}/records",
         [{"conduce": conduce, "facturado": True}], 'update "datos_vista"'),
        # The grid first detaches the row's tracking rows (sets their conduce to NULL).
        ("delete datos_vista (grid)", "DELETE", stack.row_path("datos_vista", conduce), None,
         'update "datos_seguimiento" set "conduce" = $1 where "conduce" = $2'),
        ("delete datos_vista (API)", "DELETE", f"/api/v2/tables/{vista}/records",
         [{"conduce": conduce}], 'delete from "datos_vista"'),
        ("move a note to another conduce", "POST",
         f"/api/v2/tables/{seg}/links/{link}/records/{row_id}", [{"conduce": other}],
         'update "datos_seguimiento" set "conduce" = (select'),
        ("unlink a note from its conduce", "DELETE",
         f"/api/v2/tables/{seg}/links/{link}/records/{row_id}", [{"conduce": conduce}],
         'update "datos_seguimiento" set "conduce" = NULL'),
        ("delete a tracking row (grid)", "DELETE", stack.row_path("datos_seguimiento", row_id),
         None, 'delete from "datos_seguimiento"'),
        ("delete a tracking row (API)", "DELETE", f"/api/v2/tables/{seg}/records",
         [{"id": int(row_id)}], 'delete from "datos_seguimiento"'),
    ]
    answers = {}
    for what, method, path, body, _ in attempts:
        answers[what] = stack.api(method, path, body)[0]
    assert snapshot() == before, "PostgreSQL's data changed"
    log = stack.pg_log_since(offset)
    refused = [line for line in log.splitlines() if "ERROR:  permission denied for table" in line]
    statements = [line for line in log.splitlines() if "STATEMENT:" in line]
    assert len(refused) >= len(attempts), log
    for what, _, _, _, statement in attempts:
        assert any(statement in line for line in statements), (what, log)
    # NocoDB 0.262.5 passes PostgreSQL's refusal on (newer ones answer 200: see the README).
    assert all(status >= 400 for status in answers.values()), answers


def test_times_equal_the_source_local_times(stack: Stack) -> None:
    vista = stack.table("datos_vista")
    for conduce in (*TZ_ROWS, stack.standin.rows()[3]["CONDUCE"]):
        source = stack.standin.row(conduce)
        assert source is not None
        _, record = stack.api("GET", f"/api/v2/tables/{vista}/records/{conduce}")
        for column in ("fecha_emision", "ultima_modificacion"):
            shown = datetime.fromisoformat(record[column])
            assert shown.utcoffset() is not None, record[column]
            local = shown.astimezone(SOURCE_TZ).replace(tzinfo=None)
            # NocoDB shows whole seconds.
            assert local == source[column.upper()].replace(microsecond=0), (column, record[column])
    # The report view agrees.
    _, view = stack.api("GET", f"/api/v2/tables/{stack.table('v_planificacion')}/records"
                               "?where=(conduce,eq,TZ-NOCHE)")
    (row,) = view["list"]
    assert datetime.fromisoformat(row["ultima_modificacion"]).astimezone(SOURCE_TZ).replace(
        tzinfo=None) == datetime(2026, 11, 20, 23, 59, 59)


def test_soft_deleted_conduce_keeps_its_tracking_row(stack: Stack) -> None:
    conduce = stack.standin.rows()[20]["CONDUCE"]
    row_id = str(tracking_row(stack, conduce)["id"])
    status, _ = stack.api("PATCH", stack.row_path("datos_seguimiento", row_id),
                          {"nota": "Cliente pidió anular; confirmar con ventas"})
    assert status == 200
    stack.standin.delete(conduce)
    result = subprocess.run([sys.executable, "-m", "facusync.cli", "--env-file", str(stack.env_file),
                             "reconcile"], capture_output=True, text=True, cwd=REPO,
                            stdin=subprocess.DEVNULL, timeout=180)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "1 tombstone" in result.stdout, result.stdout

    def flagged() -> bool:
        rows = stack.query("SELECT eliminado_en_origen FROM datos_vista WHERE conduce = %s",
                           (conduce,))
        return bool(rows and rows[0][0])

    wait_for("the consumer to apply the tombstone", flagged, timeout=60,
             logs=stack.env_file.parent)
    assert tracking_row(stack, conduce)["nota"] == "Cliente pidió anular; confirmar con ventas"
    # NocoDB shows the flagged conduce, its tracking row and the link between them.
    _, record = stack.api("GET", f"/api/v2/tables/{stack.table('datos_vista')}/records/{conduce}")
    assert record["eliminado_en_origen"] is True and record["eliminado_at"]
    _, notes = stack.api("GET", f"/api/v2/tables/{stack.table('datos_seguimiento')}/records"
                                f"?where=(conduce,eq,{conduce})")
    assert [n["nota"] for n in notes["list"]] == ["Cliente pidió anular; confirmar con ventas"]
    _, linked = stack.api("GET", f"/api/v2/tables/{stack.table('datos_seguimiento')}/links/"
                                 f"{stack.link_field}/records/{row_id}")
    assert linked["conduce"] == conduce, linked

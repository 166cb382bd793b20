"""The SQL Server stand-in, as seen by the real clients: the venv's PyPI pymssql, Debian 12's
python3-pymssql 2.2.2 (run with /usr/bin/python3 in a subprocess) and FreeTDS's tsql."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devstack.standin import schema
from devstack.standin.data import now
from devstack.standin.engine import split_batch
from devstack.standin.harness import StandIn

pymssql = pytest.importorskip("pymssql")

pytestmark = pytest.mark.timeout(180)

PROBE = Path(__file__).resolve().parents[2] / "devstack" / "standin" / "probe.py"
DEBIAN_PYTHON = "/usr/bin/python3"
ROWS = 100_000
VIEW_SELECT = (
    "SELECT [CONDUCE], [FECHA_EMISION], [FACTURADO], [NUMERO_FACTURA], [CODIGO_CLIENTE], [CLIENTE], "
    "[ULTIMA_MODIFICACION] FROM [VW_VENTAS_SYNC]"
)
KEY_ORDER = VIEW_SELECT + " ORDER BY [CONDUCE] COLLATE Latin1_General_BIN2"


def _debian_pymssql() -> bool:
    if not os.path.exists(DEBIAN_PYTHON):
        return False
    probe = subprocess.run([DEBIAN_PYTHON, "-I", "-c", "import pymssql"], capture_output=True, timeout=30)
    return probe.returncode == 0


HAVE_DEBIAN = _debian_pymssql()


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    """One stand-in for the module: 100,000 seeded rows plus the type-test rows."""
    server = StandIn(tmp_path_factory.mktemp("standin"))
    server.seed(ROWS, seed=42)
    server.insert_types([
        {"ID": 1, "C_INT": -2147483648, "C_BIGINT": 2**62, "C_BIT": True,
         "C_DECIMAL": Decimal("12345678901234.5678"), "C_NUMERIC": "-12.5",
         "C_NVARCHAR": "Ferretería Núñez, S.R.L. — €ñ", "C_VARCHAR": "Supermercado La Peña",
         "C_DATETIME": datetime(2026, 1, 2, 3, 4, 5, 998000),
         "C_DATETIME2": datetime(2026, 1, 2, 3, 4, 5, 123456), "C_FLOAT": 1.5},
        {"ID": 2},
        {"ID": 3, "C_INT": 0, "C_BIGINT": -1, "C_BIT": False, "C_DECIMAL": "0.0001",
         "C_NUMERIC": "99999999.99", "C_NVARCHAR": "", "C_VARCHAR": "", "C_FLOAT": -0.25},
    ])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def faulty(standin: StandIn) -> Iterator[StandIn]:
    """The module's stand-in, with faults cleared whatever the test does."""
    try:
        yield standin
    finally:
        standin.clear_faults()


@pytest.fixture(params=["venv", "debian"])
def client(request: pytest.FixtureRequest) -> list[str]:
    """The interpreter command for the probe: the venv's pymssql or Debian's python3-pymssql."""
    if request.param == "venv":
        return [sys.executable]
    if not HAVE_DEBIAN:
        pytest.skip("Debian's python3-pymssql is not installed (apt-get install python3-pymssql)")
    # -I: isolated mode, so nothing of the venv (PYTHONPATH, user site) leaks in.
    return [DEBIAN_PYTHON, "-I"]


def probe(cmd: list[str], server: StandIn, check: str, sql: str = "", *options: str,
          timeout: float = 120) -> dict[str, Any]:
    env = dict(os.environ, STANDIN_PASSWORD=server.password)
    env.pop("PYTHONPATH", None)
    args = [*cmd, str(PROBE), "--host", server.host, "--port", str(server.port), "--user", server.user,
            "--database", server.database, *options, check]
    if sql:
        args.append(sql)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def value(tagged: dict[str, Any] | None) -> Any:
    """Back from the probe's tagged JSON to the Python value pymssql returned."""
    if tagged is None:
        return None
    kind, raw = tagged["t"], tagged["v"]
    if kind == "datetime":
        return datetime.fromisoformat(raw)
    if kind == "Decimal":
        return Decimal(raw)
    return raw


def connect(server: StandIn, **extra: Any) -> Any:
    return pymssql.connect(**server.connect_kwargs(login_timeout=5, timeout=30, **extra))


def query(server: StandIn, sql: str) -> list[tuple[Any, ...]]:
    conn = connect(server)
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return list(cur.fetchall())
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# Both client versions


def test_connects_with_the_expected_client(client: list[str], standin: StandIn) -> None:
    result = probe(client, standin, "info")
    assert result["connected"], result
    assert "Microsoft SQL Server 2016" in result["version"]
    assert "facusync stand-in" in result["version"]
    if client[0] == DEBIAN_PYTHON:
        assert result["pymssql"] == "2.2.2"
        assert result["module"].startswith("/usr/lib/python3/dist-packages/")
    else:
        assert result["module"].startswith(sys.prefix)


def test_every_type_reads_as_the_right_python_value(client: list[str], standin: StandIn) -> None:
    result = probe(client, standin, "query", "SELECT * FROM TIPOS_PRUEBA ORDER BY ID")
    assert "error" not in result, result
    full, empty, small = result["rows"]
    kinds = [cell["t"] for cell in full]
    assert kinds == ["int", "int", "int", "bool", "Decimal", "Decimal", "str", "str", "datetime",
                     "datetime", "float"]
    values = [value(cell) for cell in full]
    assert values[:4] == [1, -2147483648, 2**62, True]
    assert values[4] == Decimal("12345678901234.5678")
    assert values[5] == Decimal("-12.50")
    assert values[6] == "Ferretería Núñez, S.R.L. — €ñ"
    assert values[7] == "Supermercado La Peña"
    assert values[8] == datetime(2026, 1, 2, 3, 4, 5, 997000)  # .998 rounds to the .997 tick
    # datetime2(7): PyPI pymssql keeps microseconds, Debian's 2.2.2 truncates to milliseconds.
    assert values[9] in (datetime(2026, 1, 2, 3, 4, 5, 123456), datetime(2026, 1, 2, 3, 4, 5, 123000))
    assert values[10] == 1.5
    assert [value(cell) for cell in empty] == [2] + [None] * 10
    assert [value(cell) for cell in small][:7] == [3, 0, -1, False, Decimal("0.0001"),
                                                   Decimal("99999999.99"), ""]


@pytest.mark.parametrize("tds_version", ["7.1", "7.2", "7.3"])
def test_older_tds_versions(client: list[str], standin: StandIn, tds_version: str) -> None:
    result = probe(client, standin, "query", "SELECT * FROM TIPOS_PRUEBA WHERE ID = 1", "--tds-version",
                   tds_version)
    assert "error" not in result, result
    row = result["rows"][0]
    assert value(row[4]) == Decimal("12345678901234.5678")
    assert value(row[6]) == "Ferretería Núñez, S.R.L. — €ñ"
    if tds_version in ("7.1", "7.2"):  # below 7.3, SQL Server sends datetime2 as text
        assert row[9] == {"t": "str", "v": "2026-01-02 03:04:05.1234560"}
    else:
        assert row[9]["t"] == "datetime"


def test_streams_100k_rows_with_fetchmany(client: list[str], standin: StandIn) -> None:
    result = probe(client, standin, "stream", KEY_ORDER, "--batch", "5000")
    assert "error" not in result, result
    assert result["rows"] == standin.count() >= ROWS
    assert result["ordered"]
    sample = [value(cell) for cell in result["sample"]]
    assert isinstance(sample[1], datetime) and isinstance(sample[2], bool)


def test_bad_password_is_operational_error(client: list[str], standin: StandIn) -> None:
    result = probe(client, standin, "info", "", "--password", "wrong-password")
    assert result["error"] == "OperationalError", result
    assert "18456" in result["message"]
    assert f"Login failed for user '{standin.user}'" in result["message"]


def test_unknown_database_is_refused(client: list[str], standin: StandIn) -> None:
    result = probe(client, standin, "info", "", "--database", "g_OTRA")
    assert result["error"] == "OperationalError", result


def test_cancel_of_unread_rows_keeps_the_connection_usable(client: list[str], standin: StandIn) -> None:
    result = probe(client, standin, "cancel", KEY_ORDER)
    assert "error" not in result, result
    assert result["partial"] == 10
    assert result["after_cancel"] == 42
    assert result["count"] == standin.count()


def test_dropped_connection_mid_result_is_an_error(client: list[str], faulty: StandIn) -> None:
    faulty.set_fault(drop_after_rows=3000)
    result = probe(client, faulty, "stream", KEY_ORDER, "--batch", "1000", "--timeout", "10")
    assert result["error"] == "OperationalError", result
    assert result["elapsed"] < 10


def test_stall_mid_result_is_an_error_not_a_hang(client: list[str], faulty: StandIn) -> None:
    faulty.set_fault(hang=True, drop_after_rows=3000)
    result = probe(client, faulty, "stream", KEY_ORDER, "--batch", "1000", "--timeout", "2",
                   timeout=90)
    assert result["error"] == "OperationalError", result
    assert result["elapsed"] < 60


def test_drop_after_rows_spares_smaller_results(faulty: StandIn) -> None:
    faulty.set_fault(drop_after_rows=500)
    assert query(faulty, "SELECT COUNT(*) FROM VW_VENTAS_SYNC") == [(faulty.count(),)]
    assert len(query(faulty, "SELECT TOP 499 * FROM VW_VENTAS_SYNC")) == 499
    with pytest.raises(pymssql.OperationalError):
        query(faulty, "SELECT TOP 500 * FROM VW_VENTAS_SYNC")
    faulty.set_fault(drop_after_rows=0)
    with pytest.raises(pymssql.OperationalError):
        query(faulty, "SELECT TOP 0 * FROM VW_VENTAS_SYNC")


def test_refused_logins(client: list[str], faulty: StandIn) -> None:
    faulty.set_fault(refuse_logins=True)
    assert probe(client, faulty, "info")["error"] == "OperationalError"
    faulty.clear_faults()
    assert probe(client, faulty, "info")["connected"]


def test_server_killed_mid_result_is_an_error(client: list[str], tmp_path: Path) -> None:
    with StandIn(tmp_path) as server:
        server.seed(20_000)
        server.set_fault(hang=True, drop_after_rows=2000)  # park the result mid-way
        runner: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: runner.update(
            probe(client, server, "stream", KEY_ORDER, "--batch", "500", "--timeout", "30")))
        thread.start()
        time.sleep(2.0)
        server.kill()
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert runner["error"] == "OperationalError", runner
        assert runner["elapsed"] < 30


# ---------------------------------------------------------------------------
# tsql (FreeTDS command line)


@pytest.mark.skipif(shutil.which("tsql") is None, reason="freetds-bin (tsql) is not installed")
def test_tsql_can_query(standin: StandIn) -> None:
    script = "SELECT COUNT(*) FROM VW_VENTAS_SYNC\ngo\nSELECT CLIENTE FROM TIPOS_PRUEBA WHERE ID = 1\ngo\n" \
             "SELECT C_NVARCHAR FROM TIPOS_PRUEBA WHERE ID = 1\ngo\nexit\n"
    done = subprocess.run(
        ["tsql", "-H", standin.host, "-p", str(standin.port), "-U", standin.user, "-P", standin.password,
         "-D", standin.database],
        input=script, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8"),
    )
    assert str(standin.count()) in done.stdout, done.stdout + done.stderr
    assert "Invalid column name 'CLIENTE'" in done.stdout + done.stderr
    assert "Ferretería Núñez" in done.stdout


# ---------------------------------------------------------------------------
# The statements facusync sends, and SQL Server semantics (venv pymssql in-process)


def test_column_discovery_with_top_0(standin: StandIn) -> None:
    for view in ("[VW_VENTAS_SYNC]", "[dbo].[VW_VENTAS_SYNC]", "g_FACU.dbo.VW_VENTAS_SYNC"):
        conn = connect(standin)
        try:
            cur = conn.cursor()
            cur.execute(f"SELECT TOP 0 * FROM {view}")
            assert [d[0] for d in cur.description] == schema.VIEW_COLUMN_NAMES
            assert cur.fetchall() == []
        finally:
            conn.close()


def test_scalars_and_counts(standin: StandIn) -> None:
    assert query(standin, "SELECT 1") == [(1,)]
    assert query(standin, "SELECT COUNT(*) FROM [VW_VENTAS_SYNC]") == [(standin.count(),)]
    assert query(standin, "SELECT COUNT_BIG(*) FROM [dbo].[VW_VENTAS_SYNC]") == [(standin.count(),)]
    (getdate, sysdatetime), = query(standin, "SELECT GETDATE(), SYSDATETIME()")
    assert abs(getdate - datetime.now()) < timedelta(seconds=5)  # local time, like SQL Server
    assert getdate.microsecond % 1000 == 0 and (getdate.microsecond // 1000) % 10 in (0, 3, 7)
    assert abs(sysdatetime - datetime.now()) < timedelta(seconds=5)


def test_incremental_poll_uses_datetime_rounding_and_order(standin: StandIn) -> None:
    base = datetime(2031, 5, 6, 7, 8, 9)
    standin.insert([
        {"CONDUCE": "R-3", "ULTIMA_MODIFICACION": base + timedelta(microseconds=998000)},  # -> .997
        {"CONDUCE": "R-1", "ULTIMA_MODIFICACION": base + timedelta(microseconds=998000)},
        {"CONDUCE": "R-2", "ULTIMA_MODIFICACION": base + timedelta(seconds=1)},
    ])
    try:
        stored = standin.row("R-1")
        assert stored is not None
        assert stored["ULTIMA_MODIFICACION"] == base + timedelta(microseconds=997000)
        rows = query(standin, f"{VIEW_SELECT} WHERE [ULTIMA_MODIFICACION] >= '2031-05-06 07:08:09.996' "
                              "ORDER BY [ULTIMA_MODIFICACION], [CONDUCE]")
        assert [r[0] for r in rows] == ["R-1", "R-3", "R-2"]
        assert rows[0][6] == base + timedelta(microseconds=997000)
        # '.998' is converted to the .997 tick, so it still matches; '.999' becomes the next second.
        same = query(standin, f"{VIEW_SELECT} WHERE [ULTIMA_MODIFICACION] = '2031-05-06 07:08:09.998'")
        assert len(same) == 2
        later = query(standin, f"{VIEW_SELECT} WHERE [ULTIMA_MODIFICACION] >= '2031-05-06 07:08:09.999'")
        assert [r[0] for r in later] == ["R-2"]
        # what pymssql sends for a datetime parameter
        conn = connect(standin)
        try:
            cur = conn.cursor()
            cur.execute(f"{VIEW_SELECT} WHERE [ULTIMA_MODIFICACION] >= %s ORDER BY [ULTIMA_MODIFICACION], "
                        "[CONDUCE]", (base + timedelta(microseconds=996500),))
            assert [r[0] for r in cur.fetchall()] == ["R-1", "R-3", "R-2"]
        finally:
            conn.close()
    finally:
        for key in ("R-1", "R-2", "R-3"):
            standin.delete(key)


def test_string_comparison_is_case_insensitive_but_bin2_orders_binary(standin: StandIn) -> None:
    keys = ["Z-1", "a-1", "É-1", "b-1"]
    standin.insert([{"CONDUCE": key} for key in keys])
    try:
        rows = query(standin, f"{VIEW_SELECT} WHERE [CONDUCE] IN (N'z-1', N'A-1')")
        assert sorted(r[0] for r in rows) == ["Z-1", "a-1"]
        ordered = [r[0] for r in query(standin, KEY_ORDER) if r[0] in keys]
        assert ordered == sorted(keys)  # code-point order, as PostgreSQL's COLLATE "C"
    finally:
        for key in keys:
            standin.delete(key)


def test_long_batches_span_several_packets(standin: StandIn) -> None:
    keys = [f"C-{n:07d}" for n in range(1, 3001)]  # about 60 KB of UTF-16: many TDS packets
    conn = connect(standin)
    try:
        cur = conn.cursor()
        cur.execute(f"{VIEW_SELECT} WHERE [CONDUCE] IN ({', '.join(['%s'] * len(keys))})", tuple(keys))
        assert sorted(r[0] for r in cur.fetchall()) == keys
    finally:
        conn.close()


def test_redeclared_column_type_is_seen_by_the_running_server(standin: StandIn) -> None:
    key = "WIDE-1"
    standin.insert([{"CONDUCE": key, "CLIENTE": "x" * 400}])
    sql = f"SELECT [CLIENTE] FROM [VW_VENTAS_SYNC] WHERE [CONDUCE] = N'{key}'"
    try:
        assert query(standin, sql) == [("x" * 150,)]  # nvarchar(150): cut like on the wire
        standin.set_column_type("CLIENTE", "nvarchar(1000)")
        assert query(standin, sql) == [("x" * 400,)]
    finally:
        standin.set_column_type("CLIENTE", "nvarchar(150)")
        standin.delete(key)


def test_decimals_are_exact(standin: StandIn) -> None:
    rows = query(standin, "SELECT C_DECIMAL, C_NUMERIC FROM TIPOS_PRUEBA WHERE ID IN (1, 3) ORDER BY ID")
    assert rows == [(Decimal("12345678901234.5678"), Decimal("-12.50")),
                    (Decimal("0.0001"), Decimal("99999999.99"))]


def test_data_changes_are_seen_while_the_server_runs(standin: StandIn) -> None:
    key = "CHG-1"
    standin.insert([{"CONDUCE": key, "CLIENTE": "Colmado Doña Inés", "FACTURADO": False}])
    try:
        where = f"{VIEW_SELECT} WHERE [CONDUCE] IN (N'{key}')"
        before = query(standin, where)[0]
        assert before[2] is False and before[3] is None and before[5] == "Colmado Doña Inés"
        version = standin.update(key, facturado=True, numero_factura="B0100000001")
        assert version is not None and version >= before[6]
        after = query(standin, where)[0]
        assert after[2] is True and after[3] == "B0100000001" and after[6] == version
        assert standin.update(key, bump=False, cliente="Ferretería Núñez") is None
        silent = query(standin, where)[0]
        assert silent[5] == "Ferretería Núñez" and silent[6] == version
        late = now() - timedelta(minutes=5)
        standin.insert_late({"CONDUCE": "LATE-X", "CLIENTE": "Tardío"}, late)
        assert query(standin, f"{VIEW_SELECT} WHERE [CONDUCE] = 'LATE-X'")[0][6] == late
        standin.delete("LATE-X")
        standin.delete(key)
        assert query(standin, where) == []
    finally:
        standin.execute("DELETE FROM VW_VENTAS_SYNC WHERE CONDUCE IN ('CHG-1', 'LATE-X')")


@pytest.mark.parametrize(("sql", "number"), [
    ("SELECT * FROM [NO_EXISTE]", 208),
    ("SELECT [NO_EXISTE] FROM [VW_VENTAS_SYNC]", 207),
    ("SELEC * FROM x WHERE", 102),
    ("INSERT INTO VW_VENTAS_SYNC (CONDUCE) VALUES ('x')", 229),
    ("SELECT * FROM VW_VENTAS_SYNC WHERE ULTIMA_MODIFICACION > 'ayer'", 241),
    ("EXEC sp_who", 2812),
])
def test_unsupported_statements_raise_and_the_connection_survives(standin: StandIn, sql: str,
                                                                  number: int) -> None:
    conn = connect(standin)
    try:
        cur = conn.cursor()
        with pytest.raises(pymssql.Error) as caught:
            cur.execute(sql)
        assert caught.value.args[0] == number, caught.value
        cur.execute("SELECT 1")
        assert cur.fetchall() == [(1,)]
    finally:
        conn.close()


def test_session_statements_are_accepted(standin: StandIn) -> None:
    conn = connect(standin, autocommit=False)
    try:
        cur = conn.cursor()
        cur.execute("SET NOCOUNT ON; SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cur.execute("use [g_FACU]")
        conn.commit()
        cur.execute("IF @@TRANCOUNT > 0 COMMIT TRAN")
        cur.execute("SELECT DB_NAME()")
        assert cur.fetchall() == [("g_FACU",)]
        cur.execute("SET NOCOUNT ON SELECT @@TRANCOUNT")  # two statements without ';'
        assert cur.fetchall() == [(0,)]  # the IF @@TRANCOUNT ... COMMIT above closed it
        conn.rollback()
    finally:
        conn.close()


def test_batch_splitting() -> None:
    assert split_batch("SET A ON;SET B ON;") == ["SET A ON", "SET B ON"]
    assert split_batch("SET NOCOUNT ON SELECT ';' AS x -- c\nFROM t") == ["SET NOCOUNT ON",
                                                                         "SELECT ';' AS x  \nFROM t"]
    assert split_batch("IF @@TRANCOUNT > 0 COMMIT TRAN") == ["IF @@TRANCOUNT > 0 COMMIT TRAN"]
    assert split_batch("SET TRANSACTION ISOLATION LEVEL READ COMMITTED") == [
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"]


def test_garbage_from_one_client_does_not_hurt_the_server(standin: StandIn) -> None:
    junk = [b"\x00" * 3, b"\x12\x01\x00\x02junk", b"\x10\x01\x00\x40" + b"\xff" * 60,
            b"GET / HTTP/1.0\r\n\r\n", b"\x01\x01\xff\xff" + b"\x00" * 100]
    for payload in junk:
        with socket.create_connection((standin.host, standin.port), timeout=5) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
    assert query(standin, "SELECT 1") == [(1,)]


def test_connections_are_independent(standin: StandIn) -> None:
    results: list[dict[str, Any]] = []

    def run() -> None:
        results.append(probe([sys.executable], standin, "stream", KEY_ORDER, "--max-rows", "30000"))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    idle = connect(standin)  # a connection that does nothing must not block the others
    try:
        for thread in threads:
            thread.join(timeout=120)
        assert [r.get("rows") for r in results] == [30000] * 3, results
    finally:
        idle.close()


# ---------------------------------------------------------------------------
# Tools: seeder CLI and workload generator


def test_seed_cli_and_workload(tmp_path: Path) -> None:
    db = tmp_path / "w.sqlite3"
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo))
    done = subprocess.run([sys.executable, "-m", "devstack.standin", "seed", "--db", str(db),
                           "--rows", "500"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    record = tmp_path / "events.jsonl"
    done = subprocess.run([sys.executable, "-m", "devstack.standin", "workload", "--db", str(db),
                           "--rate", "100", "--seconds", "1", "--deletes", "0.1", "--late", "0.1",
                           "--record", str(record)],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in record.read_text().splitlines()]
    assert 50 <= len(events) <= 110
    assert {"insert", "update"} <= {e["op"] for e in events}
    assert all(e["committed_at"] > 0 for e in events)


def test_workload_class_against_a_running_server(standin: StandIn) -> None:
    before = standin.count()
    with standin.workload(rate=200, seed=9, insert_ratio=1.0) as workload:
        time.sleep(0.5)
    inserted = [e.conduce for e in workload.events]
    try:
        assert len(inserted) >= 20
        assert query(standin, "SELECT COUNT(*) FROM VW_VENTAS_SYNC") == [(before + len(inserted),)]
    finally:
        for key in inserted:
            standin.delete(key)

"""Situation 9 of issue 16: the view gains columns of types the producer could not encode.

uniqueidentifier, time, datetimeoffset, binary and varbinary, added to the view and to
datos_vista, travel through the real pymssql client and the stand-in, Redis and PostgreSQL,
and arrive exactly (binary values byte for byte, zeros included); verify agrees. A column whose
PostgreSQL type would store it wrong, or whose SQL Server type cannot be synced, stops the
producer at start-up with exit 78 naming the column. Before: MessageError escaped the loop
(exit 70, a restart loop) and binary values reached bytea as the ASCII of their hex digits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from facusync.columns import discover_columns
from facusync.config import Config, config_from_mapping
from facusync.errors import SchemaError
from facusync.operations.verify import compare
from facusync.producer import Producer
from facusync.service import Service
from facusync.source import ViewSource
from tests.steps import pg, sync

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "devstack" / "standin" / "probe.py"
DEBIAN_PYTHON = "/usr/bin/python3"
# (view column, SQL Server type, datos_vista column type)
NEW_COLUMNS = [
    ("ID_EXTERNO", "uniqueidentifier", "uuid"),
    ("HORA_ENTREGA", "time(7)", "time"),
    ("HORA_CORTE", "time(0)", "time"),
    ("ENTREGADO_EN", "datetimeoffset(7)", "timestamptz"),
    ("FIRMA", "varbinary(64)", "bytea"),
    ("HUELLA", "binary(8)", "bytea"),
]
GUID = uuid.UUID("6F9619FF-8B86-D011-B42D-00C04FC964FF")
VALUES: list[dict[str, Any]] = [
    {"ID_EXTERNO": GUID, "HORA_ENTREGA": time(13, 14, 15, 123456), "HORA_CORTE": time(18, 0),
     "ENTREGADO_EN": datetime(2026, 3, 10, 23, 30, 0, 250000, tzinfo=timezone(timedelta(hours=-4))),
     "FIRMA": b"\x00\x01\\x\xff\x00", "HUELLA": b"\x00\x00\x09"},
    {"ID_EXTERNO": uuid.UUID(int=0), "HORA_ENTREGA": time(0, 0), "HORA_CORTE": time(23, 59, 59),
     "ENTREGADO_EN": datetime(2026, 11, 1, 1, 30, tzinfo=timezone(timedelta(hours=5, minutes=45))),
     "FIRMA": b"", "HUELLA": b"\xde\xad\xbe\xef\xde\xad\xbe\xef"},
    {},  # all NULL
]


def add_columns(cfg: Config, standin: Any, columns: list[tuple[str, str, str]]) -> None:
    """What a site does: ALTER the view (the ERP team) and datos_vista (a migration)."""
    for view_name, sql_type, pg_type in columns:
        standin.add_view_column(view_name, sql_type)
        pg(cfg, f"ALTER TABLE datos_vista ADD COLUMN {view_name.lower()} {pg_type}")


def expected(values: dict[str, Any], name: str) -> Any:
    value = values.get(name)
    if name == "HUELLA" and value is not None:
        return value.ljust(8, b"\x00")  # binary(8) is padded by SQL Server
    if name == "ENTREGADO_EN" and value is not None:
        return value.astimezone(UTC)
    if name == "ID_EXTERNO" and value is not None:
        return str(value)
    return value


def test_new_types_round_trip_exactly_and_verify_agrees(pipeline_env: dict[str, str],
                                                        standin: Any) -> None:
    standin.seed(40, seed=9)
    cfg = config_from_mapping(pipeline_env)
    add_columns(cfg, standin, NEW_COLUMNS)
    keys = [r["CONDUCE"] for r in standin.rows()[:len(VALUES)]]
    for key, values in zip(keys, VALUES, strict=True):
        if values:
            standin.set_values(key, values)
    sync(cfg)
    names = [c[0] for c in NEW_COLUMNS]
    for key, values in zip(keys, VALUES, strict=True):
        rows = pg(cfg, f"SELECT {', '.join(n.lower() for n in names)} FROM datos_vista"
                       " WHERE conduce = %s", (key,))
        assert rows, f"{key} did not arrive"
        got = dict(zip(names, rows[0], strict=True))
        for name in names:
            stored = got[name]
            if isinstance(stored, memoryview):
                stored = stored.tobytes()
            assert stored == expected(values, name), (key, name, stored)
    assert compare(cfg).differences == 0

    # A later change of one of them arrives too, and verify still agrees.
    standin.set_values(keys[2], {"FIRMA": b"\x00" * 3, "HORA_ENTREGA": "07:08:09.9999996"})
    standin.update(keys[2], cliente="cambio")
    sync(cfg)
    firma, hora = pg(cfg, "SELECT firma, hora_entrega FROM datos_vista WHERE conduce = %s",
                     (keys[2],))[0]
    assert bytes(firma) == b"\x00\x00\x00" and hora == time(7, 8, 10)
    assert compare(cfg).differences == 0


@pytest.mark.parametrize("column", [
    ("ENTREGADO_EN", "datetimeoffset(7)", "timestamp"),   # the offset would be dropped
    ("FIRMA", "varbinary(64)", "text"),                   # bytes would become hex text
    ("HUELLA", "binary(8)", "varchar(40)"),
    ("ID_EXTERNO", "uniqueidentifier", "integer"),
    ("VARIANTE", "sql_variant", "text"),                  # no faithful way at all
])
def test_a_column_that_cannot_be_synced_faithfully_stops_the_producer_with_exit_78(
        pipeline_env: dict[str, str], standin: Any, column: tuple[str, str, str]) -> None:
    standin.seed(5, seed=3)
    cfg = config_from_mapping(pipeline_env)
    add_columns(cfg, standin, [column])
    if column[1] != "sql_variant":
        standin.set_values(standin.rows()[0]["CONDUCE"], {column[0]: VALUES[0][column[0]]})
    with pytest.raises(SchemaError) as refused:
        Producer(cfg, Service("test-producer")).run_once()
    assert column[0] in str(refused.value) and column[1] in str(refused.value)
    daemon = subprocess.run([sys.executable, "-m", "facusync.producer", "--once"], cwd=REPO,
                            env={**os.environ, **pipeline_env}, capture_output=True, text=True,
                            timeout=60, check=False)
    assert daemon.returncode == 78, daemon.stdout + daemon.stderr
    assert column[0] in daemon.stdout + daemon.stderr  # the log line (stdout) names it
    assert pg(cfg, "SELECT count(*) FROM datos_vista")[0][0] == 0  # nothing stored wrong


@pytest.mark.skipif(not os.path.exists(DEBIAN_PYTHON), reason="no Debian python3")
def test_debian_pymssql_reads_the_producers_select(pipeline_env: dict[str, str], standin: Any) -> None:
    """Debian 12's pymssql 2.2.2 (what the .deb runs) reads these columns through the
    producer's own SELECT: GUIDs and bytes natively, time and datetimeoffset as text."""
    if subprocess.run([DEBIAN_PYTHON, "-I", "-c", "import pymssql"], capture_output=True,
                      timeout=30, check=False).returncode != 0:
        pytest.skip("Debian's python3-pymssql is not installed")
    standin.seed(3, seed=4)
    cfg = config_from_mapping(pipeline_env)
    add_columns(cfg, standin, NEW_COLUMNS)
    key = standin.rows()[0]["CONDUCE"]
    standin.set_values(key, VALUES[0])
    source = ViewSource(cfg)
    try:
        cols = discover_columns(cfg, source)
    finally:
        source.close()
    sql = f"SELECT {cols.select_list()} FROM [VW_VENTAS_SYNC] WHERE [CONDUCE] = '{key}'"
    env = dict(os.environ, STANDIN_PASSWORD=standin.password)
    env.pop("PYTHONPATH", None)
    done = subprocess.run([DEBIAN_PYTHON, "-I", str(PROBE), "--port", str(standin.port),
                           "--user", standin.user, "query", sql], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    got = dict(zip([d[0] for d in result["description"]], result["rows"][0], strict=True))
    assert got["ID_EXTERNO"] == {"t": "UUID", "v": repr(GUID)}
    assert got["HORA_ENTREGA"] == {"t": "str", "v": "13:14:15.1234560"}
    assert got["ENTREGADO_EN"] == {"t": "str", "v": "2026-03-10 23:30:00.2500000 -04:00"}
    assert got["FIRMA"] == {"t": "bytes", "v": "0001" + b"\\x".hex() + "ff00"}
    assert got["HUELLA"] == {"t": "bytes", "v": "0000090000000000"}

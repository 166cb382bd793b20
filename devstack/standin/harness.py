"""StandIn: start/stop the stand-in server process and change its data and faults.

Tests, benchmarks and the demo drive the stand-in through this class. Data helpers
write straight into the SQLite file from this (other) process; SQLite's WAL mode lets
the server keep streaming while they commit, like SQL Server under a live ERP.

"Now" is the local naive wall time rounded to 1/300 s, like SQL Server's GETDATE().
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from . import schema, sqltypes
from . import seed as seeding

REPO_ROOT = Path(__file__).resolve().parents[2]

_COLUMNS = {c.name: c for c in schema.VIEW_COLUMNS}


def now() -> datetime:
    """GETDATE(): local wall time, rounded to datetime's 1/300 s ticks."""
    return datetime_value(datetime.now())


def datetime_value(value: datetime | str) -> datetime:
    """The datetime SQL Server would store (and pymssql return) for this value."""
    return sqltypes.from_storage(sqltypes.DATETIME, sqltypes.datetime_text(value))  # type: ignore[no-any-return]


def local_timezone() -> str:
    """The zone of this machine's wall clock, which the stand-in's GETDATE() follows (for
    SOURCE_TIMEZONE in demos and benchmarks)."""
    from zoneinfo import ZoneInfo

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    with suppress(OSError):
        candidates.append(os.readlink("/etc/localtime").partition("zoneinfo/")[2])
    for name in candidates:
        if name:
            try:
                ZoneInfo(name)
            except (ValueError, OSError):
                continue
            return name
    return "UTC"


class StandIn:
    """A stand-in SQL Server process plus direct access to its data.

    Usable as a context manager; ``stop()`` is safe to call twice.
    """

    def __init__(
        self,
        workdir: Path | str,
        *,
        user: str = "facusync_ro",
        password: str | None = None,
        database: str = "g_FACU",
        host: str = "127.0.0.1",
        port: int = 0,
        packet_size: int | None = None,
        log_level: str = "INFO",
        encryption: str = "not_sup",
        certificate: tuple[Path, Path] | None = None,
        tls_versions: tuple[str, str] = ("1.2", "1.2"),
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.workdir / "standin.sqlite3"
        self.control_path = self.workdir / "standin-control.json"
        self.port_file = self.workdir / "standin.port"
        self.log_path = self.workdir / "standin.log"
        self.user = user
        # A fresh password per stand-in, as a real server would have its own.
        self.password = password or secrets.token_urlsafe(12)
        self.database = database
        self.host = host
        self.port = port
        self.packet_size = packet_size
        self.log_level = log_level
        # TLS: SQL Server's encryption setting ("not_sup", "off", "on"), the (cert, key)
        # files, and the lowest and highest TLS version the server accepts.
        self.encryption = encryption
        self.certificate = certificate
        self.tls_versions = tls_versions
        self.process: subprocess.Popen[bytes] | None = None
        schema.init_db(self.db_path)

    # -- process ------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Spawn ``python -m devstack.standin serve`` and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        self.port_file.unlink(missing_ok=True)
        self.control_path.unlink(missing_ok=True)
        self.clear_faults()
        cmd = [
            sys.executable, "-m", "devstack.standin", "serve",
            "--host", self.host, "--port", str(self.port), "--port-file", str(self.port_file),
            "--db", str(self.db_path), "--user", self.user, "--database", self.database,
            "--control", str(self.control_path), "--log-level", self.log_level,
        ]
        if self.packet_size:
            cmd += ["--packet-size", str(self.packet_size)]
        cmd += ["--encryption", self.encryption, "--tls-min", self.tls_versions[0],
                "--tls-max", self.tls_versions[1]]
        if self.certificate is not None:
            cmd += ["--cert", str(self.certificate[0]), "--key", str(self.certificate[1])]
        env = dict(os.environ)
        env["STANDIN_PASSWORD"] = self.password  # not on the command line (ps shows it)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log:
            # Own session: a Ctrl+C meant for the demo (or pytest) must not kill the server.
            self.process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"stand-in exited with {self.process.returncode}; see {self.log_path}")
            if self.port_file.exists():
                self.port = int(self.port_file.read_text())
                try:
                    socket.create_connection((self.host, self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"stand-in did not start within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        """Terminate the server process (kill if it lingers); safe to call twice."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (open connections see a reset)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> StandIn:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def connect_kwargs(self, **extra: Any) -> dict[str, Any]:
        """Arguments for ``pymssql.connect(**kwargs)``."""
        kwargs: dict[str, Any] = {"server": self.host, "port": self.port, "user": self.user,
                                  "password": self.password, "database": self.database}
        kwargs.update(extra)
        return kwargs

    def env(self, view: str = schema.VIEW) -> dict[str, str]:
        """facusync's MSSQL_* environment variables pointing at this stand-in."""
        return {"MSSQL_HOST": self.host, "MSSQL_PORT": str(self.port), "MSSQL_USER": self.user,
                "MSSQL_PASSWORD": self.password, "MSSQL_DATABASE": self.database, "MSSQL_VIEW": view}

    # -- faults ---------------------------------------------------------------

    def set_fault(self, *, refuse_logins: bool = False, delay: float = 0.0,
                  drop_after_rows: int | None = None, hang: bool = False,
                  clock_offset: float = 0.0) -> None:
        """Misbehave for new logins/queries, until changed or cleared.

        - ``refuse_logins``: logins fail with error 18456 (pymssql: OperationalError);
        - ``delay``: wait that many seconds before answering each login and batch;
        - ``drop_after_rows=N``: reset the connection once the N-th row of a result was
          sent (N=0: right after the column metadata); smaller results complete normally;
        - ``hang``: stop answering (the socket stays open); with ``drop_after_rows`` the
          stall starts after N rows instead of the reset. Clearing it resumes the answer;
        - ``clock_offset``: seconds added to the server's clock (GETDATE(), SYSDATETIME()...),
          e.g. -3600 for the repeated hour of a daylight-saving change.
        """
        data = self._control()
        data.update({"refuse_logins": refuse_logins, "delay": delay,
                     "drop_after_rows": drop_after_rows, "hang": hang,
                     "clock_offset": clock_offset})
        self._write_control(data)

    def _control(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.control_path.read_text() or "{}"))
        except FileNotFoundError:
            return {}

    def _write_control(self, data: dict[str, Any]) -> None:
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.control_path)  # a new inode: the server notices at once

    def clear_faults(self) -> None:
        self.set_fault()

    def set_slow_reads(self, seconds: float) -> None:
        """Answer every batch that reads rows only after ``seconds`` (0: at once again);
        independent of set_fault/clear_faults."""
        data = self._control()
        data["slow_reads"] = seconds
        self._write_control(data)

    def rename_column(self, column: str, shown_as: str | None) -> None:
        """Show a view column under another name (the ERP team renamed it), or under its own
        again with ``None``. Only the server's answers change: queries naming the old name get
        SQL Server's error 207, and the data, the harness and the workload stay as they are."""
        data = self._control()
        renamed = dict(data.get("rename_columns") or {})
        if shown_as is None:
            renamed.pop(column.upper(), None)
        else:
            renamed[column.upper()] = shown_as
        data["rename_columns"] = renamed
        self._write_control(data)

    # -- data -----------------------------------------------------------------

    def _conn(self) -> Any:
        return schema.connect(self.db_path)

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Raw SQLite escape hatch (values in storage format); returns fetched rows."""
        conn = self._conn()
        try:
            return conn.execute(sql, params).fetchall()  # type: ignore[no-any-return]
        finally:
            conn.close()

    def seed(self, rows: int, *, seed: int = 0, start: datetime | None = None,
             end: datetime | None = None, append: bool = False) -> None:
        """Replace (or extend) the view with ``rows`` realistic rows, versions in [start, end]
        (default: the last 30 days up to now)."""
        seeding.seed_view(self.db_path, rows, seed=seed, start=start, end=end, replace=not append)

    def insert(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert rows (keys: the view's column names, any case); missing dates default to now."""
        stamp = now()
        records = [_storage_row({"FECHA_EMISION": stamp, "FACTURADO": False,
                                 "ULTIMA_MODIFICACION": stamp, **_upper(row)}) for row in rows]
        self._write_rows(records)

    def _write_rows(self, records: list[list[Any]], *, upsert: bool = False) -> None:
        verb = "INSERT OR REPLACE" if upsert else "INSERT"
        placeholders = ", ".join("?" * len(schema.VIEW_COLUMNS))
        names = ", ".join(f'"{c}"' for c in schema.VIEW_COLUMN_NAMES)  # added columns stay NULL
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(f"{verb} INTO {schema.VIEW} ({names}) VALUES ({placeholders})",
                             records)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def update(self, conduce: str, *, bump: bool = True, **values: Any) -> datetime | None:
        """Change columns of one row; with ``bump`` also set ULTIMA_MODIFICACION to now
        and return it. ``bump=False`` is the change polling cannot see."""
        changes = _upper(values)
        version = None
        if bump and "ULTIMA_MODIFICACION" not in changes:
            version = changes["ULTIMA_MODIFICACION"] = now()
        if not changes:
            return None
        self._set_stored(conduce, {name: sqltypes.to_storage(_COLUMNS[name].type, value)
                                   for name, value in changes.items()})
        if "ULTIMA_MODIFICACION" in changes and version is None:
            return datetime_value(changes["ULTIMA_MODIFICACION"])
        return version

    def delete(self, conduce: str) -> None:
        conn = self._conn()
        try:
            conn.execute(f"DELETE FROM {schema.VIEW} WHERE CONDUCE = ?", (conduce,))
        finally:
            conn.close()

    def insert_late(self, row: dict[str, Any], version: datetime) -> None:
        """Commit now a row whose ULTIMA_MODIFICACION is ``version`` (in the past): the
        long transaction that the overlap window exists for. Replaces an existing key."""
        record = _storage_row({"FECHA_EMISION": version, "FACTURADO": False, **_upper(row),
                               "ULTIMA_MODIFICACION": version})
        self._write_rows([record], upsert=True)

    def rows(self, where: str = "", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """All rows (ordered by CONDUCE) as dicts of the values pymssql would return."""
        names = schema.VIEW_COLUMN_NAMES
        sql = f"SELECT {', '.join(names)} FROM {schema.VIEW} {where} ORDER BY CONDUCE COLLATE BINARY"
        return [
            {c.name: sqltypes.from_storage(c.type, v) for c, v in zip(schema.VIEW_COLUMNS, row, strict=True)}
            for row in self.execute(sql, params)
        ]

    def row(self, conduce: str) -> dict[str, Any] | None:
        found = self.rows("WHERE CONDUCE = ?", (conduce,))
        return found[0] if found else None

    def count(self) -> int:
        return int(self.execute(f"SELECT COUNT(*) FROM {schema.VIEW}")[0][0])

    def workload(self, **options: Any) -> Any:
        """A ``workload.Workload`` on this stand-in's data (not started)."""
        from .workload import Workload

        return Workload(self.db_path, **options)

    def set_column_type(self, column: str, sql_type: str, table: str = schema.VIEW) -> None:
        """Re-declare a column's SQL Server type (e.g. a wider nvarchar); the running server
        describes it so from its next query on."""
        sqltypes.parse_type(sql_type)  # refuse what the server could not put on the wire
        conn = self._conn()
        try:
            cur = conn.execute(f"UPDATE {schema.META_TABLE} SET type = ? WHERE table_name = ? "
                               "AND column_name = ?", (sql_type, table, column.upper()))
            if cur.rowcount == 0:
                raise KeyError(f"{table}.{column}")
        finally:
            conn.close()

    def add_view_column(self, column: str, sql_type: str) -> None:
        """ALTER the view to return one more column (NULL in every row until set_values)."""
        declared = sqltypes.parse_type(sql_type)
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f'ALTER TABLE {schema.VIEW} ADD COLUMN "{column.upper()}" '
                         f"{declared.sqlite_decl}")
            conn.execute(
                f"INSERT INTO {schema.META_TABLE} (table_name, ordinal, column_name, type, nullable)"
                f" SELECT ?, max(ordinal) + 1, ?, ?, 1 FROM {schema.META_TABLE}"
                " WHERE table_name = ?", (schema.VIEW, column.upper(), str(declared), schema.VIEW))
            conn.execute("COMMIT")
        finally:
            conn.close()

    def set_values(self, conduce: str, values: dict[str, Any]) -> None:
        """Set columns of one row by their declared types (added columns too); no version bump."""
        declared = {c.name: c.type for c in self.view_columns()}
        self._set_stored(conduce, {name.upper(): sqltypes.to_storage(declared[name.upper()], value)
                                   for name, value in values.items()})

    def _set_stored(self, conduce: str, stored: dict[str, Any]) -> None:
        """UPDATE one row with values already in storage form (KeyError: no such conduce)."""
        sets = ", ".join(f'"{name}" = ?' for name in stored)
        conn = self._conn()
        try:
            cur = conn.execute(f"UPDATE {schema.VIEW} SET {sets} WHERE CONDUCE = ?",
                               [*stored.values(), conduce])
            if cur.rowcount == 0:
                raise KeyError(conduce)
        finally:
            conn.close()

    def view_columns(self) -> list[schema.Column]:
        """The view's declared columns now (tests may have added some)."""
        conn = self._conn()
        try:
            return schema.load_metadata(conn)[schema.VIEW.upper()]
        finally:
            conn.close()

    def insert_types(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert rows into TIPOS_PRUEBA (the one-column-per-type table)."""
        cols = schema.TYPES_COLUMNS
        records = []
        for row in rows:
            upper = _upper(row)
            records.append([sqltypes.to_storage(c.type, upper.get(c.name)) for c in cols])
        conn = self._conn()
        try:
            conn.executemany(
                f"INSERT INTO {schema.TYPES_TABLE} VALUES ({', '.join('?' * len(cols))})", records)
        finally:
            conn.close()


def _upper(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        name = key.upper()
        if name not in _COLUMNS and name not in {c.name for c in schema.TYPES_COLUMNS}:
            raise KeyError(f"unknown column {key!r}")
        out[name] = value
    return out


def _storage_row(row: dict[str, Any]) -> list[Any]:
    if not row.get("CONDUCE"):
        raise ValueError("a row needs CONDUCE")
    return [sqltypes.to_storage(c.type, row.get(c.name)) for c in schema.VIEW_COLUMNS]

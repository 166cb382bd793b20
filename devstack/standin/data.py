"""The stand-in's data, changed and read straight in its SQLite file.

Tests, benchmarks and the demo play the ERP through this: insert, update, delete, commit
late, reshape the view. It writes from the test's process; SQLite's WAL mode lets the
server keep streaming while these commit, like SQL Server under a live ERP.

"Now" is the local naive wall time rounded to 1/300 s, like SQL Server's GETDATE().
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from . import schema, sqltypes
from . import seed as seeding

_COLUMNS = {c.name: c for c in schema.VIEW_COLUMNS}


def now() -> datetime:
    """GETDATE(): local wall time, rounded to datetime's 1/300 s ticks."""
    return datetime_value(datetime.now())


def datetime_value(value: datetime | str) -> datetime:
    """The datetime SQL Server would store (and pymssql return) for this value."""
    return sqltypes.from_storage(sqltypes.DATETIME, sqltypes.datetime_text(value))  # type: ignore[no-any-return]


class ViewData:
    """Direct access to the rows and declared columns of one stand-in's SQLite file."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        schema.init_db(self.db_path)

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
        """Delete one row (what reconcile's tombstones exist for)."""
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
        """One row as pymssql would return it, or None."""
        found = self.rows("WHERE CONDUCE = ?", (conduce,))
        return found[0] if found else None

    def count(self) -> int:
        """How many rows the view has now."""
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

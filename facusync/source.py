"""Reading the SQL Server view: column discovery and streamed, parameterized queries.

Identifiers come from validated configuration and are bracket-quoted; values always travel
as parameters. Results are fetched in FETCH_SIZE slices so memory stays flat whatever the
size of the view.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pymssql

from facusync.config import Config
from facusync.errors import SchemaError, SourceError
from facusync.mssqlconn import connect_mssql, describe_mssql_error
from facusync.sourcetypes import AS_TEXT, PARSERS, base_type

log = logging.getLogger("facusync.source")

# Columns of datos_vista that the sync manages itself; never taken from the view.
BOOKKEEPING_COLUMNS = frozenset(
    {"sync_id", "created_at", "updated_at", "eliminado_en_origen", "eliminado_at"}
)


def quote_ident(name: str) -> str:
    """Bracket-quote an identifier already validated by config (schema.name allowed)."""
    return ".".join("[" + part.replace("]", "]]") + "]" for part in name.split("."))


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """Which view columns are synced, and the lower-case names they travel under."""

    view_names: tuple[str, ...]  # as the view spells them, in select order
    names: tuple[str, ...]  # lower-case, as in the message and in PostgreSQL
    key_index: int
    version_index: int
    ignored: tuple[str, ...]  # view columns the table lacks
    # Table columns the view lacks (renamed or dropped in the view): not synced; PostgreSQL
    # keeps their last values until the view has them again.
    missing: tuple[str, ...] = ()
    # SQL Server base type of each synced column ("" when unknown), as ``names``.
    source_types: tuple[str, ...] = ()

    def select_list(self) -> str:
        """The SELECT list: time and datetimeoffset as SQL Server's text (see sourcetypes)."""
        out = []
        for i, name in enumerate(self.view_names):
            if self.source_types and self.source_types[i] in AS_TEXT:
                out.append(f"CAST({quote_ident(name)} AS varchar(40)) AS {quote_ident(name)}")
            else:
                out.append(quote_ident(name))
        return ", ".join(out)

    def converters(self) -> list[tuple[int, Callable[[str], Any]]]:
        """(index, parser) for the columns selected as text."""
        return [(i, PARSERS[t]) for i, t in enumerate(self.source_types) if t in AS_TEXT]


def map_columns(
    view_columns: Sequence[str], table_columns: Sequence[str], key: str, version: str,
    view_types: Mapping[str, str] | None = None,
) -> ColumnMap:
    """Synced columns = the ones the view and the table share, compared case-insensitively."""
    table = {c.lower() for c in table_columns} - BOOKKEEPING_COLUMNS
    lower_view = [c.lower() for c in view_columns]
    problems = []
    for what, col in (("MSSQL_KEY_COLUMN", key), ("MSSQL_VERSION_COLUMN", version)):
        if col.lower() not in lower_view:
            problems.append(f"{what}={col} is not a column of the view (it has: "
                            f"{', '.join(view_columns)})")
        elif col.lower() not in table:
            problems.append(f"{what}={col} has no matching column in the PostgreSQL table")
    if problems:
        raise SchemaError("; ".join(problems))
    synced = [c for c in view_columns if c.lower() in table]
    ignored = tuple(c for c in view_columns if c.lower() not in table)
    names = tuple(c.lower() for c in synced)
    missing = tuple(c for c in table_columns
                    if c.lower() in table and c.lower() not in set(lower_view))
    return ColumnMap(
        view_names=tuple(synced),
        names=names,
        key_index=names.index(key.lower()),
        version_index=names.index(version.lower()),
        ignored=ignored,
        missing=missing,
        source_types=tuple(base_type((view_types or {}).get(c, "")) for c in synced),
    )


class ViewColumnsChanged(SourceError):
    """SQL Server error 207: a column the query names is no longer in the view."""

    def __init__(self, column: str) -> None:
        self.column = column
        super().__init__(f"the view has no column {column!r} any more (renamed or dropped?)")


_INVALID_COLUMN = re.compile(r"invalid column name '([^']*)'", re.I)


def _source_error(exc: Exception) -> SourceError:
    """Our error for a failed query; a vanished column is told apart from an outage."""
    text = " ".join(str(a) for a in getattr(exc, "args", ())) or str(exc)
    found = _INVALID_COLUMN.search(text)
    if found and "207" in text:
        return ViewColumnsChanged(found.group(1))
    return SourceError(describe_mssql_error(exc))


class ViewSource:
    """One pymssql connection to the view, reopened after any failure."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.view = quote_ident(cfg.mssql_view)
        self._conn: Any = None

    def connect(self) -> None:
        if self._conn is None:
            self._conn = connect_mssql(self.cfg)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a dead connection must never raise
                self._conn.close()
            self._conn = None

    def _cursor(self) -> Any:
        self.connect()
        return self._conn.cursor()

    def view_columns(self) -> list[str]:
        """The view's columns, read from an empty result (works with any login that can SELECT)."""
        try:
            cur = self._cursor()
            cur.execute(f"SELECT TOP 0 * FROM {self.view}")
            cols = [d[0] for d in cur.description]
            cur.fetchall()
            return cols
        except pymssql.Error as exc:
            self.close()
            raise SourceError(describe_mssql_error(exc)) from None

    def column_types(self) -> dict[str, str]:
        """{view column: declared SQL Server type, e.g. 'nvarchar(30)'}, in the view's column
        order (sys.dm_exec_describe_first_result_set, SQL Server 2012+)."""
        try:
            cur = self._cursor()
            cur.execute("SELECT name, system_type_name FROM"
                        " sys.dm_exec_describe_first_result_set(%s, NULL, 0)"
                        " ORDER BY column_ordinal", (f"SELECT * FROM {self.view}",))
            return {str(name): str(declared) for name, declared in cur.fetchall() if name}
        except pymssql.Error as exc:
            self.close()
            raise SourceError(describe_mssql_error(exc)) from None

    def now(self) -> datetime:
        """SQL Server's clock (GETDATE()), the clock that writes ULTIMA_MODIFICACION."""
        try:
            cur = self._cursor()
            cur.execute("SELECT GETDATE()")
            row = cur.fetchone()
        except pymssql.Error as exc:
            self.close()
            raise SourceError(describe_mssql_error(exc)) from None
        if not row or not isinstance(row[0], datetime):
            raise SourceError("SELECT GETDATE() did not return a datetime")
        return row[0]

    def count(self) -> int:
        try:
            cur = self._cursor()
            cur.execute(f"SELECT COUNT_BIG(*) FROM {self.view}")
            row = cur.fetchone()
            return int(row[0]) if row else 0
        except pymssql.Error as exc:
            self.close()
            raise SourceError(describe_mssql_error(exc)) from None

    def _stream(self, sql: str, params: tuple[Any, ...] | None,
                cols: ColumnMap) -> Iterator[list[tuple[Any, ...]]]:
        converters = cols.converters()
        try:
            cur = self._cursor()
            cur.execute(sql, params) if params else cur.execute(sql)
            while True:
                rows = cur.fetchmany(self.cfg.fetch_size)
                if not rows:
                    return
                if converters:
                    rows = [_converted(row, converters) for row in rows]
                yield rows
        except pymssql.Error as exc:
            self.close()
            raise _source_error(exc) from None
        except (ValueError, OverflowError) as exc:  # pymssql or a parser met a value it cannot read
            self.close()
            raise SchemaError(f"a value of the view cannot be read ({exc}): check the types of "
                              "its columns (facusync's README lists what is synced)") from None
        except GeneratorExit:
            # The caller stopped early (shutdown, backpressure): drop the connection rather
            # than draining the rest of the result.
            self.close()
            raise

    def read_since(self, cols: ColumnMap, since: datetime | None) -> Iterator[list[tuple[Any, ...]]]:
        """Rows at or after `since`, in version order (then key, so ties are stable)."""
        select = cols.select_list()
        ver = quote_ident(cols.view_names[cols.version_index])
        key = quote_ident(cols.view_names[cols.key_index])
        if since is None:
            return self._stream(f"SELECT {select} FROM {self.view} ORDER BY {ver}, {key}", None,
                                cols)
        return self._stream(
            f"SELECT {select} FROM {self.view} WHERE {ver} >= %s ORDER BY {ver}, {key}",
            (since,), cols,
        )

    def read_all_by_key(self, cols: ColumnMap) -> Iterator[list[tuple[Any, ...]]]:
        """The whole view in binary key order, to merge with PostgreSQL's COLLATE "C" order."""
        select = cols.select_list()
        key = quote_ident(cols.view_names[cols.key_index])
        return self._stream(
            f"SELECT {select} FROM {self.view} ORDER BY {key} COLLATE Latin1_General_BIN2", None,
            cols)

    def read_keys(self, cols: ColumnMap, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        """Specific rows by key (reconcile re-checks candidates before tombstoning them)."""
        if not keys:
            return []
        select = cols.select_list()
        key = quote_ident(cols.view_names[cols.key_index])
        marks = ", ".join(["%s"] * len(keys))
        out: list[tuple[Any, ...]] = []
        for rows in self._stream(f"SELECT {select} FROM {self.view} WHERE {key} IN ({marks})",
                                 tuple(keys), cols):
            out.extend(rows)
        return out


def _converted(row: tuple[Any, ...], converters: list[tuple[int, Callable[[str], Any]]]) -> tuple[Any, ...]:
    values = list(row)
    for index, parse in converters:
        if values[index] is not None:
            values[index] = parse(str(values[index]))
    return tuple(values)

"""Both sides in key order, merged: the shared core of `verify` and `reconcile`.

SQL Server is read ``ORDER BY key COLLATE Latin1_General_BIN2`` and PostgreSQL
``ORDER BY conduce COLLATE "C"``: both are code-point orders (UTF-16 units and UTF-8 bytes
agree for every key a view can hold), which is also Python's ``str`` order, so the two streams
can be merged in one pass with memory bounded by the fetch size, however large the view.

Values are compared, not just versions: each side's row is turned into the same canonical
JSON as the change message (PostgreSQL's timestamptz converted back to the source's local
time), and the digests compared.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql as pgsql

from facusync.config import Config
from facusync.enqueue import EncodedRow, encode
from facusync.errors import SinkError
from facusync.pgconn import describe_pg_error
from facusync.source import ColumnMap, ViewSource


@dataclass(frozen=True, slots=True)
class PgRow:
    """A datos_vista row as the comparison sees it."""

    key: str
    deleted: bool
    version: datetime
    encoded: EncodedRow


def pg_column_types(conn: psycopg2.extensions.connection, table: str) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
        return {name: dtype for name, dtype in cur.fetchall()}


def iter_pg_rows(
    conn: psycopg2.extensions.connection, cfg: Config, cols: ColumnMap, fetch: int = 5000
) -> Iterator[PgRow]:
    """All of datos_vista (soft-deleted rows too) in key order, through a server-side cursor."""
    types = pg_column_types(conn, cfg.pg_table_vista)
    exprs: list[pgsql.Composable] = []
    for name in cols.names:
        ident = pgsql.Identifier(name)
        offsets = cols.source_types and cols.source_types[cols.names.index(name)] == "datetimeoffset"
        if types.get(name) == "timestamp with time zone" and not offsets:
            exprs.append(pgsql.SQL("({} AT TIME ZONE {})").format(ident, pgsql.Literal(cfg.source_timezone)))
        else:
            exprs.append(ident)
    key = pgsql.Identifier(cols.names[cols.key_index])
    query = pgsql.SQL("SELECT eliminado_en_origen, {cols} FROM {table} ORDER BY {key} COLLATE \"C\"").format(
        cols=pgsql.SQL(", ").join(exprs), table=pgsql.Identifier(cfg.pg_table_vista), key=key
    )
    try:
        with conn.cursor(name="facusync_compare") as cur:
            cur.itersize = fetch
            cur.execute(query)
            for record in cur:
                values = record[1:]
                encoded = encode(cols.names, values, cols.key_index, cols.version_index)
                yield PgRow(str(values[cols.key_index]), bool(record[0]), values[cols.version_index], encoded)
    except psycopg2.Error as exc:
        raise SinkError(describe_pg_error(exc)) from None


def iter_view_rows(source: ViewSource, cols: ColumnMap) -> Iterator[EncodedRow]:
    """The whole view in key order, encoded like a change message."""
    for rows in source.read_all_by_key(cols):
        for row in rows:
            yield encode(cols.names, row, cols.key_index, cols.version_index)


def merge(
    view: Iterator[EncodedRow], pg: Iterator[PgRow]
) -> Iterator[tuple[str, EncodedRow | None, PgRow | None]]:
    """Pair rows by key: (key, view_row or None, pg_row or None), in key order.

    View rows with a NULL key cannot be paired; they come out as (\"\", row, None).
    """
    view_row = next(view, None)
    pg_row = next(pg, None)
    while view_row is not None or pg_row is not None:
        if view_row is not None and view_row.key is None:
            yield "", view_row, None
            view_row = next(view, None)
        elif pg_row is None or (view_row is not None and view_row.key is not None
                                and view_row.key < pg_row.key):
            assert view_row is not None and view_row.key is not None
            yield view_row.key, view_row, None
            view_row = next(view, None)
        elif view_row is None or (view_row.key is not None and pg_row.key < view_row.key):
            yield pg_row.key, None, pg_row
            pg_row = next(pg, None)
        else:
            yield pg_row.key, view_row, pg_row
            view_row = next(view, None)
            pg_row = next(pg, None)


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

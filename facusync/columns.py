"""Which columns are synced: the view's and datos_vista's, matched by name, with their types.

The producer, reconcile and verify all read the view through this one list, so what they
compare is what the producer sends. It follows both schemas: a column added to the view and
the table is synced, one the view loses is named (see the producer), and one whose SQL Server
type cannot be stored faithfully stops the start with a SchemaError naming it.
"""

from __future__ import annotations

import psycopg2

from facusync.config import Config
from facusync.errors import SchemaError, SinkError
from facusync.pgconn import connect_pg, describe_pg_error
from facusync.source import ColumnMap, ViewSource, map_columns
from facusync.sourcetypes import type_problems
from facusync.zone import ensure_zone


def table_columns(cfg: Config) -> dict[str, str]:
    """Columns of datos_vista and their types, so the synced set follows the schema."""
    conn = connect_pg(cfg, application="facusync-producer", bounded=True)
    try:
        ensure_zone(conn, cfg)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
                (cfg.pg_table_vista,),
            )
            cols = {str(name): str(data_type) for name, data_type in cur.fetchall()}
    except psycopg2.Error as exc:
        raise SinkError(describe_pg_error(exc)) from None
    finally:
        conn.close()
    if not cols:
        raise SchemaError(
            f"PostgreSQL table {cfg.pg_table_vista} does not exist in {cfg.pg_database}: "
            "run `sudo facusync migrate --admin` first"
        )
    return cols


def discover_columns(cfg: Config, source: ViewSource,
                     table: dict[str, str] | None = None) -> ColumnMap:
    """The synced columns: the view's and datos_vista's, matched case-insensitively, with
    their SQL Server types; SchemaError (exit 78) naming each column that cannot be synced."""
    table = table or table_columns(cfg)
    # Names and types from one query: two could straddle an ALTER VIEW.
    view_types = source.column_types()
    cols = map_columns(list(view_types) or source.view_columns(), list(table),
                       cfg.mssql_key_column, cfg.mssql_version_column, view_types)
    pg_types = {name.lower(): data_type for name, data_type in table.items()}
    problems = type_problems({n: view_types.get(n, "") for n in cols.view_names}, pg_types,
                             cfg.mssql_key_column, cfg.mssql_version_column, cfg.pg_table_vista)
    if problems:
        raise SchemaError("; ".join(problems))
    return cols

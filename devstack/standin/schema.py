"""The SQLite database behind the stand-in: tables, declared SQL Server types, pragmas.

SQLite has no notion of ``nvarchar(30)`` or ``datetime``; the declared type of every
column is kept in the table ``_standin_columns`` so the server can describe result
columns on the wire exactly like SQL Server would.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .sqltypes import SqlType, parse_type

VIEW = "VW_VENTAS_SYNC"
TYPES_TABLE = "TIPOS_PRUEBA"
META_TABLE = "_standin_columns"


@dataclass(frozen=True)
class Column:
    name: str
    type: SqlType
    nullable: bool = True


def columns(*spec: tuple[str, str, bool]) -> list[Column]:
    return [Column(name, parse_type(type_text), nullable) for name, type_text, nullable in spec]


VIEW_COLUMNS = columns(
    ("CONDUCE", "nvarchar(30)", False),
    ("FECHA_EMISION", "datetime", True),
    ("FACTURADO", "bit", True),
    ("NUMERO_FACTURA", "nvarchar(30)", True),
    ("CODIGO_CLIENTE", "nvarchar(20)", True),
    ("CLIENTE", "nvarchar(150)", True),
    ("ULTIMA_MODIFICACION", "datetime", True),
)
VIEW_COLUMN_NAMES = [c.name for c in VIEW_COLUMNS]

TYPES_COLUMNS = columns(
    ("ID", "int", False),
    ("C_INT", "int", True),
    ("C_BIGINT", "bigint", True),
    ("C_BIT", "bit", True),
    ("C_DECIMAL", "decimal(18,4)", True),
    ("C_NUMERIC", "numeric(10,2)", True),
    ("C_NVARCHAR", "nvarchar(100)", True),
    ("C_VARCHAR", "varchar(100)", True),
    ("C_DATETIME", "datetime", True),
    ("C_DATETIME2", "datetime2(7)", True),
    ("C_FLOAT", "float", True),
)


def connect(path: Path | str, *, readonly: bool = False, timeout: float = 30.0) -> sqlite3.Connection:
    """Open the database in autocommit mode with WAL-friendly settings.

    WAL lets the server stream a long SELECT while tests in another process commit.
    """
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    conn.execute("PRAGMA synchronous = NORMAL")
    if readonly:  # the server's connections: reads only, big scans from memory-mapped pages
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA mmap_size = 1073741824")
        conn.execute("PRAGMA cache_size = -32768")
    return conn


def create_table(conn: sqlite3.Connection, table: str, cols: list[Column],
                 *, primary_key: str | None = None) -> None:
    """Create a table (if missing) plus its declared-type rows in the metadata table."""
    decls = []
    for col in cols:
        decl = f'"{col.name}" {col.type.sqlite_decl}'
        if not col.nullable:
            decl += " NOT NULL"
        if col.name == primary_key:
            decl += " UNIQUE"
        decls.append(decl)
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({", ".join(decls)})')
    # OR IGNORE: a declaration a test changed on purpose (a wider column) survives re-inits.
    conn.executemany(
        f"INSERT OR IGNORE INTO {META_TABLE} (table_name, ordinal, column_name, type, nullable) "
        "VALUES (?, ?, ?, ?, ?)",
        [(table, i, c.name, str(c.type), int(c.nullable)) for i, c in enumerate(cols)],
    )


def init_db(path: Path | str) -> None:
    """Create (idempotently) the view table, the type-test table and their metadata."""
    conn = connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {META_TABLE} (table_name TEXT NOT NULL COLLATE NOCASE,"
            " ordinal INTEGER NOT NULL, column_name TEXT NOT NULL, type TEXT NOT NULL,"
            " nullable INTEGER NOT NULL, PRIMARY KEY (table_name, ordinal))"
        )
        create_table(conn, VIEW, VIEW_COLUMNS, primary_key="CONDUCE")
        create_view_indexes(conn)
        create_table(conn, TYPES_TABLE, TYPES_COLUMNS, primary_key="ID")
        conn.execute("COMMIT")
    finally:
        conn.close()


VIEW_INDEXES = ("ix_vw_conduce_bin", "ix_vw_version_cover")


def create_view_indexes(conn: sqlite3.Connection) -> None:
    """Indexes for the two scans the producer and reconcile do."""
    # Key order as PostgreSQL's COLLATE "C" sees it (ORDER BY ... COLLATE Latin1_General_BIN2).
    conn.execute(f'CREATE INDEX IF NOT EXISTS ix_vw_conduce_bin ON {VIEW} ("CONDUCE" COLLATE BINARY)')
    # The incremental poll: WHERE version >= x ORDER BY version, key. Covering, so a big
    # read in version order does not jump around the table (10x faster on a large view).
    conn.execute("DROP INDEX IF EXISTS ix_vw_version")  # its narrower predecessor
    leading = ("ULTIMA_MODIFICACION", "CONDUCE")
    others = ", ".join(f'"{c.name}"' for c in VIEW_COLUMNS if c.name not in leading)
    conn.execute(f'CREATE INDEX IF NOT EXISTS ix_vw_version_cover ON {VIEW} '
                 f'("ULTIMA_MODIFICACION", "CONDUCE", {others})')


def load_metadata(conn: sqlite3.Connection) -> dict[str, list[Column]]:
    """{upper-case table name: columns in order} from the metadata table."""
    tables: dict[str, list[Column]] = {}
    try:
        rows = conn.execute(
            f"SELECT table_name, column_name, type, nullable FROM {META_TABLE} "
            "ORDER BY table_name, ordinal"
        ).fetchall()
    except sqlite3.OperationalError:
        return tables
    for table, name, type_text, nullable in rows:
        tables.setdefault(table.upper(), []).append(Column(name, parse_type(type_text), bool(nullable)))
    return tables

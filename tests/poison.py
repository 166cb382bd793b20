"""Poison rows in the stand-in: the shapes of bad data a real view can produce.

A real view may declare CLIENTE wider than datos_vista's varchar(150) (after a change in the
ERP), or yield a NULL key from an outer join. The stand-in enforces declared lengths on the
wire like SQL Server, so the declaration is widened first.
"""

from __future__ import annotations

from typing import Any


def widen_view_column(standin: Any, column: str, sql_type: str) -> None:
    """Declare a view column with another SQL Server type (the server reloads its metadata)."""
    standin.execute("UPDATE _standin_columns SET type = ? WHERE table_name = 'VW_VENTAS_SYNC'"
                    " AND column_name = ?", (sql_type, column))
    standin.execute("CREATE TABLE _standin_bump (x)")  # bumps SQLite's schema_version
    standin.execute("DROP TABLE _standin_bump")


def insert_too_long(standin: Any, conduce: str, length: int = 400) -> None:
    """A row whose CLIENTE does not fit datos_vista.cliente (varchar(150))."""
    widen_view_column(standin, "CLIENTE", "nvarchar(1000)")
    standin.insert([{"CONDUCE": conduce, "CLIENTE": "x" * length}])

"""The declared tables as a client sees them: what type each result column has on the wire.

SQLite knows little of types; SQL Server's declared ones (``_standin_columns``), with any
column the ERP team renamed, tell the server what COLMETADATA to send.
"""

from __future__ import annotations

from sqlglot import exp

from . import schema, sqltypes
from .sqltypes import SqlType


class Catalog:
    """One connection's snapshot of declared tables, and the typing of a SELECT's columns."""

    def __init__(self) -> None:
        self.tables: dict[str, list[schema.Column]] = {}
        self.stored_as: dict[str, str] = {}  # upper-case shown name -> stored column name

    @staticmethod
    def scope(select: exp.Expression) -> list[tuple[str, str]]:
        """(alias or name, table) for each table in the FROM/JOIN list, upper-case."""
        scope = []
        for table in select.find_all(exp.Table):
            scope.append((table.alias_or_name.upper(), table.name.upper()))
        return scope

    def column_type(self, column: exp.Column, scope: list[tuple[str, str]]) -> SqlType | None:
        """The declared type of a column reference, or None when no table in scope has it."""
        qualifier = column.table.upper()
        for alias, table in scope:
            if qualifier and qualifier not in (alias, table):
                continue
            for col in self.tables.get(table, []):
                if col.name.upper() == column.name.upper():
                    return col.type
        return None

    def describe(self, tree: exp.Expression) -> list[tuple[str, SqlType | None]]:
        """(name, type) of each result column; [] lets SQLite's cursor description decide."""
        select = tree
        while isinstance(select, exp.SetOperation):
            select = select.this
        if not isinstance(select, exp.Select):
            return []
        scope = self.scope(select)
        out: list[tuple[str, SqlType | None]] = []
        for projection in select.expressions:
            if isinstance(projection, exp.Star) or (
                isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
            ):
                qualifier = projection.table.upper() if isinstance(projection, exp.Column) else ""
                for alias, table in scope:
                    if qualifier and qualifier not in (alias, table):
                        continue
                    cols = self.tables.get(table)
                    if cols is None:
                        return []  # unknown shape: let SQLite's description decide
                    out.extend((c.name, c.type) for c in cols)
                continue
            name = projection.alias if isinstance(projection, exp.Alias) else (
                projection.name if isinstance(projection, exp.Column) else "")
            out.append((name, self.type_of(projection, scope)))
        return out

    def type_of(self, node: exp.Expression, scope: list[tuple[str, str]]) -> SqlType | None:
        """The SQL Server type of one projection; None: inferred later from the values."""
        if "sqltype" in node.meta:
            return node.meta["sqltype"]  # type: ignore[no-any-return]
        if isinstance(node, (exp.Alias, exp.Paren, exp.Collate)):
            return self.type_of(node.this, scope)
        if isinstance(node, exp.Column):
            return self.column_type(node, scope)
        if isinstance(node, exp.Count):
            return sqltypes.BIGINT if node.args.get("big_int") else sqltypes.SqlType("int")
        if isinstance(node, (exp.Max, exp.Min)):
            return self.type_of(node.this, scope)
        if isinstance(node, exp.Coalesce):
            return self.type_of(node.this, scope)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return SqlType("varchar", length=max(1, len(node.this)))
            if "." in node.this:
                digits = node.this.replace("-", "").split(".")
                return SqlType("numeric", precision=max(1, len(digits[0] + digits[1])),
                               scale=len(digits[1]))
            return sqltypes.SqlType("int") if abs(int(node.this)) < 2**31 else sqltypes.BIGINT
        if isinstance(node, exp.Cast):
            return datatype(node.to)
        return None


def datatype(node: exp.Expression | None) -> SqlType | None:
    """The SqlType a CAST names, or None for one the stand-in cannot put on the wire."""
    if not isinstance(node, exp.DataType):
        return None
    try:
        text = node.sql(dialect="tsql")
        return sqltypes.parse_type(text)
    except ValueError:
        return None

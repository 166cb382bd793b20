"""Adjusting a parsed T-SQL SELECT so SQLite answers it the way SQL Server would.

Tables lose their database/schema prefixes, collations map to BINARY or NOCASE, clock
functions and @@variables become typed literals, renamed columns point at the stored ones,
and literals compared with datetime columns are rounded like SQL Server rounds them.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlglot import exp

from . import sqltypes
from .catalog import Catalog, datatype
from .engine import Session, TdsError
from .sqltypes import SqlType

VERSION_TEXT = (
    "Microsoft SQL Server 2016 (SP3) (KB5003279) - 13.0.6300.2 (X64) \n"
    "\tAug  7 2021 01:20:37 \n"
    "\tCopyright (c) Microsoft Corporation\n"
    "\tDeveloper Edition (64-bit) on Linux (facusync stand-in) \n"
)

_BINARY_COLLATIONS = re.compile(r"(_BIN2?$|_CS_)", re.I)


class Rewriter:
    """Rewrites SELECT trees in place against one connection's catalog and SQLite file."""

    def __init__(self, catalog: Catalog, conn: sqlite3.Connection) -> None:
        self.catalog = catalog
        self.conn = conn

    def rewrite(self, tree: exp.Expression, session: Session) -> bool:
        """Adjust the tsql tree in place; True if the result depends on the moment/session."""
        volatile = False
        for table in list(tree.find_all(exp.Table)):
            for part in ("db", "catalog"):
                if table.args.get(part) is not None:
                    table.set(part, None)
            if table.args.get("hints"):
                table.set("hints", None)
            unknown = table.name and table.name.upper() not in self.catalog.tables
            if unknown and not self._sqlite_has(table.name) and not self._is_cte(tree, table.name):
                raise TdsError(208, f"Invalid object name '{table.name}'.")
        for national in list(tree.find_all(exp.National)):
            national.replace(_string(national.name, SqlType("nvarchar", length=max(1, len(national.name)))))
        for collate in list(tree.find_all(exp.Collate)):
            name = collate.expression.name if collate.expression is not None else ""
            collation = "BINARY" if _BINARY_COLLATIONS.search(name) else "NOCASE"
            collate.set("expression", exp.Var(this=collation))
        for node in list(tree.find_all(exp.Anonymous, exp.Parameter)):
            replacement = builtin(node, session)
            if replacement is not None:
                node.replace(replacement)
                volatile = True
        for cast_node in list(tree.find_all(exp.Cast)):
            target = datatype(cast_node.to)
            if target is not None and target.name in ("datetime", "datetime2", "date"):
                inner = cast_node.this
                if isinstance(inner, exp.Literal) and inner.is_string:
                    cast_node.replace(_string(_to_type_text(target, inner.this), target))
                else:
                    inner.meta["sqltype"] = target
                    cast_node.replace(inner)
        self._check_columns(tree)
        self._store_names(tree)
        self._round_literals(tree)
        return volatile

    def _store_names(self, tree: exp.Expression) -> None:
        """Point renamed columns at the stored ones; a selected one keeps its shown name."""
        if not self.catalog.stored_as:
            return
        for column in list(tree.find_all(exp.Column)):
            stored = self.catalog.stored_as.get(column.name.upper())
            if stored is None:
                continue
            sqltype = self.catalog.column_type(column, self.catalog.scope(tree))
            replacement = exp.column(stored, table=column.table or None, quoted=True)
            replacement.meta["sqltype"] = sqltype
            if isinstance(column.parent, exp.Select) and column.arg_key == "expressions":
                column.replace(exp.alias_(replacement, column.name, quoted=True))
            else:
                column.replace(replacement)

    def _check_columns(self, tree: exp.Expression) -> None:
        """Error 207 for unknown columns.

        SQLite would otherwise read an unknown "quoted" name as a string literal.
        Only checked when every table in the query has declared columns.
        """
        tables = [table.name.upper() for table in tree.find_all(exp.Table)]
        declared = self.catalog.tables
        if any(name not in declared for name in tables) or any(tree.find_all(exp.Subquery, exp.CTE)):
            return
        known = {col.name.upper() for name in tables for col in declared[name]}
        known |= {alias.alias.upper() for alias in tree.find_all(exp.Alias)}
        for column in tree.find_all(exp.Column):
            if isinstance(column.this, exp.Star):
                continue
            if column.name.upper() not in known:
                raise TdsError(207, f"Invalid column name '{column.name}'.")

    def _sqlite_has(self, name: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type IN ('table','view') AND name = ? COLLATE NOCASE "
            "UNION ALL SELECT 1 FROM sqlite_temp_master WHERE type = 'table' AND name = ? "
            "COLLATE NOCASE",
            (name, name),
        ).fetchone()
        return row is not None

    @staticmethod
    def _is_cte(tree: exp.Expression, name: str) -> bool:
        return any(cte.alias_or_name.upper() == name.upper() for cte in tree.find_all(exp.CTE))

    def _round_literals(self, tree: exp.Expression) -> None:
        """Literals compared with a datetime column become that column's stored text.

        SQL Server converts the literal to the column's type first; for datetime that
        rounds to 1/300 s ticks (.xx0/.xx3/.xx7), which we must mimic to get the same
        boundary rows.
        """
        scope = self.catalog.scope(tree)

        def fix(column: exp.Expression, literal: exp.Expression) -> None:
            if not (isinstance(column, exp.Column) and isinstance(literal, exp.Literal)
                    and literal.is_string):
                return
            sqltype = self.catalog.column_type(column, scope)
            if sqltype is not None and sqltype.name in ("datetime", "datetime2", "date"):
                literal.replace(_string(_to_type_text(sqltype, literal.this), sqltype))

        for node in list(tree.find_all(exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
            fix(node.this, node.expression)
            fix(node.expression, node.this)
        for between in list(tree.find_all(exp.Between)):
            fix(between.this, between.args["low"])
            fix(between.this, between.args["high"])
        for in_list in list(tree.find_all(exp.In)):
            for item in list(in_list.expressions):
                fix(in_list.this, item)


def builtin(node: exp.Expression, session: Session) -> exp.Expression | None:
    """Literal values for @@VERSION, GETDATE() and friends, typed like SQL Server's."""
    if isinstance(node, exp.Parameter):
        inner = node.this
        if not isinstance(inner, exp.Parameter):
            return None
        name = inner.name.upper()
        values: dict[str, tuple[Any, SqlType]] = {
            "VERSION": (VERSION_TEXT, sqltypes.nvarchar(300)),
            "SPID": (session.spid, sqltypes.SqlType("int")),
            "TRANCOUNT": (session.trancount, sqltypes.SqlType("int")),
            "ROWCOUNT": (session.rowcount, sqltypes.SqlType("int")),
            "SERVERNAME": ("STANDIN", sqltypes.nvarchar(128)),
            "SERVICENAME": ("MSSQLSERVER", sqltypes.nvarchar(128)),
            "LANGUAGE": ("us_english", sqltypes.nvarchar(128)),
            "MAX_PRECISION": (38, SqlType("int")),
        }
        if name not in values:
            raise TdsError(137, f'Must declare the scalar variable "@@{name}".', severity=15)
        value, sqltype = values[name]
        return _value(value, sqltype)
    name = node.name.upper()
    now = datetime.now() + timedelta(seconds=session.clock_offset)
    if name == "__SI_GETDATE":
        return _string(sqltypes.datetime_text(now), sqltypes.DATETIME)
    if name == "__SI_SYSDATETIME":
        return _string(sqltypes.datetime2_text(now), sqltypes.DATETIME2)
    utc = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=session.clock_offset)
    if name == "__SI_GETUTCDATE":
        return _string(sqltypes.datetime_text(utc), sqltypes.DATETIME)
    if name == "__SI_SYSUTCDATETIME":
        return _string(sqltypes.datetime2_text(utc), sqltypes.DATETIME2)
    if name == "DB_NAME":
        return _string(session.database, sqltypes.nvarchar(128))
    if name in ("SUSER_NAME", "SUSER_SNAME", "USER_NAME", "CURRENT_USER", "SYSTEM_USER"):
        return _string(session.user, sqltypes.nvarchar(128))
    if name == "SERVERPROPERTY":
        arg = node.expressions[0].name if node.expressions else ""
        props = {"productversion": "13.0.6300.2", "productlevel": "SP3",
                 "edition": "Developer Edition (64-bit)", "servername": "STANDIN",
                 "collation": "SQL_Latin1_General_CP1_CI_AS"}
        return _string(props.get(arg.lower(), ""), sqltypes.nvarchar(128))
    if name == "CONNECTIONPROPERTY":
        arg = node.expressions[0].name if node.expressions else ""
        connection = {"net_transport": "TCP", "protocol_type": "TSQL", "auth_scheme": "SQL",
                      "encrypt_option": "TRUE" if session.encrypted else "FALSE"}
        return _string(connection.get(arg.lower(), ""), sqltypes.nvarchar(128))
    return None


def _string(text: str, sqltype: SqlType) -> exp.Expression:
    node = exp.Literal.string(text)
    node.meta["sqltype"] = sqltype
    return node


def _value(value: Any, sqltype: SqlType) -> exp.Expression:
    node = exp.Literal.number(value) if isinstance(value, int) else exp.Literal.string(str(value))
    node.meta["sqltype"] = sqltype
    return node


def _to_type_text(sqltype: SqlType, text: str) -> str:
    try:
        if sqltype.name == "datetime":
            return sqltypes.datetime_text(text)
        if sqltype.name == "date":
            return sqltypes.datetime2_text(text)[:10]
        return sqltypes.datetime2_text(text)
    except sqltypes.ConversionError as exc:
        message = "Conversion failed when converting date and/or time from character string."
        raise TdsError(241, message) from exc

"""T-SQL SELECT in, a Query for SQLite out: parse, refuse what a read-only login may not do,
rewrite, type the result columns, and cache what does not depend on the moment.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections import OrderedDict
from typing import cast

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from . import schema
from .catalog import Catalog
from .engine import Query, Session, TdsError, mark_time_functions
from .rewrite import Rewriter

_DESCRIBE = re.compile(
    r"sys\.dm_exec_describe_first_result_set\s*\(\s*N?'((?:[^']|'')*)'\s*,\s*NULL\s*,\s*0\s*\)",
    re.I)


class Planner:
    """Turns one T-SQL SELECT into a Query; shares a metadata snapshot per connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.catalog = Catalog()
        self.rewriter = Rewriter(self.catalog, conn)
        self._versions: tuple[int, int] = (-1, -1)
        self._renamed: tuple[tuple[str, str], ...] = ()
        self._cache: OrderedDict[str, Query] = OrderedDict()
        self._lock = threading.Lock()

    def refresh(self, renamed: tuple[tuple[str, str], ...] = ()) -> None:
        """Reload declared types after another connection committed (two cheap pragmas otherwise).

        Tests may re-declare a column (``StandIn.set_column_type``) while the server runs, or
        show a column under another name (``StandIn.rename_column``: the data stays put).
        """
        versions = (self.conn.execute("PRAGMA schema_version").fetchone()[0],
                    self.conn.execute("PRAGMA data_version").fetchone()[0])
        if versions == self._versions and renamed == self._renamed:
            return
        tables = schema.load_metadata(self.conn)
        shown = {old.upper(): new for old, new in renamed}
        self.catalog.stored_as = {new.upper(): old for old, new in renamed}
        for name, cols in tables.items():
            tables[name] = [schema.Column(shown.get(c.name.upper(), c.name), c.type, c.nullable)
                            for c in cols]
        if tables != self.catalog.tables or versions[0] != self._versions[0] or renamed != self._renamed:
            self.catalog.tables = tables
            self._cache.clear()
        self._versions = versions
        self._renamed = renamed

    def plan(self, stmt: str, session: Session,
             renamed: tuple[tuple[str, str], ...] = ()) -> Query:
        """The Query for one SELECT, or the TdsError SQL Server would answer instead."""
        self.refresh(renamed)
        described = _DESCRIBE.search(stmt)
        if described:
            stmt = self._describe_first_result_set(stmt, described, session, renamed)
        cached = self._cache.get(stmt)
        if cached is not None:
            self._cache.move_to_end(stmt)
            return cached
        text, volatile = mark_time_functions(stmt)
        try:
            trees = sqlglot.parse(text, read="tsql")
        except (ParseError, TokenError) as exc:
            raise TdsError(102, f"Incorrect syntax near '{_near(stmt, exc)}'.", severity=15) from exc
        trees = [t for t in trees if t is not None]
        if len(trees) != 1:
            raise TdsError(102, f"Incorrect syntax near '{stmt[:30]}'.", severity=15)
        tree = trees[0]
        if isinstance(tree, (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop,
                             exp.Alter, exp.TruncateTable)):
            action = tree.key.upper() if not isinstance(tree, exp.TruncateTable) else "ALTER"
            target = tree.find(exp.Table)
            name = target.name if target is not None else "?"
            raise TdsError(
                229,
                f"The {action} permission was denied on the object '{name}', "
                f"database '{session.server_database}', schema 'dbo'.",
                severity=14,
            )
        if not isinstance(tree, exp.Query):
            word = stmt.split()[0] if stmt.split() else stmt
            if word.upper() in ("EXEC", "EXECUTE"):
                proc = stmt.split()[1] if len(stmt.split()) > 1 else ""
                raise TdsError(2812, f"Could not find stored procedure '{proc}'.")
            raise TdsError(102, f"Incorrect syntax near '{word}'.", severity=15)
        select = cast(exp.Expression, tree)  # sqlglot 30 types Query apart from Expression
        volatile = self.rewriter.rewrite(select, session) or volatile
        query = Query(sql=select.sql(dialect="sqlite"), columns=self.catalog.describe(select))
        if not volatile:
            self._cache[stmt] = query
            if len(self._cache) > 256:
                self._cache.popitem(last=False)
        return query

    def _describe_first_result_set(self, stmt: str, found: re.Match[str], session: Session,
                                   renamed: tuple[tuple[str, str], ...]) -> str:
        """sys.dm_exec_describe_first_result_set(@tsql, NULL, 0): the columns a query would
        return (name, system_type_name, column_ordinal, is_nullable), as a CTE over the
        inner query's planned columns. Columns of unknown type are not described."""
        inner = self.plan(found.group(1).replace("''", "'"), session, renamed)
        rows = []
        for ordinal, (name, sqltype) in enumerate(inner.columns, start=1):
            if sqltype is None:
                continue
            quoted_name, quoted_type = name.replace("'", "''"), str(sqltype).replace("'", "''")
            rows.append(f"SELECT {ordinal} AS column_ordinal, N'{quoted_name}' AS name, "
                        f"N'{quoted_type}' AS system_type_name, 1 AS is_nullable")
        if not rows:
            rows.append("SELECT 0, N'', N'', 1 WHERE 1 = 0")
        cte = "WITH standin_described AS (" + " UNION ALL ".join(rows) + ") "
        return cte + stmt[:found.start()] + "standin_described" + stmt[found.end():]


def _near(stmt: str, exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        token = errors[0].get("highlight")
        if token:
            return str(token)
    return stmt.split()[0] if stmt.split() else stmt

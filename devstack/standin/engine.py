"""T-SQL in, SQLite out: what each statement of a batch means and how to run it.

A batch is split into statements. Session statements that pymssql and FreeTDS send on
their own (SET ..., USE [db], BEGIN/COMMIT/ROLLBACK TRAN, IF @@TRANCOUNT ...) are
answered without touching SQLite. SELECTs are parsed with sqlglot (tsql), adjusted
to keep SQL Server semantics, typed from the declared column types and transpiled
to SQLite. Anything else gets the error SQL Server would give a read-only login.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from . import schema, sqltypes
from .sqltypes import SqlType

VERSION_TEXT = (
    "Microsoft SQL Server 2016 (SP3) (KB5003279) - 13.0.6300.2 (X64) \n"
    "\tAug  7 2021 01:20:37 \n"
    "\tCopyright (c) Microsoft Corporation\n"
    "\tDeveloper Edition (64-bit) on Linux (facusync stand-in) \n"
)
KNOWN_EXTRA_DATABASES = ("master", "tempdb")


class TdsError(Exception):
    """An error to report to the client as an ERROR token (the batch stops there)."""

    def __init__(self, number: int, message: str, severity: int = 16, state: int = 1) -> None:
        super().__init__(message)
        self.number = number
        self.message = message
        self.severity = severity
        self.state = state


@dataclass
class Session:
    """Per-connection state that statements can read or change."""

    database: str
    user: str
    spid: int
    server_database: str
    clock_offset: float = 0.0  # seconds added to the server's clock (GETDATE() and friends)
    trancount: int = 0
    rowcount: int = 0
    encrypted: bool = False  # the whole session over TLS (CONNECTIONPROPERTY('encrypt_option'))


@dataclass
class Control:
    """A session statement: nothing to run, maybe a database change to announce."""

    new_database: str | None = None


@dataclass
class Query:
    """A SELECT ready for SQLite, with the SQL Server name/type of each result column."""

    sql: str
    columns: list[tuple[str, SqlType | None]] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Splitting a batch

_QUOTED = re.compile(r"('(?:[^']|'')*'|\[(?:[^\]]|\]\])*\]|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/)", re.S)


def _segments(text: str) -> list[tuple[bool, str]]:
    """Split text into (is_code, piece); quoted strings/identifiers and comments are not code."""
    out: list[tuple[bool, str]] = []
    pos = 0
    for m in _QUOTED.finditer(text):
        if m.start() > pos:
            out.append((True, text[pos : m.start()]))
        piece = m.group(0)
        if piece.startswith("--") or piece.startswith("/*"):
            out.append((True, " "))
        else:
            out.append((False, piece))
        pos = m.end()
    if pos < len(text):
        out.append((True, text[pos:]))
    return out


def split_batch(text: str) -> list[str]:
    """Statements of a batch, split on ';' outside quotes, comments dropped."""
    statements: list[str] = []
    current: list[str] = []
    for is_code, piece in _segments(text):
        if not is_code:
            current.append(piece)
            continue
        parts = piece.split(";")
        for i, part in enumerate(parts):
            if i:
                statements.append("".join(current))
                current = []
            current.append(part)
    statements.append("".join(current))
    out: list[str] = []
    for statement in statements:
        out.extend(_split_session_run(statement.strip()))
    return [s for s in out if s]


_SESSION_START = re.compile(r"^(SET|USE|BEGIN\s+TRAN(?:SACTION)?|COMMIT|ROLLBACK)\b", re.I)
_NEXT_STATEMENT = re.compile(
    r"\b(SELECT|WITH|SET|USE|BEGIN|COMMIT|ROLLBACK|IF|INSERT|UPDATE|DELETE|EXEC|EXECUTE|DECLARE)\b", re.I
)


def _split_session_run(statement: str) -> list[str]:
    """'SET NOCOUNT ON SELECT 1' is two statements in T-SQL even without ';'."""
    if not _SESSION_START.match(statement):
        return [statement]
    cuts = []
    offset = 0
    for is_code, piece in _segments(statement):
        if is_code:
            for m in _NEXT_STATEMENT.finditer(piece):
                position = offset + m.start()
                if position > 0 and not _after_begin(statement, position):
                    cuts.append(position)
        offset += len(piece)
    if not cuts:
        return [statement]
    bounds = [0, *cuts, len(statement)]
    return [statement[a:b].strip() for a, b in itertools.pairwise(bounds)]


def _after_begin(statement: str, position: int) -> bool:
    """Keep 'BEGIN TRAN' and 'SET TRANSACTION ...' whole (TRAN is not a split keyword anyway)."""
    return bool(re.search(r"\bBEGIN\s+$", statement[:position], re.I))


_FUNCTIONS = re.compile(
    r"\b(GETDATE|SYSDATETIME|GETUTCDATE|SYSUTCDATETIME)\s*\(\s*\)|\bCURRENT_TIMESTAMP\b", re.I
)


def _mark_time_functions(text: str) -> tuple[str, bool]:
    """Rename SQL Server's clock functions so sqlglot keeps them apart (it maps all to NOW)."""
    found = False
    out = []
    for is_code, piece in _segments(text):
        if is_code:
            new = _FUNCTIONS.sub(lambda m: f"__SI_{(m.group(1) or 'GETDATE').upper()}()", piece)
            found = found or new != piece
            piece = new
        out.append(piece)
    return "".join(out), found


# ---------------------------------------------------------------------------
# Session statements

_TRAN = r"TRAN(?:SACTION)?"
_BEGIN = re.compile(rf"^BEGIN\s+(?:DISTRIBUTED\s+)?{_TRAN}\b", re.I)
_COMMIT = re.compile(rf"^COMMIT(?:\s+(?:{_TRAN}|WORK))?\b", re.I)
_ROLLBACK = re.compile(rf"^ROLLBACK(?:\s+(?:{_TRAN}|WORK))?\b", re.I)
_IF_TRANCOUNT = re.compile(
    rf"^IF\s+@@TRANCOUNT\s*(>|>=|<>|!=|=)\s*(\d+)\s+(COMMIT|ROLLBACK)(?:\s+(?:{_TRAN}|WORK))?\s*$", re.I
)
_USE = re.compile(r"^USE\s+(?:\[((?:[^\]]|\]\])+)\]|\"([^\"]+)\"|(\S+))\s*$", re.I)
_SET = re.compile(r"^SET\s+\w", re.I)


def session_statement(stmt: str, session: Session) -> Control | None:
    """Handle SET/USE/transaction statements; None if the statement is something else."""
    if _SET.match(stmt):
        return Control()
    if _BEGIN.match(stmt):
        session.trancount += 1
        return Control()
    if _COMMIT.match(stmt):
        if session.trancount == 0:
            raise TdsError(3902, "The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION.")
        session.trancount -= 1
        return Control()
    if _ROLLBACK.match(stmt):
        if session.trancount == 0:
            raise TdsError(3903, "The ROLLBACK TRANSACTION request has no corresponding BEGIN TRANSACTION.")
        session.trancount = 0
        return Control()
    m = _IF_TRANCOUNT.match(stmt)
    if m:
        op, number, action = m.group(1), int(m.group(2)), m.group(3).upper()
        count = session.trancount
        hit = {">": count > number, ">=": count >= number, "=": count == number,
               "<>": count != number, "!=": count != number}[op]
        if hit:
            session.trancount = count - 1 if action == "COMMIT" and count else 0
        return Control()
    m = _USE.match(stmt)
    if m:
        name = (m.group(1) or m.group(2) or m.group(3) or "").replace("]]", "]")
        known = (session.server_database, *KNOWN_EXTRA_DATABASES)
        for candidate in known:
            if candidate.lower() == name.lower():
                session.database = candidate
                return Control(new_database=candidate)
        raise TdsError(
            911, f"Database '{name}' does not exist. Make sure that the name is entered correctly."
        )
    return None


# ---------------------------------------------------------------------------
# SELECT planning

_BINARY_COLLATIONS = re.compile(r"(_BIN2?$|_CS_)", re.I)
_DESCRIBE = re.compile(
    r"sys\.dm_exec_describe_first_result_set\s*\(\s*N?'((?:[^']|'')*)'\s*,\s*NULL\s*,\s*0\s*\)",
    re.I)


def _sqlite_error(exc: sqlite3.Error) -> TdsError:
    """Translate a SQLite error into the SQL Server error a client would see."""
    text = str(exc)
    m = re.match(r"no such table: (?:\w+\.)?(.+)", text)
    if m:
        return TdsError(208, f"Invalid object name '{m.group(1)}'.")
    m = re.match(r"no such column: (.+)", text)
    if m:
        return TdsError(207, f"Invalid column name '{m.group(1).split('.')[-1]}'.")
    m = re.match(r"ambiguous column name: (.+)", text)
    if m:
        return TdsError(209, f"Ambiguous column name '{m.group(1).split('.')[-1]}'.")
    m = re.match(r'near "(.*)": syntax error', text)
    if m:
        return TdsError(102, f"Incorrect syntax near '{m.group(1)}'.", severity=15)
    if "readonly" in text or "read-only" in text:
        return TdsError(229, "The permission was denied on the object, database, schema 'dbo'.", severity=14)
    return TdsError(50000, f"stand-in engine error: {text}")


def sqlite_error(exc: sqlite3.Error) -> TdsError:
    return _sqlite_error(exc)


class Planner:
    """Turns one T-SQL SELECT into a Query; shares a metadata snapshot per connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.tables: dict[str, list[schema.Column]] = {}
        self._versions: tuple[int, int] = (-1, -1)
        self._renamed: tuple[tuple[str, str], ...] = ()
        self._stored_as: dict[str, str] = {}  # upper-case shown name -> stored column name
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
        self._stored_as = {new.upper(): old for old, new in renamed}
        for name, cols in tables.items():
            tables[name] = [schema.Column(shown.get(c.name.upper(), c.name), c.type, c.nullable)
                            for c in cols]
        if tables != self.tables or versions[0] != self._versions[0] or renamed != self._renamed:
            self.tables = tables
            self._cache.clear()
        self._versions = versions
        self._renamed = renamed

    def plan(self, stmt: str, session: Session,
             renamed: tuple[tuple[str, str], ...] = ()) -> Query:
        self.refresh(renamed)
        described = _DESCRIBE.search(stmt)
        if described:
            stmt = self._describe_first_result_set(stmt, described, session, renamed)
        cached = self._cache.get(stmt)
        if cached is not None:
            self._cache.move_to_end(stmt)
            return cached
        text, volatile = _mark_time_functions(stmt)
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
        volatile = self._rewrite(select, session) or volatile
        query = Query(sql=select.sql(dialect="sqlite"), columns=self._describe(select))
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

    # -- rewriting ---------------------------------------------------------

    def _rewrite(self, tree: exp.Expression, session: Session) -> bool:
        """Adjust the tsql tree in place; True if the result depends on the moment/session."""
        volatile = False
        for table in list(tree.find_all(exp.Table)):
            for part in ("db", "catalog"):
                if table.args.get(part) is not None:
                    table.set(part, None)
            if table.args.get("hints"):
                table.set("hints", None)
            unknown = table.name and table.name.upper() not in self.tables
            if unknown and not self._sqlite_has(table.name) and not self._is_cte(tree, table.name):
                raise TdsError(208, f"Invalid object name '{table.name}'.")
        for national in list(tree.find_all(exp.National)):
            national.replace(_string(national.name, SqlType("nvarchar", length=max(1, len(national.name)))))
        for collate in list(tree.find_all(exp.Collate)):
            name = collate.expression.name if collate.expression is not None else ""
            collation = "BINARY" if _BINARY_COLLATIONS.search(name) else "NOCASE"
            collate.set("expression", exp.Var(this=collation))
        for node in list(tree.find_all(exp.Anonymous, exp.Parameter)):
            replacement = self._builtin(node, session)
            if replacement is not None:
                node.replace(replacement)
                volatile = True
        for cast_node in list(tree.find_all(exp.Cast)):
            target = _datatype(cast_node.to)
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
        if not self._stored_as:
            return
        for column in list(tree.find_all(exp.Column)):
            stored = self._stored_as.get(column.name.upper())
            if stored is None:
                continue
            sqltype = self._column_type(column, self._scope(tree))
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
        if any(name not in self.tables for name in tables) or any(tree.find_all(exp.Subquery, exp.CTE)):
            return
        known = {col.name.upper() for name in tables for col in self.tables[name]}
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

    def _builtin(self, node: exp.Expression, session: Session) -> exp.Expression | None:
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

    def _scope(self, select: exp.Expression) -> list[tuple[str, str]]:
        """(alias or name, table) for each table in the FROM/JOIN list, upper-case."""
        scope = []
        for table in select.find_all(exp.Table):
            scope.append((table.alias_or_name.upper(), table.name.upper()))
        return scope

    def _column_type(self, column: exp.Column, scope: list[tuple[str, str]]) -> SqlType | None:
        qualifier = column.table.upper()
        for alias, table in scope:
            if qualifier and qualifier not in (alias, table):
                continue
            for col in self.tables.get(table, []):
                if col.name.upper() == column.name.upper():
                    return col.type
        return None

    def _round_literals(self, tree: exp.Expression) -> None:
        """Literals compared with a datetime column become that column's stored text.

        SQL Server converts the literal to the column's type first; for datetime that
        rounds to 1/300 s ticks (.xx0/.xx3/.xx7), which we must mimic to get the same
        boundary rows.
        """
        scope = self._scope(tree)

        def fix(column: exp.Expression, literal: exp.Expression) -> None:
            if not (isinstance(column, exp.Column) and isinstance(literal, exp.Literal)
                    and literal.is_string):
                return
            sqltype = self._column_type(column, scope)
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

    # -- describing --------------------------------------------------------

    def _describe(self, tree: exp.Expression) -> list[tuple[str, SqlType | None]]:
        select = tree
        while isinstance(select, exp.SetOperation):
            select = select.this
        if not isinstance(select, exp.Select):
            return []
        scope = self._scope(select)
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
            out.append((name, self._type_of(projection, scope)))
        return out

    def _type_of(self, node: exp.Expression, scope: list[tuple[str, str]]) -> SqlType | None:
        if "sqltype" in node.meta:
            return node.meta["sqltype"]  # type: ignore[no-any-return]
        if isinstance(node, (exp.Alias, exp.Paren, exp.Collate)):
            return self._type_of(node.this, scope)
        if isinstance(node, exp.Column):
            return self._column_type(node, scope)
        if isinstance(node, exp.Count):
            return sqltypes.BIGINT if node.args.get("big_int") else sqltypes.SqlType("int")
        if isinstance(node, (exp.Max, exp.Min)):
            return self._type_of(node.this, scope)
        if isinstance(node, exp.Coalesce):
            return self._type_of(node.this, scope)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return SqlType("varchar", length=max(1, len(node.this)))
            if "." in node.this:
                digits = node.this.replace("-", "").split(".")
                return SqlType("numeric", precision=max(1, len(digits[0] + digits[1])),
                               scale=len(digits[1]))
            return sqltypes.SqlType("int") if abs(int(node.this)) < 2**31 else sqltypes.BIGINT
        if isinstance(node, exp.Cast):
            return _datatype(node.to)
        return None


def _near(stmt: str, exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        token = errors[0].get("highlight")
        if token:
            return str(token)
    return stmt.split()[0] if stmt.split() else stmt


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


def _datatype(node: exp.Expression | None) -> SqlType | None:
    if not isinstance(node, exp.DataType):
        return None
    try:
        text = node.sql(dialect="tsql")
        return sqltypes.parse_type(text)
    except ValueError:
        return None

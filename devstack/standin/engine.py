"""T-SQL in, SQLite out: what each statement of a batch means and how to run it.

A batch is split into statements. Session statements that pymssql and FreeTDS send on
their own (SET ..., USE [db], BEGIN/COMMIT/ROLLBACK TRAN, IF @@TRANCOUNT ...) are
answered here without touching SQLite. SELECTs go to ``planner.Planner``, which parses
them with sqlglot (tsql), adjusts them to keep SQL Server semantics (``rewrite``), types
them from the declared column types (``catalog``) and transpiles them to SQLite.
Anything else gets the error SQL Server would give a read-only login.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from dataclasses import dataclass, field

from .sqltypes import SqlType

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


def mark_time_functions(text: str) -> tuple[str, bool]:
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
# SQLite errors


def sqlite_error(exc: sqlite3.Error) -> TdsError:
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

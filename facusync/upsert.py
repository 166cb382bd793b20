"""The SQL of the write path: COPY encoding, the staging table, the guarded upsert.

facusync.sink runs these statements in its transactions; here they are built from the
target table's columns as read at connect time (see sink.py for the guard's rules and
why varchar columns get no cast).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from facusync import control
from facusync.config import Config
from facusync.errors import SchemaError
from facusync.message import Change

log = logging.getLogger("facusync.sink")

STAGE = "facusync_stage"
# How PostgreSQL identifies a conduce: as SQL Server's CI_AS collation does (message.py's
# key_identity), through the unique index of sql/004.
KEY_IDENTITY = "lower(rtrim(conduce, ' '::text))"
# Columns the sync owns itself; never taken from a message.
BOOKKEEPING = frozenset({"sync_id", "eliminado_en_origen", "eliminado_at", "created_at", "updated_at"})
KEY = "conduce"
VERSION = "ultima_modificacion"
_TEXT_TYPES = frozenset({"character varying", "character", "text", "bpchar", "varchar"})

def copy_escape(text: str) -> str:
    """A value for COPY's text format. str.replace, only when needed: it is C-fast, while
    str.translate with multi-character replacements runs character by character."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def copy_text(value: Any) -> str:
    """One JSON value as a COPY text-format field (NULL is ``\\N``)."""
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, str):
        return copy_escape(value)
    if isinstance(value, (int, float)):
        return str(value)
    return copy_escape(json.dumps(value, ensure_ascii=False))


def param_text(value: Any) -> str | None:
    """One JSON value as the text of a query parameter, cast like a staged COPY field."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return copy_text(value)  # t, f, digits: nothing to escape
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_name: str  # format_type without modifiers: "numeric", "character varying", …

    def expression(self, source: sql.Composable, tz: str, *, offsets: bool = False) -> sql.Composable:
        """How a staged text value becomes this column's type.

        `offsets`: some values of a timestamptz column carry an offset (a datetimeoffset
        travels as its UTC instant); the others are SOURCE_TIMEZONE local times.
        """
        if self.type_name in _TEXT_TYPES:
            return source  # assignment coercion: "value too long" instead of truncation
        if self.type_name == "timestamp with time zone" and offsets:
            return sql.SQL("(CASE WHEN substr({0}, length({0}) - 2, 1) = ':' THEN {0}::timestamptz"
                           " ELSE {0}::timestamp AT TIME ZONE {1} END)").format(source, sql.Literal(tz))
        if self.type_name == "timestamp with time zone":
            return sql.SQL("({}::timestamp AT TIME ZONE {})").format(source, sql.Literal(tz))
        return sql.SQL("{}::{}").format(source, sql.SQL(self.type_name))


def read_columns(conn: psycopg2.extensions.connection, cfg: Config) -> dict[str, Column]:
    """The target table's columns the sync writes; SchemaError if it is not migrated."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a"
            " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
            " AND a.attgenerated = '' AND a.attidentity <> 'a' ORDER BY a.attnum",
            ('"' + cfg.pg_table_vista + '"',),
        )
        found = {name: Column(name, type_name) for name, type_name in cur.fetchall()}
        has_control = control.exists(cur)
    needed = {KEY, VERSION, "eliminado_en_origen", "eliminado_at"}
    if not needed <= found.keys() or not has_control:
        raise SchemaError(
            f"PostgreSQL table {cfg.pg_table_vista} or sync_control is missing or "
            "incomplete: run `sudo facusync migrate --admin`"
        )
    return {n: c for n, c in found.items() if n not in BOOKKEEPING}


def has_identity_index(conn: psycopg2.extensions.connection, cfg: Config) -> bool:
    """Whether sql/004's unique index exists; without it keys are compared exactly."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL",
                    ('"' + cfg.pg_table_vista + '_conduce_ci_key"',))
        found = bool(cur.fetchone()[0])  # type: ignore[index]
    if not found:
        log.warning("migration 004_keys_case_insensitive is not applied: keys differing only "
                    "in case or trailing spaces are separate rows; run `sudo facusync migrate --admin`")
    return found


class Statements:
    """The statements of one connection's writes, built once per set of columns."""

    def __init__(self, cfg: Config, columns: dict[str, Column], keys_by_identity: bool,
                 unknown_warned: set[str]) -> None:
        self.columns = columns
        self.keys_by_identity = keys_by_identity  # sql/004: keys compared as SQL Server does
        self.tz = cfg.source_timezone
        self.table = sql.Identifier(cfg.pg_table_vista)
        self._insert_sql: dict[tuple[tuple[str, ...], frozenset[str]], sql.Composed] = {}
        self._unknown_warned = unknown_warned  # columns already logged as unknown

    def stage_table(self, on_commit: str) -> sql.Composed:
        cols = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(n)) for n in self.columns)
        return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) " + on_commit).format(
            sql.Identifier(STAGE), cols)

    @staticmethod
    def copy_into_stage(names: tuple[str, ...]) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(STAGE), sql.SQL(", ").join(map(sql.Identifier, names)))

    def tombstones(self, deletes: list[Change]) -> tuple[sql.Composed, tuple[Any, ...]]:
        """Soft-delete rows not already deleted whose version is not newer than the tombstone's."""
        return sql.SQL(
            "UPDATE {} t SET eliminado_en_origen = true, eliminado_at = now()"
            " FROM unnest(%s::text[], %s::text[]) AS d(conduce, version)"
            " WHERE t.conduce = d.conduce AND NOT t.eliminado_en_origen"
            " AND t.ultima_modificacion <= (d.version::timestamp AT TIME ZONE %s)"
        ).format(self.table), ([c.key for c in deletes], [c.version.isoformat() for c in deletes],
                               self.tz)

    def replace(self, change: Change) -> tuple[sql.Composed, list[Any]]:
        """Reconcile's compare and set (message.py, ``expect``): the view's row replaces
        PostgreSQL's newer one only if PostgreSQL still holds the version reconcile compared
        against."""
        names = self.column_names([change])[2:]
        row = change.row or {}
        assignments = [sql.SQL("{} = {}").format(sql.Identifier(n), self.one_value(n, row.get(n)))
                       for n in names]
        statement = sql.SQL(
            "UPDATE {} SET conduce = %s, ultima_modificacion = (%s::timestamp AT TIME"
            " ZONE %s), {}eliminado_en_origen = false, eliminado_at = NULL WHERE {} = {}"
            " AND ultima_modificacion = (%s::timestamp AT TIME ZONE %s)").format(
            self.table, sql.SQL("").join(a + sql.SQL(", ") for a in assignments), *self.key_match())
        return statement, [change.key, change.version.isoformat(), self.tz,
                           *(param_text(row.get(n)) for n in names), change.key,
                           change.expect.isoformat() if change.expect else None, self.tz]

    def one_value(self, name: str, value: Any) -> sql.Composable:
        """The cast of one query parameter into column `name` (a datetimeoffset keeps its
        offset: it travels as a UTC instant)."""
        column = self.columns[name]
        if (column.type_name == "timestamp with time zone" and isinstance(value, str)
                and value[-3:-2] == ":"):
            return sql.SQL("{}::timestamptz").format(sql.Placeholder())
        return column.expression(sql.Placeholder(), self.tz)

    def key_match(self) -> tuple[sql.Composable, sql.Composable]:
        """Both sides of ``WHERE row's key = %s``, exact or by identity (sql/004)."""
        if self.keys_by_identity:
            return sql.SQL(KEY_IDENTITY), sql.SQL("lower(rtrim(%s, ' '))")
        return sql.SQL(KEY), sql.SQL("%s")

    def column_names(self, upserts: list[Change]) -> tuple[str, ...]:
        """The table columns this batch carries: key and version first, then the rest.

        Keys a row carries that the table lacks are ignored (logged once): the producer sends
        the columns the view and the table share, so this only happens during a migration.
        """
        present: set[str] = set()
        for change in upserts:
            present.update(change.row or ())
        unknown = present - self.columns.keys() - BOOKKEEPING
        if unknown - self._unknown_warned:
            self._unknown_warned |= unknown
            log.warning("messages carry columns the table does not have; ignoring them",
                        extra={"columns": sorted(unknown)})
        rest = sorted((present & self.columns.keys()) - {KEY, VERSION})
        return (KEY, VERSION, *rest)

    @staticmethod
    def copy_payload(upserts: list[Change], names: tuple[str, ...]) -> str:
        rest = names[2:]
        lines = []
        for change in upserts:
            row = change.row or {}
            fields = [copy_escape(change.key), change.version.isoformat()]
            fields.extend([copy_text(row.get(n)) for n in rest])
            lines.append("\t".join(fields))
        lines.append("")
        return "\n".join(lines)

    def offset_columns(self, upserts: list[Change], names: tuple[str, ...]) -> frozenset[str]:
        """timestamptz columns of which this batch carries a value with an offset ('+00:00')."""
        found = set()
        for name in names[2:]:
            if self.columns[name].type_name != "timestamp with time zone":
                continue
            for change in upserts:
                value = (change.row or {}).get(name)
                if isinstance(value, str) and len(value) > 6 and value[-3] == ":":
                    found.add(name)
                    break
        return frozenset(found)

    def insert_statement(self, names: tuple[str, ...],
                          offsets: frozenset[str] = frozenset()) -> sql.Composed:
        cached = self._insert_sql.get((names, offsets))
        if cached is not None:
            return cached
        tz = self.tz
        targets = sql.SQL(", ").join(map(sql.Identifier, names))
        values = sql.SQL(", ").join(
            self.columns[n].expression(sql.SQL("s.") + sql.Identifier(n), tz, offsets=n in offsets)
            for n in names
        )
        # With sql/004 a conduce is found however the view spells it, and the row takes the
        # view's spelling (its tracking row follows by ON UPDATE CASCADE).
        renames = self.keys_by_identity
        updates: list[sql.Composable] = [
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n))
            for n in (names if renames else names[1:])
        ]
        updates.append(sql.SQL("eliminado_en_origen = false, eliminado_at = NULL"))
        compared = (KEY, *names[2:]) if renames else names[2:]
        differ: sql.Composable = sql.SQL("")
        if compared:
            differ = sql.SQL("OR (t.ultima_modificacion = EXCLUDED.ultima_modificacion AND ({}) "
                             "IS DISTINCT FROM ({}))").format(
                sql.SQL(", ").join(sql.SQL("t.") + sql.Identifier(n) for n in compared),
                sql.SQL(", ").join(sql.SQL("EXCLUDED.") + sql.Identifier(n) for n in compared),
            )
        statement = sql.SQL(
            "WITH w AS (INSERT INTO {table} AS t ({targets}) SELECT {values} FROM {stage} s"
            " ORDER BY s.conduce"
            " ON CONFLICT ({target}) DO UPDATE SET {updates}"
            " WHERE t.ultima_modificacion < EXCLUDED.ultima_modificacion {differ}"
            " OR (t.eliminado_en_origen AND t.ultima_modificacion <= EXCLUDED.ultima_modificacion)"
            " RETURNING (xmax = 0) AS fresh)"
            " SELECT count(*) FILTER (WHERE fresh), count(*) FILTER (WHERE NOT fresh) FROM w"
        ).format(
            table=self.table, targets=targets, values=values, stage=sql.Identifier(STAGE),
            updates=sql.SQL(", ").join(updates), differ=differ,
            target=sql.SQL("(" + KEY_IDENTITY + ")" if renames else KEY),
        )
        self._insert_sql[(names, offsets)] = statement
        return statement

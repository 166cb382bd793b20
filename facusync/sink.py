"""PostgreSQL write path: one batch of changes -> one transaction on ``datos_vista``.

The fast path, chosen with ``bench/bench_consumer.py``: COPY the batch (every column as text)
into a TEMP staging table, then one ``INSERT … SELECT … ON CONFLICT (conduce) DO UPDATE …
WHERE guard``. (Staging the row's JSON text and letting PostgreSQL's json_to_record parse it
was measured too: it saves ~0.5 µs of Python per row but costs PostgreSQL ~3 µs more, and
both share the same two cores.)

The guard makes every write idempotent and monotonic (docs/DESIGN.md, invariant 2):

- a row is replaced only by a strictly newer ``ultima_modificacion``, or by the same version
  whose values differ (the source changed a column without touching the version), or when it
  is soft-deleted and the incoming version is at least as new (the conduce came back:
  un-delete);
- a row whose values did not change is never rewritten, so ``updated_at`` (and NocoDB's view
  of the row) does not churn when the producer's overlap window or reconcile re-sends it.

Keys are compared as SQL Server's CI_AS collation compares them (message.key_identity, the
unique index of sql/004): an upsert finds its conduce whatever its case or trailing spaces and
gives the row the view's spelling; the tracking row follows by ON UPDATE CASCADE.

Tombstones soft-delete (``eliminado_en_origen``) only rows not already deleted whose version
is not newer than the tombstone's; a tombstone for an unknown key is a no-op. Tracking rows in
``datos_seguimiento`` are created by the AFTER INSERT statement trigger of sql/001 (its
transition table only holds really inserted rows), never here: the sync never touches the
people's table (invariant 3).

varchar columns get no explicit cast: ``'x'::varchar(30)`` silently truncates, while the
INSERT's assignment coercion raises "value too long", which makes the row a poison row. A
data error (DataError, IntegrityError) rolls the transaction back and the batch is bisected
with savepoints, inside one transaction, until each bad change is isolated; the rest is
written and the bad ones are returned for the dead-letter stream.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from facusync.config import Config
from facusync.errors import QueueError, SchemaError, SinkError
from facusync.message import OP_DELETE, OP_UPSERT, Change, key_identity
from facusync.pgconn import connect_pg, describe_pg_error
from facusync.zone import ensure_zone, mismatch_advice, recorded_zone

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
# Errors caused by the data of some row: bisect. Anything else is an outage or a bug.
ROW_ERRORS: tuple[type[Exception], ...] = (psycopg2.DataError, psycopg2.IntegrityError)
# Raised when two consumers lock the same rows in a different order: retry the batch.
RETRY_ERRORS: tuple[type[Exception], ...] = (psycopg2.errors.DeadlockDetected,
                                             psycopg2.errors.SerializationFailure)
# PG_STATEMENT_TIMEOUT expired (a lock held by another session, a blocked server): an outage
# on a connection that is still good, so roll back and keep it.
TIMEOUT_ERRORS: tuple[type[Exception], ...] = (psycopg2.errors.LockNotAvailable,
                                               psycopg2.errors.QueryCanceled)



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


@dataclass
class WriteResult:
    """What one batch did to the table; ``dead`` are the changes PostgreSQL refused."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    ignored: int = 0  # superseded by a newer version of the same key in the same batch
    dead: list[tuple[Change, str]] = field(default_factory=list)
    newest_version: datetime | None = None

    def add(self, other: WriteResult) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.deleted += other.deleted
        self.ignored += other.ignored
        self.dead.extend(other.dead)
        if other.newest_version is not None and (self.newest_version is None
                                                 or other.newest_version > self.newest_version):
            self.newest_version = other.newest_version


def dedupe(changes: Sequence[Change]) -> tuple[list[Change], int]:
    """Keep one change per key, the newest version; on a tie the later entry wins.

    Needed for correctness, not only speed: ``ON CONFLICT DO UPDATE`` refuses to touch the
    same row twice in one statement. One exception keeps the result equal to applying the
    entries one by one: an upsert followed by a tombstone at least as new (the row changed,
    then vanished) keeps both, and the upsert is applied first (upserts go before deletes).
    Returns the survivors, sorted by key so that parallel consumers lock rows in the same
    order and rarely deadlock, and how many were dropped.
    """
    best: dict[str, Change] = {}
    upsert_before: dict[str, Change] = {}  # newest upsert seen before the key's tombstone
    for change in changes:
        key = key_identity(change.key)  # one conduce however the view spells it
        seen = best.get(key)
        if seen is None or change.version >= seen.version:
            if change.op == OP_DELETE and seen is not None:
                prior = seen if seen.op == OP_UPSERT else upsert_before.get(key)
                if prior is not None:
                    upsert_before[key] = prior
            elif change.op == OP_UPSERT:
                upsert_before.pop(key, None)
            best[key] = change
    survivors: list[Change] = []
    for key in sorted(best):
        change = best[key]
        if change.op == OP_DELETE and key in upsert_before:
            survivors.append(upsert_before[key])
        survivors.append(change)
    return survivors, len(changes) - len(survivors)


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


class Sink:
    """The consumer's PostgreSQL side: owns one connection and the staging table.

    ``staging`` is ``reuse`` (one TEMP table per connection, ``ON COMMIT DELETE ROWS``; the
    default, measured faster) or ``drop`` (created per batch, ``ON COMMIT DROP``; kept for the
    benchmark).
    """

    def __init__(self, cfg: Config, *, consumer: str = "", staging: str = "reuse") -> None:
        self.cfg = cfg
        self.consumer = consumer
        self.staging = staging
        self.table = sql.Identifier(cfg.pg_table_vista)
        self.conn: psycopg2.extensions.connection | None = None
        self.columns: dict[str, Column] = {}
        self.keys_by_identity = False  # sql/004 applied: keys compared as SQL Server does
        # The producer's watermark now (Redis); the stored low-water mark never passes it.
        self.watermark_cap: LowWater | None = None
        self._insert_sql: dict[tuple[tuple[str, ...], frozenset[str]], sql.Composed] = {}
        self._unknown_warned: set[str] = set()

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect and read the target table's columns; SchemaError if not migrated."""
        self.close()
        conn = connect_pg(self.cfg, application=f"facusync-consumer {self.consumer}".strip(),
                          bounded=True)
        try:
            conn.autocommit = False
            self.columns = self._read_columns(conn)
            self.keys_by_identity = self._has_identity_index(conn)
            ensure_zone(conn, self.cfg)
            if self.staging == "reuse":
                self._create_stage(conn, "ON COMMIT DELETE ROWS")
            conn.commit()
        except psycopg2.Error as exc:
            conn.close()
            raise SinkError(describe_pg_error(exc)) from None
        except SchemaError:
            conn.close()
            raise
        self.conn = conn
        self._insert_sql.clear()

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self.conn.close()
            self.conn = None

    def _read_columns(self, conn: psycopg2.extensions.connection) -> dict[str, Column]:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a"
                " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
                " AND a.attgenerated = '' AND a.attidentity <> 'a' ORDER BY a.attnum",
                ('"' + self.cfg.pg_table_vista + '"',),
            )
            found = {name: Column(name, type_name) for name, type_name in cur.fetchall()}
            cur.execute("SELECT to_regclass('sync_control') IS NOT NULL")
            has_control = bool(cur.fetchone()[0])  # type: ignore[index]
        needed = {KEY, VERSION, "eliminado_en_origen", "eliminado_at"}
        if not needed <= found.keys() or not has_control:
            raise SchemaError(
                f"PostgreSQL table {self.cfg.pg_table_vista} or sync_control is missing or "
                "incomplete: run `sudo facusync migrate --admin`"
            )
        return {n: c for n, c in found.items() if n not in BOOKKEEPING}

    def _has_identity_index(self, conn: psycopg2.extensions.connection) -> bool:
        """Whether sql/004's unique index exists; without it keys are compared exactly."""
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL",
                        ('"' + self.cfg.pg_table_vista + '_conduce_ci_key"',))
            found = bool(cur.fetchone()[0])  # type: ignore[index]
        if not found:
            log.warning("migration 004_keys_case_insensitive is not applied: keys differing only "
                        "in case or trailing spaces are separate rows; run `sudo facusync migrate --admin`")
        return found

    def _create_stage(self, conn: psycopg2.extensions.connection, on_commit: str) -> None:
        cols = sql.SQL(", ").join(
            sql.SQL("{} text").format(sql.Identifier(n)) for n in self.columns
        )
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) " + on_commit).format(
                    sql.Identifier(STAGE), cols
                )
            )

    # -- writing ----------------------------------------------------------------------------

    def write(
        self,
        changes: Sequence[Change],
        low_water: datetime | None = None,
    ) -> WriteResult:
        """Apply a batch in one transaction, with the watermark; returns the counts.

        ``low_water`` is the ``lw`` of the oldest entry that was still in the stream at some
        point after this batch was read: everything at or below it is committed (message.py),
        so it may be stored as the durable watermark in this same transaction.
        Raises SinkError when PostgreSQL is unreachable (nothing committed; retry the batch).
        """
        survivors, ignored = dedupe(changes)
        try:
            try:
                result = self._attempt(survivors, len(changes), low_water, bisect=False)
            except ROW_ERRORS as exc:
                self._rollback()
                log.warning("batch refused by PostgreSQL, isolating the bad rows",
                            extra={"size": len(survivors), "error": _first_line(exc)})
                result = self._attempt(survivors, len(changes), low_water, bisect=True)
        except RETRY_ERRORS:
            self._rollback()
            raise
        except TIMEOUT_ERRORS as exc:
            self._rollback()
            raise SinkError(describe_pg_error(exc)) from None
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            self.close()
            raise SinkError(describe_pg_error(exc)) from None
        except psycopg2.Error as exc:  # ProgrammingError & co: schema drift, privileges
            self._rollback()
            raise SinkError(describe_pg_error(exc)) from None
        result.ignored = ignored
        return result

    def _rollback(self) -> None:
        if self.conn is not None:
            try:
                self.conn.rollback()
            except psycopg2.Error:
                self.close()

    def _attempt(self, changes: list[Change], size: int, low_water: datetime | None, *,
                 bisect: bool) -> WriteResult:
        if self.conn is None:
            raise SinkError("not connected")
        with self.conn.cursor() as cur:
            if self.staging == "drop":
                self._create_stage(self.conn, "ON COMMIT DROP")
            result = (self._bisect(cur, changes) if bisect
                      else self._apply(cur, changes, truncate=False))
            written = [c for c in changes if all(c is not d for d, _ in result.dead)]
            result.newest_version = max((c.version for c in written), default=None)
            self._record(cur, result, size, low_water)
        self.conn.commit()
        return result

    def _bisect(self, cur: psycopg2.extensions.cursor, changes: list[Change]) -> WriteResult:
        """Split in halves inside savepoints until every refused change stands alone."""
        cur.execute("SAVEPOINT facusync_part")
        try:
            result = self._apply(cur, changes, truncate=True)
        except ROW_ERRORS as exc:
            cur.execute("ROLLBACK TO SAVEPOINT facusync_part")
            if len(changes) == 1:
                return WriteResult(dead=[(changes[0], _first_line(exc))])
            mid = len(changes) // 2
            result = self._bisect(cur, changes[:mid])
            result.add(self._bisect(cur, changes[mid:]))
            return result
        cur.execute("RELEASE SAVEPOINT facusync_part")
        return result

    def _apply(self, cur: psycopg2.extensions.cursor, changes: list[Change], *,
               truncate: bool) -> WriteResult:
        result = WriteResult()
        upserts = [c for c in changes if c.op == OP_UPSERT and c.expect is None]
        replaces = [c for c in changes if c.op == OP_UPSERT and c.expect is not None]
        deletes = [c for c in changes if c.op == OP_DELETE]
        for change in replaces:
            if self._replace(cur, change):
                result.updated += 1
            else:
                result.unchanged += 1
        if upserts:
            names = self._column_names(upserts)
            if truncate:
                cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(STAGE)))
            cur.copy_expert(
                sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(STAGE), sql.SQL(", ").join(map(sql.Identifier, names))
                ).as_string(cur),
                io.StringIO(self._copy_payload(upserts, names)),
            )
            cur.execute(self._insert_statement(names, self._offset_columns(upserts, names)))
            inserted, updated = cur.fetchone()  # type: ignore[misc]
            result.inserted, result.updated = int(inserted), int(updated)
            result.unchanged = len(upserts) - result.inserted - result.updated
        if deletes:
            cur.execute(
                sql.SQL(
                    "UPDATE {} t SET eliminado_en_origen = true, eliminado_at = now()"
                    " FROM unnest(%s::text[], %s::text[]) AS d(conduce, version)"
                    " WHERE t.conduce = d.conduce AND NOT t.eliminado_en_origen"
                    " AND t.ultima_modificacion <= (d.version::timestamp AT TIME ZONE %s)"
                ).format(self.table),
                ([c.key for c in deletes], [c.version.isoformat() for c in deletes],
                 self.cfg.source_timezone),
            )
            result.deleted = cur.rowcount
        return result

    def _replace(self, cur: psycopg2.extensions.cursor, change: Change) -> bool:
        """Reconcile's compare and set (message.py, ``expect``): the view's row replaces
        PostgreSQL's newer one only if PostgreSQL still holds the version reconcile compared
        against. Rare (restores, hand edits), so one statement per row."""
        names = self._column_names([change])[2:]
        row = change.row or {}
        tz = self.cfg.source_timezone
        assignments = [sql.SQL("{} = {}").format(sql.Identifier(n), self._one_value(n, row.get(n)))
                       for n in names]
        cur.execute(
            sql.SQL("UPDATE {} SET conduce = %s, ultima_modificacion = (%s::timestamp AT TIME"
                    " ZONE %s), {}eliminado_en_origen = false, eliminado_at = NULL WHERE {} = {}"
                    " AND ultima_modificacion = (%s::timestamp AT TIME ZONE %s)").format(
                self.table, sql.SQL("").join(a + sql.SQL(", ") for a in assignments),
                *self._key_match()),
            [change.key, change.version.isoformat(), tz,
             *(param_text(row.get(n)) for n in names), change.key,
             change.expect.isoformat() if change.expect else None, tz],
        )
        return bool(cur.rowcount)

    def _one_value(self, name: str, value: Any) -> sql.Composable:
        """The cast of one query parameter into column `name` (a datetimeoffset keeps its
        offset: it travels as a UTC instant)."""
        column = self.columns[name]
        if (column.type_name == "timestamp with time zone" and isinstance(value, str)
                and value[-3:-2] == ":"):
            return sql.SQL("{}::timestamptz").format(sql.Placeholder())
        return column.expression(sql.Placeholder(), self.cfg.source_timezone)

    def _key_match(self) -> tuple[sql.Composable, sql.Composable]:
        """Both sides of ``WHERE row's key = %s``, exact or by identity (sql/004)."""
        if self.keys_by_identity:
            return sql.SQL(KEY_IDENTITY), sql.SQL("lower(rtrim(%s, ' '))")
        return sql.SQL(KEY), sql.SQL("%s")

    def _column_names(self, upserts: list[Change]) -> tuple[str, ...]:
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
    def _copy_payload(upserts: list[Change], names: tuple[str, ...]) -> str:
        rest = names[2:]
        lines = []
        for change in upserts:
            row = change.row or {}
            fields = [copy_escape(change.key), change.version.isoformat()]
            fields.extend([copy_text(row.get(n)) for n in rest])
            lines.append("\t".join(fields))
        lines.append("")
        return "\n".join(lines)

    def _offset_columns(self, upserts: list[Change], names: tuple[str, ...]) -> frozenset[str]:
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

    def _insert_statement(self, names: tuple[str, ...],
                          offsets: frozenset[str] = frozenset()) -> sql.Composed:
        cached = self._insert_sql.get((names, offsets))
        if cached is not None:
            return cached
        tz = self.cfg.source_timezone
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

    def _record(self, cur: psycopg2.extensions.cursor, result: WriteResult, size: int,
                low_water: datetime | None) -> None:
        """The batch's bookkeeping in sync_control, in the batch's own transaction."""
        low_water = self._capped(cur, low_water)
        cur.execute(
            "UPDATE sync_control SET"
            " watermark = GREATEST(watermark, %s::timestamp),"
            " newest_version = GREATEST(newest_version, (%s::timestamp AT TIME ZONE %s)),"
            " last_commit_at = now(), last_consumer = %s, last_batch_size = %s,"
            " last_inserted = %s, last_updated = %s, last_unchanged = %s, last_deleted = %s,"
            " last_dead = %s WHERE id = 1 AND source_timezone = %s",
            (low_water, result.newest_version, self.cfg.source_timezone, self.consumer, size,
             result.inserted, result.updated, result.unchanged, result.deleted,
             len(result.dead), self.cfg.source_timezone),
        )
        if cur.rowcount == 0:  # the stored times were moved to another zone meanwhile
            recorded = recorded_zone(cur)
            self._rollback()
            raise SchemaError(mismatch_advice(self.cfg, recorded or "an unknown zone"))

    def _capped(self, cur: psycopg2.extensions.cursor,
                low_water: datetime | None) -> datetime | None:
        """The low-water mark this commit may store: never above the producer's watermark.

        `facusync resync` lowers the producer's watermark in Redis, then sync_control's. A
        batch read before that carries a higher ``lw``; storing it would undo the resync for
        the case it exists for (Redis losing its data before the re-read). So: lock the row,
        then read the producer's watermark (``watermark_cap``). Either resync's Redis write
        came first and is seen here, or its sync_control update waits for this commit and
        lowers the mark again. Redis unreachable: nothing is raised this time.
        """
        if low_water is None or self.watermark_cap is None:
            return low_water
        cur.execute("SELECT 1 FROM sync_control WHERE id = 1 FOR UPDATE")
        try:
            cap = self.watermark_cap()
        except QueueError:
            return None
        return low_water if cap is None else min(low_water, cap)

    # -- idle watermark ---------------------------------------------------------------------

    def advance_watermark(self, low_water: datetime) -> None:
        """Raise the durable watermark alone (the idle path: the stream is empty)."""
        if self.conn is None:
            raise SinkError("not connected")
        try:
            with self.conn.cursor() as cur:
                mark = self._capped(cur, low_water)
                cur.execute(
                    "UPDATE sync_control SET watermark = GREATEST(watermark, %s::timestamp)"
                    " WHERE id = 1 AND watermark IS DISTINCT FROM"
                    " GREATEST(watermark, %s::timestamp)",
                    (mark, mark),
                )
            self.conn.commit()
        except TIMEOUT_ERRORS as exc:
            self._rollback()
            raise SinkError(describe_pg_error(exc)) from None
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            self.close()
            raise SinkError(describe_pg_error(exc)) from None
        except psycopg2.Error as exc:
            self._rollback()
            raise SinkError(describe_pg_error(exc)) from None

    def newest_version(self) -> datetime | None:
        """sync_control.newest_version (aware), for the lag shown before the first batch."""
        if self.conn is None:
            return None
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT newest_version FROM sync_control WHERE id = 1")
                row = cur.fetchone()
            self.conn.rollback()
        except psycopg2.Error:
            self._rollback()
            return None
        return row[0] if row else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect_sink(cfg: Config, consumer: str = "", *, staging: str = "reuse") -> Sink:
    """A connected Sink (SinkError / SchemaError when it cannot be)."""
    sink = Sink(cfg, consumer=consumer, staging=staging)
    sink.connect()
    return sink


LowWater = Callable[[], datetime | None]

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
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from facusync import control
from facusync.config import Config
from facusync.errors import QueueError, SchemaError, SinkError
from facusync.message import OP_DELETE, OP_UPSERT, Change, key_identity
from facusync.pgconn import connect_pg, describe_pg_error
from facusync.upsert import STAGE, Statements, has_identity_index, read_columns
from facusync.zone import ensure_zone, mismatch_advice

log = logging.getLogger("facusync.sink")

# Errors caused by the data of some row: bisect. Anything else is an outage or a bug.
ROW_ERRORS: tuple[type[Exception], ...] = (psycopg2.DataError, psycopg2.IntegrityError)
# Raised when two consumers lock the same rows in a different order: retry the batch.
RETRY_ERRORS: tuple[type[Exception], ...] = (psycopg2.errors.DeadlockDetected,
                                             psycopg2.errors.SerializationFailure)
# PG_STATEMENT_TIMEOUT expired (a lock held by another session, a blocked server): an outage
# on a connection that is still good, so roll back and keep it.
TIMEOUT_ERRORS: tuple[type[Exception], ...] = (psycopg2.errors.LockNotAvailable,
                                               psycopg2.errors.QueryCanceled)



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
    committed_newest: float | None = None  # sync_control.newest_version after the commit

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
        if other.committed_newest is not None:
            self.committed_newest = max(self.committed_newest or other.committed_newest,
                                        other.committed_newest)


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


class Sink:
    """The consumer's PostgreSQL side: owns one connection and the staging table, one TEMP
    table per connection emptied at each commit (``ON COMMIT DELETE ROWS``; measured faster
    than one created per batch, which bench/bench_consumer.py still compares)."""

    def __init__(self, cfg: Config, *, consumer: str = "") -> None:
        self.cfg = cfg
        self.consumer = consumer
        self.conn: psycopg2.extensions.connection | None = None
        self.statements = Statements(cfg, {}, False, set())
        # The producer's watermark now (Redis); the stored low-water mark never passes it.
        self.watermark_cap: LowWater | None = None
        self._unknown_warned: set[str] = set()

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect and read the target table's columns; SchemaError if not migrated."""
        self.close()
        conn = connect_pg(self.cfg, application=f"facusync-consumer {self.consumer}".strip(),
                          bounded=True)
        try:
            conn.autocommit = False
            self.statements = Statements(self.cfg, read_columns(conn, self.cfg),
                                         has_identity_index(conn, self.cfg), self._unknown_warned)
            ensure_zone(conn, self.cfg)
            self._create_stage(conn)
            conn.commit()
        except psycopg2.Error as exc:
            conn.close()
            raise SinkError(describe_pg_error(exc)) from None
        except SchemaError:
            conn.close()
            raise
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self.conn.close()
            self.conn = None

    def _create_stage(self, conn: psycopg2.extensions.connection) -> None:
        with conn.cursor() as cur:
            cur.execute(self.statements.stage_table("ON COMMIT DELETE ROWS"))

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
        with self._transaction():
            try:
                result = self._attempt(survivors, len(changes), low_water, bisect=False)
            except ROW_ERRORS as exc:
                self._rollback()
                log.warning("batch refused by PostgreSQL, isolating the bad rows",
                            extra={"size": len(survivors), "error": _first_line(exc)})
                result = self._attempt(survivors, len(changes), low_water, bisect=True)
        result.ignored = ignored
        return result

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """The sink's one error policy: roll back (or drop a broken connection) and raise
        SinkError naming the cause; a conflict with another consumer (RETRY_ERRORS) as is."""
        try:
            yield
        except RETRY_ERRORS:
            self._rollback()
            raise
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            if isinstance(exc, TIMEOUT_ERRORS):  # the connection is still good
                self._rollback()
            else:
                self.close()
            raise SinkError(describe_pg_error(exc)) from None
        except psycopg2.Error as exc:  # ProgrammingError & co: schema drift, privileges
            self._rollback()
            raise SinkError(describe_pg_error(exc)) from None

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
        statements = self.statements
        upserts = [c for c in changes if c.op == OP_UPSERT and c.expect is None]
        replaces = [c for c in changes if c.op == OP_UPSERT and c.expect is not None]
        deletes = [c for c in changes if c.op == OP_DELETE]
        for change in replaces:
            cur.execute(*statements.replace(change))
            if cur.rowcount:
                result.updated += 1
            else:
                result.unchanged += 1
        if upserts:
            names = statements.column_names(upserts)
            if truncate:
                cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(STAGE)))
            cur.copy_expert(statements.copy_into_stage(names).as_string(cur),
                            io.StringIO(statements.copy_payload(upserts, names)))
            cur.execute(statements.insert_statement(names, statements.offset_columns(upserts, names)))
            inserted, updated = cur.fetchone()  # type: ignore[misc]
            result.inserted, result.updated = int(inserted), int(updated)
            result.unchanged = len(upserts) - result.inserted - result.updated
        if deletes:
            cur.execute(*statements.tombstones(deletes))
            result.deleted = cur.rowcount
        return result

    def _record(self, cur: psycopg2.extensions.cursor, result: WriteResult, size: int,
                low_water: datetime | None) -> None:
        """The batch's bookkeeping in sync_control, in the batch's own transaction."""
        low_water = self._capped(cur, low_water)
        recorded, result.committed_newest = control.record_batch(
            cur, low_water=low_water, newest=result.newest_version, zone=self.cfg.source_timezone,
            consumer=self.consumer, size=size, inserted=result.inserted, updated=result.updated,
            unchanged=result.unchanged, deleted=result.deleted, dead=len(result.dead))
        if not recorded:  # the stored times were moved to another zone meanwhile
            recorded_zone = control.zone(cur)
            self._rollback()
            raise SchemaError(mismatch_advice(self.cfg, recorded_zone or "an unknown zone"))

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
        control.lock_row(cur)
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
        with self._transaction():
            with self.conn.cursor() as cur:
                control.raise_watermark(cur, self._capped(cur, low_water))
            self.conn.commit()

    def newest_version(self) -> datetime | None:
        """sync_control.newest_version (aware), for the lag shown before the first batch."""
        if self.conn is None:
            return None
        try:
            with self.conn.cursor() as cur:
                newest = control.newest_version(cur)
            self.conn.rollback()
        except psycopg2.Error:
            self._rollback()
            return None
        return newest


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect_sink(cfg: Config, consumer: str = "") -> Sink:
    """A connected Sink (SinkError / SchemaError when it cannot be)."""
    sink = Sink(cfg, consumer=consumer)
    sink.connect()
    return sink


LowWater = Callable[[], datetime | None]

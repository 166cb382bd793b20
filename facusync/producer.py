"""facusync-producer: every SYNC_INTERVAL, read what changed in the view and append it to Redis.

Change detection (docs/DESIGN.md): read ``version >= watermark - SYNC_OVERLAP`` ordered by
version, so rows committed late with an older timestamp, rows sharing the boundary timestamp
and datetime rounding are all re-read; a per-key fingerprint drops the re-read rows that did
not change, so the overlap costs reads, not writes.

Where the watermark starts: Redis (the last enqueued version); if Redis lost it, PostgreSQL's
committed low-water mark in sync_control; if that is empty too, SYNC_START.

Delivery is at-least-once: a crash after a chunk's script call but before the next re-sends
nothing; a crash inside a chunk re-sends at most that chunk (the consumer is idempotent).

The watermark never passes SQL Server's clock read at the start of the read (GETDATE()): a
row dated in the future (a PC whose clock is a day ahead, a 9999-12-31 sentinel) is synced
once (its fingerprint stops re-sends), reported in the log and `facusync status`, but does
not move the watermark at all: not into the future, where every later real change would fall
below the window, nor to the present, which would start the window SYNC_OVERLAP before the
clock instead of before the newest real version (a lagging writer's late rows need the latter).

How late changes arrive is measured from the data, not assumed: a row first seen in a cycle,
with a version the previous read covered, became visible after that read began (at source
time T), so it arrived at least ``T - version`` late. A writer whose clock lags SQL Server's
(an application server stamping its own time) shows up here, and the quiet-view narrowing
(window_start) widens by what was measured; `facusync status` warns when it exceeds
SYNC_OVERLAP.

Redis losing its data in the middle of a cycle: every chunk's script checks that the source
lock is still ours and the watermark still the one the previous chunk left (stream.Guard).
After a FLUSHALL or a restart without persistence neither is, so the cycle stops and the
next one starts over from PostgreSQL's committed low-water mark.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg2
import redis

from facusync import control, metrics
from facusync.columns import discover_columns, table_columns
from facusync.config import Config
from facusync.enqueue import (
    ChunkResult,
    EncodedRow,
    append_upserts,
    encode,
)
from facusync.errors import (
    EX_OK,
    EX_UNAVAILABLE,
    SchemaError,
    SinkError,
    StateReadError,
    UnavailableError,
)
from facusync.lock import LockLost, RedisLock
from facusync.message import MessageError, encode_row
from facusync.pgconn import connect_pg, describe_pg_error
from facusync.redisconn import Keys, connect_redis, describe_redis_error
from facusync.service import Backoff, Service, StateLog, daemon_main
from facusync.source import ColumnMap, ViewColumnsChanged, ViewSource
from facusync.stream import Guard, State, Stream

log = logging.getLogger("facusync.producer")

DATETIME_MIN = datetime(1753, 1, 1)
LOCK_TTL = 15.0
BACKLOG_CHECK_EVERY = 10  # chunks between two looks at the stream's length
# A version this far past the source's clock (plus the read's own duration) is reported as
# dated in the future; nearer ones are rows committed while the read ran.
FUTURE_MARGIN = 60.0
LATENESS_MEMORY = 24 * 3600.0  # how long a measured lateness keeps widening the window


@dataclass
class CycleStats:
    """What one cycle did; logged, shown in STATUS and kept in Redis for `facusync status`."""

    started: float = 0.0
    read: int = 0
    queued: int = 0
    unchanged: int = 0
    duration_ms: float = 0.0
    watermark: datetime | None = None
    since: datetime | None = None
    backlog: int = 0
    paused: bool = False
    skipped: bool = False
    complete: bool = False
    future: int = 0  # rows dated ahead of the source's clock, seen this cycle
    future_example: str = ""
    late_s: float | None = None  # how late this cycle's new arrivals were, at least


class Lateness:
    """The most any change arrived after its version (seconds), over the last day."""

    def __init__(self, memory: float = LATENESS_MEMORY) -> None:
        self.memory = memory
        self.samples: deque[tuple[float, float]] = deque()  # (monotonic time, seconds)

    def add(self, seconds: float, age: float = 0.0) -> None:
        """A sample measured `age` seconds ago (a restart reloads the last one from Redis)."""
        self.samples.append((time.monotonic() - age, seconds))

    def worst(self) -> float | None:
        """None until an arrival was measured: nothing is known about the writers yet."""
        while self.samples and self.samples[0][0] < time.monotonic() - self.memory:
            self.samples.popleft()
        return max((s for _, s in self.samples), default=None)

    def worst_at(self) -> float | None:
        """Wall-clock time of the worst sample, to store beside it."""
        worst = self.worst()
        if worst is None:
            return None
        taken = max(t for t, s in self.samples if s == worst)
        return time.time() - (time.monotonic() - taken)

    def reload(self, stored: dict[str, str]) -> None:
        """Take back what a previous process measured (producer stats in Redis)."""
        try:
            seconds = float(stored["late_max_s"])
            age = time.time() - float(stored["late_at"])
        except (KeyError, ValueError):
            return
        if 0 <= age < self.memory:
            self.add(seconds, age)


def unencodable(cfg: Config, cols: ColumnMap, row: tuple[object, ...]) -> str:
    """Which column holds a value no message can carry (a type the start-up check missed)."""
    bad = []
    for name, value in zip(cols.view_names, row, strict=True):
        try:
            encode_row({name: value})
        except MessageError:
            bad.append(f"{name} ({type(value).__name__})")
    return (f"view column(s) {', '.join(bad) or '?'} return values facusync cannot sync: leave "
            f"them out of the view, or drop their columns from {cfg.pg_table_vista}")


def missing_columns_advice(cfg: Config, missing: tuple[str, ...]) -> str:
    """What an operator reads when the view lost columns that datos_vista expects."""
    names = ", ".join(missing)
    return (f"the view {cfg.mssql_view} has no column {names} that {cfg.pg_table_vista} expects: "
            "it is no longer synced (PostgreSQL keeps its last values; the other columns are "
            "synced). If the ERP team renamed or dropped it on purpose, rename or drop "
            f"{cfg.pg_table_vista}.{missing[0]} to match (a migration) and restart "
            "facusync-producer; otherwise ask them to restore it (it is picked up again at once)")


def committed_watermark(cfg: Config) -> datetime | None:
    """The consumer's durable low-water mark: everything at or below it is in PostgreSQL.
    StateReadError when PostgreSQL cannot say (an outage: the loop backs off and retries)."""
    try:
        conn = connect_pg(cfg, application="facusync-producer", bounded=True)
    except SinkError as exc:
        raise StateReadError(exc.cause) from None
    try:
        with conn.cursor() as cur:
            return control.watermark(cur)
    except psycopg2.Error as exc:
        raise StateReadError(describe_pg_error(exc)) from None
    finally:
        conn.close()


class _ChunkWriter:
    """Appends chunk N to Redis in a thread while the loop encodes chunk N+1.

    One chunk at most is in flight and chunks are written in order, so the watermark still
    never gets ahead of the stream; a failed write surfaces at the next submit (or at wait),
    before anything later is written.
    """

    def __init__(self, client: redis.Redis, keys: Keys, stats: CycleStats, guard: Guard,
                 ceiling: datetime, arrival_floor: datetime | None) -> None:
        self.client = client
        self.keys = keys
        self.stats = stats
        self.guard = guard  # its watermark follows each chunk's
        self.ceiling = ceiling  # rows dated past the source's clock never move the watermark
        # Queued rows at or above this version were inside the previous read's window: they
        # are new arrivals (None: this cycle measures nothing).
        self.arrival_floor = arrival_floor
        self.oldest_arrival: datetime | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facusync-append")
        self.future: Future[ChunkResult] | None = None
        self.in_flight = 0

    def submit(self, rows: list[EncodedRow], watermark: datetime) -> datetime:
        """Queue a chunk whose low-water mark is `watermark`; return the watermark after it."""
        self.wait()
        if not rows:
            return watermark
        self.in_flight = len(rows)
        self.future = self.executor.submit(append_upserts, self.client, self.keys, rows,
                                           low_water=watermark, advance_watermark=True,
                                           guard=self.guard, ceiling=self.ceiling)
        newest = max((r.version for r in rows
                      if r.version is not None and r.version <= self.ceiling), default=None)
        return newest if newest is not None and newest > watermark else watermark

    def wait(self) -> None:
        if self.future is None:
            return
        future, self.future = self.future, None
        result = future.result()
        if result.watermark_text is not None:
            self.guard = Guard(self.guard.lock_key, self.guard.lock_token, result.watermark_text)
        self.stats.read += self.in_flight
        self.stats.queued += result.queued
        self.stats.unchanged += result.unchanged
        if self.arrival_floor is not None:
            floor = self.arrival_floor
            arrivals = [v for v in result.sent_versions if v >= floor]
            if arrivals and (self.oldest_arrival is None or min(arrivals) < self.oldest_arrival):
                self.oldest_arrival = min(arrivals)
        newest = result.max_version  # at or below the ceiling
        if newest is not None and (self.stats.watermark is None or newest > self.stats.watermark):
            self.stats.watermark = newest

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.executor.shutdown(wait=True)


class ReadWindow:
    """Where each cycle reads from: the watermark's origin, the overlap narrowed while the
    view is quiet, the measured lateness of arrivals, and re-reads after columns came back."""

    def __init__(self, cfg: Config, keys: Keys) -> None:
        self.cfg = cfg
        self.keys = keys
        # The watermark when expected columns went missing, and where to re-read from once
        # they are back (rows changed meanwhile were synced without them).
        self.columns_lost_at: datetime | None = None
        self.reread_from: datetime | None = None
        self.loss_recalled = False
        # Source time at the start of the last cycle that read its whole window, and where
        # that window began (None: from the start).
        self.last_full_read: datetime | None = None
        self.last_since: datetime | None = None
        self.lateness = Lateness()
        self.lateness_reloaded = False
        # Until an arrival is measured: how far the newest version trailed SQL Server's clock
        # at this process's first complete read (a writer an hour behind shows up here too).
        self.boot_lateness: float | None = None
        # The watermark text this process left in Redis; anything else means someone moved
        # it (resync) or Redis lost it.
        self.left_watermark: str | None = None

    def start_watermark(self, stored: str | None) -> tuple[datetime, str]:
        """Where to read from (given Redis' watermark text), and which source said so."""
        if stored is not None:
            return datetime.fromisoformat(stored), "redis"
        committed = committed_watermark(self.cfg)
        if committed is not None:
            log.warning("Redis has no watermark; resuming from PostgreSQL's committed watermark",
                        extra={"watermark": committed.isoformat()})
            return committed, "postgresql"
        return self.cfg.sync_start, "SYNC_START"

    def window_start(self, watermark: datetime, origin: str) -> datetime | None:
        """Where this cycle reads from: the watermark minus the overlap, narrowed when idle.

        The overlap exists for rows committed late, up to SYNC_OVERLAP after their
        ULTIMA_MODIFICACION. A row that became visible after the previous complete read began
        (at source time T) therefore has a version >= T - SYNC_OVERLAP - lag, where lag is how
        far a writer's clock trails SQL Server's (the measured lateness beyond what the
        overlap covers; see Lateness). When the view is quiet the watermark stops moving
        while T does, and re-reading ``watermark - overlap`` would encode and fingerprint the
        same rows forever (the idle cost `make bench` measured). So the window starts at
        ``max(W - overlap, min(W, T - overlap - lateness))``: unchanged while changes flow,
        shrinking to the rows at the watermark itself (never above it: rows sharing the
        boundary timestamp are always re-read) once the view has been quiet for longer than
        that. Only with a watermark this process left in Redis; after a restart, a resync or
        a Redis loss the full window is read. Before any arrival was measured, the lateness
        assumed is how far the newest version trailed the source's clock at the first
        complete read (a writer an hour behind makes that at least an hour).
        """
        if origin == "SYNC_START":
            # First run: everything from SYNC_START; the default reads the whole view.
            return None if watermark <= datetime(2000, 1, 1) else watermark
        overlap = timedelta(seconds=self.cfg.sync_overlap)
        if watermark <= DATETIME_MIN + overlap:
            return None  # `resync --all`: every row, even one dated before 1753 (datetime2)
        since = watermark - overlap
        late = self.lateness.worst()
        if late is None:
            late = self.boot_lateness
        if origin == "redis" and self.last_full_read is not None and late is not None:
            widened = self.last_full_read - overlap - timedelta(seconds=late)
            since = max(since, min(watermark, widened))
        # SQL Server's datetime starts in 1753; a resync --all asks for "everything".
        return max(since, DATETIME_MIN)

    def recall_loss(self, client: redis.Redis, cols: ColumnMap) -> None:
        """Once per process: columns that went missing before a restart (kept with the stats
        in Redis) still need their rows re-read once they are back."""
        if self.loss_recalled:
            return
        self.loss_recalled = True
        text = Stream(client, self.keys).producer_stats().get("columns_lost_at")
        if not text:
            return
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return
        if cols.missing:
            self.columns_lost_at = min(when, self.columns_lost_at or when)
        else:
            self.reread_from = min(when, self.reread_from or when)

    def clock_behind(self, watermark: datetime, source_now: datetime) -> datetime:
        """The watermark is ahead of SQL Server's clock: the clock went back (the repeated
        hour of a daylight-saving change, a correction) or an older version let a future
        row carry it there. Rows written now get versions below it, so read from the clock
        (a lower low-water mark is always true) and forget the narrowing."""
        if self.last_full_read is not None and source_now < self.last_full_read:
            log.warning("SQL Server's clock went back from %s to %s (a daylight-saving change?); "
                        "re-reading from its present time",
                        self.last_full_read.isoformat(sep=" ", timespec="seconds"),
                        source_now.isoformat(sep=" ", timespec="seconds"))
        self.last_full_read = None
        return source_now

    def measure(self, stats: CycleStats, previous_read: datetime,
                 oldest_arrival: datetime | None) -> None:
        """Record how late this cycle's new arrivals were (at least previous read - version)."""
        if oldest_arrival is None:
            return
        stats.late_s = max(0.0, (previous_read - oldest_arrival).total_seconds())
        self.lateness.add(stats.late_s)
        if stats.late_s > self.cfg.sync_overlap:
            log.warning(
                "a change arrived %.0f s after its %s, more than SYNC_OVERLAP=%g s: a writer's "
                "clock lags SQL Server's, or transactions run long. Polling still reads such rows "
                "while it runs, but after a restart or a Redis loss they are left to reconcile; "
                "raise SYNC_OVERLAP above %.0f", stats.late_s, self.cfg.mssql_version_column,
                self.cfg.sync_overlap, stats.late_s, extra={"late_s": stats.late_s})


class CycleReporter:
    """What the producer tells systemd, the metrics, the log and `facusync status`."""

    def __init__(self, cfg: Config, keys: Keys, service: Service, window: ReadWindow) -> None:
        self.cfg = cfg
        self.keys = keys
        self.service = service
        self.window = window
        self.future_reported: set[tuple[str, datetime]] = set()

    def dated_in_future(self, stats: CycleStats, row: EncodedRow, source_now: datetime) -> None:
        """Count a row dated ahead of SQL Server's clock; log it once per key and version."""
        stats.future += 1
        assert row.version is not None
        if not stats.future_example:
            stats.future_example = f"{row.key} at {row.version.isoformat(sep=' ')}"
        seen = (row.key or "", row.version)
        if seen in self.future_reported:
            return
        self.future_reported.add(seen)
        log.warning(
            "row %s has %s %s, ahead of SQL Server's clock (%s): it is synced, but the watermark "
            "stays at the present so later changes keep flowing; correct the row's date at the "
            "source (a PC with a wrong clock, or a sentinel date)", row.key,
            self.cfg.mssql_version_column, row.version.isoformat(sep=" "),
            source_now.isoformat(sep=" ", timespec="seconds"),
            extra={"key": row.key, "version": row.version.isoformat()})

    def report(self, client: redis.Redis | None, stats: CycleStats, state: State, cause: str,
               missing: tuple[str, ...]) -> None:
        """One cycle (or failed attempt) to systemd's STATUS, the metrics, the stats hash
        `facusync status` reads (best effort) and the log."""
        watermark_text = (stats.watermark.isoformat(sep=" ", timespec="seconds")
                          if stats.watermark else "-")
        when = time.strftime("%H:%M:%S", time.localtime(stats.started or time.time()))
        if state is State.PAUSED:
            line = (f"paused by backpressure: backlog {stats.backlog} >= QUEUE_MAX_PENDING "
                    f"{self.cfg.queue_max_pending}; watermark {watermark_text}")
        elif state is State.BACKING_OFF:
            line = f"backing off: {cause}"
        else:
            line = (f"cycle {when}: {stats.queued} changed, watermark {watermark_text}, "
                    f"backlog {stats.backlog}")
        if missing:
            line += f"; NOT SYNCED, gone from the view: {', '.join(missing)}"
        self.service.status(line)
        metrics.producer_cycle(stats, state)
        fields = {
            "state": state.value,
            "cause": cause,
            "missing_columns": ",".join(missing),
            "heartbeat": f"{time.time():.3f}",
            "interval": str(self.cfg.sync_interval),
            "status_line": line,
        }
        if self.window.loss_recalled:  # never erase what a previous process left before reading it
            lost = self.window.columns_lost_at or self.window.reread_from
            fields["columns_lost_at"] = lost.isoformat() if lost else ""
        if state is not State.BACKING_OFF:
            fields.update({
                "last_cycle_at": f"{stats.started:.3f}",
                "last_read": str(stats.read),
                "last_queued": str(stats.queued),
                "last_unchanged": str(stats.unchanged),
                "last_duration_ms": str(stats.duration_ms),
                "watermark": stats.watermark.isoformat() if stats.watermark else "",
                "backlog": str(stats.backlog),
                "future_rows": str(stats.future),
                "future_example": stats.future_example,
                "late_max_s": f"{late:.1f}" if (late := self.window.lateness.worst()) is not None else "",
                "late_at": f"{at:.3f}" if (at := self.window.lateness.worst_at()) is not None else "",
                "overlap": f"{self.cfg.sync_overlap:g}",
            })
        try:
            if client is not None:
                Stream(client, self.keys).report_producer(fields, stats.queued)
        except redis.RedisError:
            pass  # stats are best effort; the next cycle reports the outage
        extra = {"read": stats.read, "queued": stats.queued, "unchanged": stats.unchanged,
                 "duration_ms": stats.duration_ms, "watermark": watermark_text, "backlog": stats.backlog,
                 "state": state.value}
        if state is State.PAUSED:
            log.warning("paused by backpressure", extra=extra)
        elif stats.queued or not stats.complete:
            log.info("cycle: %d read, %d queued", stats.read, stats.queued, extra=extra)
        else:
            log.debug("cycle: nothing changed", extra=extra)


class Producer:
    """The polling loop. One instance per process; not thread-safe."""

    def __init__(self, cfg: Config, service: Service) -> None:
        self.cfg = cfg
        self.service = service
        self.keys = Keys(cfg.redis_prefix)
        self.source = ViewSource(cfg)
        self.client: redis.Redis | None = None
        self.cols: ColumnMap | None = None
        self.table_cols: dict[str, str] | None = None
        self.window = ReadWindow(cfg, self.keys)
        self.state_log = StateLog(log)
        self.backoff = Backoff(cfg.backoff_max)
        self.owner = f"producer@{socket.gethostname()}:{os.getpid()}"
        self.reporter = CycleReporter(cfg, self.keys, service, self.window)

    # -- set-up -----------------------------------------------------------------------
    def _connected_client(self) -> redis.Redis:
        """The Redis client, connecting first after a start or an outage."""
        if self.client is None:
            self.client = connect_redis(self.cfg)
        return self.client

    def discover(self) -> ColumnMap:
        """Synced columns (view ∩ table, case-insensitive): found at start, again after SQL
        Server said a column is gone (error 207), and every cycle while a column datos_vista
        expects is missing from the view, so that it is synced again as soon as it is back."""
        old = self.cols
        if old is not None and not old.missing:
            return old
        if self.table_cols is None:
            self.table_cols = table_columns(self.cfg)
        cols = discover_columns(self.cfg, self.source, self.table_cols)
        if cols == old:
            return cols
        for name in cols.ignored:
            if old is None or name not in old.ignored:
                log.warning("view column %s has no column in %s; it is not synced", name,
                            self.cfg.pg_table_vista, extra={"column": name})
        if cols.missing:
            log.error("%s", missing_columns_advice(self.cfg, cols.missing),
                      extra={"missing_columns": list(cols.missing)})
        back = [n for n in cols.names if old is not None and n not in old.names]
        if back:
            log.warning("view column(s) %s are back; re-reading the rows changed meanwhile",
                        ", ".join(back), extra={"columns": back})
            self.window.reread_from = self.window.columns_lost_at
        if not cols.missing:
            self.window.columns_lost_at = None
        log.info("synced columns: %s", ", ".join(cols.names), extra={"columns": cols.names})
        self.cols = cols
        return cols

    # -- one cycle --------------------------------------------------------------------
    def backlog(self, client: redis.Redis) -> int:
        """Unacknowledged entries: acknowledged ones are deleted, so the length is the backlog."""
        return Stream(client, self.keys).length()

    def cycle(self) -> CycleStats:
        """Read what changed since watermark - overlap and append it, chunk by chunk."""
        stats = CycleStats(started=time.time())
        t0 = time.monotonic()
        client = self._connected_client()
        cols = self.discover()
        # A short TTL: a producer killed while holding the lock delays the next one by seconds.
        lock = RedisLock(client, self.keys.source_lock, ttl=LOCK_TTL, owner=self.owner)
        if not lock.acquire(wait=min(5.0, self.cfg.sync_interval)):
            log.info("source lock held by %s (a reconcile run?); skipping this cycle",
                     lock.holder())
            stats.skipped = True
            stats.complete = True
            return stats
        try:
            if not self.window.lateness_reloaded:
                self.window.lateness.reload(Stream(client, self.keys).producer_stats())
                self.window.lateness_reloaded = True
            stats.backlog = self.backlog(client)
            stored = Stream(client, self.keys).watermark_text()
            watermark, origin = self.window.start_watermark(stored)
            if origin == "redis" and stored != self.window.left_watermark:
                if self.window.left_watermark is not None:
                    log.info("the watermark was moved to %s (a resync?); reading the whole "
                             "window from there", stored, extra={"watermark": stored})
                origin = "moved"
            stats.watermark = watermark
            if stats.backlog >= self.cfg.queue_max_pending:
                stats.paused = True
                return stats
            read_started = self.source.now()
            read_t0 = time.monotonic()
            if watermark > read_started:
                watermark = self.window.clock_behind(watermark, read_started)
            since = self.window.window_start(watermark, origin)
            self.window.recall_loss(client, cols)
            if cols.missing and self.window.columns_lost_at is None:
                self.window.columns_lost_at = watermark
            if self.window.reread_from is not None and since is not None:
                since = max(DATETIME_MIN, min(
                    since, self.window.reread_from - timedelta(seconds=self.cfg.sync_overlap)))
            stats.since = since
            # Every chunk checks the lock and the watermark it expects (absent: "").
            guard = Guard(lock.key, lock.token, stored or "")
            # A re-read for a column that came back re-sends old rows: not late arrivals.
            measures = (origin == "redis" and self.window.last_full_read is not None
                        and self.window.reread_from is None)
            floor = max(since or DATETIME_MIN, self.window.last_since or DATETIME_MIN)
            writer = _ChunkWriter(client, self.keys, stats, guard, ceiling=read_started,
                                  arrival_floor=floor if measures else None)
            try:
                chunks = self._chunks(cols, since, stats, read_started, read_t0)
                for number, (chunk, last) in enumerate(chunks, 1):
                    lock.extend()  # raises LockLost before writing if we lost it
                    watermark = writer.submit(chunk, watermark)
                    if not last and self._interrupted(stats, client, number):
                        return stats
                writer.wait()
            finally:
                writer.close()
                self.window.left_watermark = writer.guard.watermark or None
            stats.backlog = self.backlog(client)
            stats.complete = True
            if measures and self.window.last_full_read is not None:
                self.window.measure(stats, self.window.last_full_read, writer.oldest_arrival)
            if self.window.boot_lateness is None and stats.watermark is not None:
                self.window.boot_lateness = max(0.0, (read_started - stats.watermark).total_seconds())
            self.window.last_full_read = read_started
            self.window.last_since = since
            self.window.reread_from = None
            return stats
        finally:
            lock.release()
            stats.duration_ms = round((time.monotonic() - t0) * 1000, 1)

    def _chunks(self, cols: ColumnMap, since: datetime | None, stats: CycleStats,
                read_started: datetime, read_t0: float) -> Iterator[tuple[list[EncodedRow], bool]]:
        """The rows changed since `since`, encoded, CHUNK_SIZE at a time; True with the last
        (possibly empty) chunk. Rows dated ahead of the source's clock are reported."""
        pending: list[EncodedRow] = []
        for rows in self.source.read_since(cols, since):
            self.service.alive()
            future_after = read_started + timedelta(
                seconds=time.monotonic() - read_t0 + FUTURE_MARGIN)
            for row in rows:
                try:
                    encoded = encode(cols.names, row, cols.key_index, cols.version_index)
                except MessageError:
                    raise SchemaError(unencodable(self.cfg, cols, row)) from None
                if encoded.version is not None and encoded.version > future_after:
                    self.reporter.dated_in_future(stats, encoded, read_started)
                pending.append(encoded)
                if len(pending) >= self.cfg.chunk_size:
                    yield pending, False
                    pending = []
        yield pending, True

    def _interrupted(self, stats: CycleStats, client: redis.Redis, chunks: int) -> bool:
        """Between two chunks: a stop request, or (every BACKLOG_CHECK_EVERY chunks) a
        backlog above QUEUE_MAX_PENDING, ends the cycle early."""
        self.service.alive()
        if self.service.stopping.is_set():
            return True
        if chunks % BACKLOG_CHECK_EVERY:
            return False
        stats.backlog = self.backlog(client)
        self.heartbeat(client)  # a long cycle is not a silent one
        stats.paused = stats.backlog >= self.cfg.queue_max_pending
        return stats.paused

    def report(self, stats: CycleStats, state: State, cause: str = "") -> None:
        missing = self.cols.missing if self.cols is not None else ()
        self.reporter.report(self.client, stats, state, cause, missing)

    def heartbeat(self, client: redis.Redis, **fields: str) -> None:
        """Tell `facusync status` we are alive (and, with fields, what we are doing)."""
        fields["heartbeat"] = f"{time.time():.3f}"
        Stream(client, self.keys).report_producer(fields)

    def report_stopped(self) -> None:
        """A clean stop says so at once; only a producer that died goes silent."""
        with contextlib.suppress(redis.RedisError, UnavailableError):  # then it falls silent
            self.heartbeat(self._connected_client(), state=State.STOPPED.value, cause="",
                           status_line="stopped")

    # -- the loop ---------------------------------------------------------------------
    def run_once(self) -> CycleStats:
        stats = self.cycle()
        self.report(stats, State.PAUSED if stats.paused else State.RUNNING)
        return stats

    def run_forever(self) -> None:
        # One blocking call is bounded by its own timeout; then the loop reports progress.
        self.service.keep_alive_during_calls(
            max(self.cfg.mssql_query_timeout, self.cfg.mssql_login_timeout) + 30.0)
        self.service.ready()
        while not self.service.stopping.is_set():
            started = time.monotonic()
            self.service.alive()
            try:
                stats = self.run_once()
            except SchemaError:
                raise
            except ViewColumnsChanged as exc:
                # Not an outage: find the view's columns again and go on with the ones that
                # remain. datos_vista did not change: its columns stay cached, so that a
                # PostgreSQL outage at the same time cannot stop the producer.
                log.warning("SQL Server: %s; looking at the view's columns again", exc.cause,
                            extra={"column": exc.column})
                self.cols = None
                self.service.sleep(self.backoff.next_delay())
                continue
            except UnavailableError as exc:
                self._failed(exc.target, exc.cause)
                continue
            except redis.RedisError as exc:
                self.client = None
                self._failed("Redis", describe_redis_error(exc, self.cfg))
                continue
            except LockLost as exc:
                # Lost to an expiry, a Redis restart or a FLUSHALL: not a reason to hammer
                # Redis and SQL Server, so the next attempt waits like any other failure.
                log.warning("%s; the cycle stops and the next one starts over", exc)
                self.service.sleep(self.backoff.next_delay())
                continue
            self.state_log.ok()
            self.backoff.reset()
            if stats.paused:
                wait = 1.0
            elif not stats.complete:
                wait = 0.0
            else:
                wait = self.cfg.sync_interval - (time.monotonic() - started)
            if wait > 0:
                self.service.sleep(wait)
        self.report_stopped()
        self.source.close()
        if self.client is not None:
            self.client.close()
        log.info("producer stopped")

    def _failed(self, target: str, cause: str) -> None:
        if target == "SQL Server":
            self.source.close()
        if target == "Redis" and self.client is not None:
            self.client.close()
            self.client = None
        self.state_log.failing(target, cause)
        self.report(CycleStats(started=time.time()), State.BACKING_OFF, f"{target}: {cause}")
        self.service.sleep(self.backoff.next_delay())


def run(cfg: Config, service: Service, args: argparse.Namespace) -> int:
    producer = Producer(cfg, service)
    if args.once:
        try:
            stats = producer.run_once()
        except UnavailableError as exc:
            log.error("%s", exc)
            return EX_UNAVAILABLE
        return EX_OK if stats.complete else EX_UNAVAILABLE
    producer.run_forever()
    return EX_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the facusync-producer console script."""
    return daemon_main("facusync-producer", "Poll the SQL Server view into the Redis stream.",
                       run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""facusync-producer: every SYNC_INTERVAL, read what changed in the view and append it to Redis.

Change detection (docs/DESIGN.md): read ``version >= watermark - SYNC_OVERLAP`` ordered by
version, so rows committed late with an older timestamp, rows sharing the boundary timestamp
and datetime rounding are all re-read; a per-key fingerprint drops the re-read rows that did
not change, so the overlap costs reads, not writes.

Where the watermark starts: Redis (the last enqueued version); if Redis lost it, PostgreSQL's
committed low-water mark in sync_control; if that is empty too, SYNC_START.

Delivery is at-least-once: a crash after a chunk's MULTI/EXEC but before the next re-sends
nothing; a crash inside a chunk re-sends at most that chunk (the consumer is idempotent).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg2
import redis

from facusync import metrics
from facusync.config import Config
from facusync.enqueue import ChunkResult, EncodedRow, append_upserts, encode, read_watermark
from facusync.errors import EX_OK, EX_UNAVAILABLE, SchemaError, SinkError, UnavailableError
from facusync.lock import LockLost, RedisLock
from facusync.pgconn import connect_pg, describe_pg_error
from facusync.redisconn import Keys, connect_redis, describe_redis_error
from facusync.service import Backoff, Service, StateLog, daemon_main
from facusync.source import ColumnMap, ViewSource, map_columns

log = logging.getLogger("facusync.producer")

DATETIME_MIN = datetime(1753, 1, 1)
LOCK_TTL = 15.0
BACKLOG_CHECK_EVERY = 10  # chunks between two looks at the stream's length


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


def table_columns(cfg: Config) -> list[str]:
    """Columns of datos_vista, so the synced set follows the schema without code changes."""
    conn = connect_pg(cfg, application="facusync-producer", bounded=True)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s",
                (cfg.pg_table_vista,),
            )
            cols = [r[0] for r in cur.fetchall()]
    except psycopg2.Error as exc:
        raise SinkError(describe_pg_error(exc)) from None
    finally:
        conn.close()
    if not cols:
        raise SchemaError(
            f"PostgreSQL table {cfg.pg_table_vista} does not exist in {cfg.pg_database}: "
            "run `sudo facusync migrate --admin` first"
        )
    return cols


def discover_columns(cfg: Config, source: ViewSource) -> ColumnMap:
    """The synced columns: the view's and datos_vista's, matched case-insensitively."""
    return map_columns(source.view_columns(), table_columns(cfg), cfg.mssql_key_column,
                       cfg.mssql_version_column)


def committed_watermark(cfg: Config) -> datetime | None:
    """The consumer's durable low-water mark: everything at or below it is in PostgreSQL."""
    conn = connect_pg(cfg, application="facusync-producer", bounded=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT watermark FROM sync_control WHERE id = 1")
            row = cur.fetchone()
    except psycopg2.Error as exc:
        raise SinkError(describe_pg_error(exc)) from None
    finally:
        conn.close()
    return row[0] if row and row[0] is not None else None


class _ChunkWriter:
    """Appends chunk N to Redis in a thread while the loop encodes chunk N+1.

    One chunk at most is in flight and chunks are written in order, so the watermark still
    never gets ahead of the stream; a failed write surfaces at the next submit (or at wait),
    before anything later is written.
    """

    def __init__(self, client: redis.Redis, keys: Keys, stats: CycleStats) -> None:
        self.client = client
        self.keys = keys
        self.stats = stats
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
                                           low_water=watermark, advance_watermark=True)
        newest = max((r.version for r in rows if r.version is not None), default=None)
        return newest if newest is not None and newest > watermark else watermark

    def wait(self) -> None:
        if self.future is None:
            return
        future, self.future = self.future, None
        result = future.result()
        self.stats.read += self.in_flight
        self.stats.queued += result.queued
        self.stats.unchanged += result.unchanged
        if result.max_version is not None and (
            self.stats.watermark is None or result.max_version > self.stats.watermark
        ):
            self.stats.watermark = result.max_version

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.executor.shutdown(wait=True)


class Producer:
    """The polling loop. One instance per process; not thread-safe."""

    def __init__(self, cfg: Config, service: Service) -> None:
        self.cfg = cfg
        self.service = service
        self.keys = Keys(cfg.redis_prefix)
        self.source = ViewSource(cfg)
        self.redis: redis.Redis | None = None
        self.cols: ColumnMap | None = None
        self.state_log = StateLog(log)
        self.backoff = Backoff(cfg.backoff_max)
        self.owner = f"producer@{socket.gethostname()}:{os.getpid()}"
        # Source time at the start of the last cycle that read its whole window.
        self.last_full_read: datetime | None = None

    # -- set-up -----------------------------------------------------------------------
    def _client(self) -> redis.Redis:
        if self.redis is None:
            self.redis = connect_redis(self.cfg)
        return self.redis

    def discover(self) -> ColumnMap:
        """Synced columns, found once at start (view ∩ table, case-insensitive)."""
        if self.cols is None:
            cols = discover_columns(self.cfg, self.source)
            for name in cols.ignored:
                log.warning("view column %s has no column in %s; it is not synced", name,
                            self.cfg.pg_table_vista, extra={"column": name})
            log.info("synced columns: %s", ", ".join(cols.names), extra={"columns": cols.names})
            self.cols = cols
        return self.cols

    def start_watermark(self, client: redis.Redis) -> tuple[datetime, str]:
        """Where to read from, and which of the three sources said so."""
        wm = read_watermark(client, self.keys)
        if wm is not None:
            return wm, "redis"
        wm = committed_watermark(self.cfg)
        if wm is not None:
            log.warning("Redis has no watermark; resuming from PostgreSQL's committed watermark",
                        extra={"watermark": wm.isoformat()})
            return wm, "postgresql"
        return self.cfg.sync_start, "SYNC_START"

    def window_start(self, watermark: datetime, origin: str) -> datetime | None:
        """Where this cycle reads from: the watermark minus the overlap, narrowed when idle.

        The overlap exists for rows committed late, up to SYNC_OVERLAP after their
        ULTIMA_MODIFICACION. A row that became visible after the previous complete read began
        (at source time T) therefore has a version >= T - SYNC_OVERLAP. When the view is quiet
        the watermark stops moving while T does, and re-reading ``watermark - overlap`` would
        encode and fingerprint the same rows forever (the idle cost `make bench` measured).
        So the window starts at ``max(W - overlap, min(W, T - overlap))``: unchanged while
        changes flow, shrinking to the rows at the watermark itself (never above it: rows
        sharing the boundary timestamp are always re-read) once the view has been quiet for
        longer than the overlap. Only with a watermark read from Redis by this process; after
        a restart, a resync or a Redis loss the full window is read.
        """
        if origin == "SYNC_START":
            # First run: everything from SYNC_START; the default reads the whole view.
            return None if watermark <= datetime(2000, 1, 1) else watermark
        overlap = timedelta(seconds=self.cfg.sync_overlap)
        since = watermark - overlap
        if origin == "redis" and self.last_full_read is not None:
            since = max(since, min(watermark, self.last_full_read - overlap))
        # SQL Server's datetime starts in 1753; a resync --all asks for "everything".
        return max(since, DATETIME_MIN)

    # -- one cycle --------------------------------------------------------------------
    def backlog(self, client: redis.Redis) -> int:
        """Unacknowledged entries: acknowledged ones are deleted, so the length is the backlog."""
        return int(client.xlen(self.keys.stream))

    def cycle(self) -> CycleStats:
        """Read what changed since watermark - overlap and append it, chunk by chunk."""
        stats = CycleStats(started=time.time())
        t0 = time.monotonic()
        client = self._client()
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
            stats.backlog = self.backlog(client)
            watermark, origin = self.start_watermark(client)
            stats.watermark = watermark
            if stats.backlog >= self.cfg.queue_max_pending:
                stats.paused = True
                return stats
            read_started = self.source.now()
            since = self.window_start(watermark, origin)
            stats.since = since
            writer = _ChunkWriter(client, self.keys, stats)
            try:
                pending: list[EncodedRow] = []
                chunks = 0
                for rows in self.source.read_since(cols, since):
                    self.service.alive()
                    for row in rows:
                        pending.append(encode(cols.names, row, cols.key_index, cols.version_index))
                        if len(pending) >= self.cfg.chunk_size:
                            lock.extend()  # raises LockLost before writing if we lost it
                            watermark = writer.submit(pending, watermark)
                            pending = []
                            chunks += 1
                            self.service.alive()
                            if self.service.stopping.is_set():
                                return stats
                            if chunks % BACKLOG_CHECK_EVERY == 0:
                                stats.backlog = self.backlog(client)
                                self.heartbeat(client)  # a long cycle is not a silent one
                                if stats.backlog >= self.cfg.queue_max_pending:
                                    stats.paused = True
                                    return stats
                lock.extend()
                writer.submit(pending, watermark)
                writer.wait()
            finally:
                writer.close()
            stats.backlog = self.backlog(client)
            stats.complete = True
            self.last_full_read = read_started
            return stats
        finally:
            lock.release()
            stats.duration_ms = round((time.monotonic() - t0) * 1000, 1)

    # -- reporting --------------------------------------------------------------------
    def report(self, stats: CycleStats, state: str, cause: str = "") -> None:
        wm = stats.watermark.isoformat(sep=" ", timespec="seconds") if stats.watermark else "-"
        when = time.strftime("%H:%M:%S", time.localtime(stats.started or time.time()))
        if state == "paused":
            line = (f"paused by backpressure: backlog {stats.backlog} >= QUEUE_MAX_PENDING "
                    f"{self.cfg.queue_max_pending}; watermark {wm}")
        elif state == "backing_off":
            line = f"backing off: {cause}"
        else:
            line = (f"cycle {when}: {stats.queued} changed, watermark {wm}, "
                    f"backlog {stats.backlog}")
        self.service.status(line)
        metrics.producer_cycle(stats, state)
        fields = {
            "state": state,
            "cause": cause,
            "heartbeat": f"{time.time():.3f}",
            "interval": str(self.cfg.sync_interval),
            "status_line": line,
        }
        if state != "backing_off":
            fields.update({
                "last_cycle_at": f"{stats.started:.3f}",
                "last_read": str(stats.read),
                "last_queued": str(stats.queued),
                "last_unchanged": str(stats.unchanged),
                "last_duration_ms": str(stats.duration_ms),
                "watermark": stats.watermark.isoformat() if stats.watermark else "",
                "backlog": str(stats.backlog),
            })
        try:
            if self.redis is not None:
                self.redis.hset(self.keys.producer_stats, mapping=fields)  # type: ignore[arg-type]
                if stats.queued:
                    self.redis.hincrby(self.keys.producer_stats, "total_queued", stats.queued)
        except redis.RedisError:
            pass  # stats are best effort; the next cycle reports the outage
        extra = {"read": stats.read, "queued": stats.queued, "unchanged": stats.unchanged,
                 "duration_ms": stats.duration_ms, "watermark": wm, "backlog": stats.backlog,
                 "state": state}
        if state == "paused":
            log.warning("paused by backpressure", extra=extra)
        elif stats.queued or not stats.complete:
            log.info("cycle: %d read, %d queued", stats.read, stats.queued, extra=extra)
        else:
            log.debug("cycle: nothing changed", extra=extra)

    def heartbeat(self, client: redis.Redis, **fields: str) -> None:
        """Tell `facusync status` we are alive (and, with fields, what we are doing)."""
        fields["heartbeat"] = f"{time.time():.3f}"
        client.hset(self.keys.producer_stats, mapping=fields)  # type: ignore[arg-type]

    def report_stopped(self) -> None:
        """A clean stop says so at once; only a producer that died goes silent."""
        with contextlib.suppress(redis.RedisError, UnavailableError):  # then it falls silent
            self.heartbeat(self._client(), state="stopped", cause="", status_line="stopped")

    # -- the loop ---------------------------------------------------------------------
    def run_once(self) -> CycleStats:
        stats = self.cycle()
        self.report(stats, "paused" if stats.paused else "running")
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
            except UnavailableError as exc:
                self._failed(exc.target, exc.cause)
                continue
            except redis.RedisError as exc:
                self.redis = None
                self._failed("Redis", describe_redis_error(exc, self.cfg))
                continue
            except LockLost as exc:
                log.warning("%s; the cycle stops and the next one resumes", exc)
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
        if self.redis is not None:
            self.redis.close()
        log.info("producer stopped")

    def _failed(self, target: str, cause: str) -> None:
        if target == "SQL Server":
            self.source.close()
        if target == "Redis" and self.redis is not None:
            self.redis.close()
            self.redis = None
        self.state_log.failing(target, cause)
        self.report(CycleStats(started=time.time()), "backing_off", f"{target}: {cause}")
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

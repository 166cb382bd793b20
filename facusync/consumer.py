"""`facusync-consumer`: the change stream -> PostgreSQL, at least once, idempotently.

Delivery guarantee (say it plainly, like arq and dramatiq do): every entry is applied **at
least once**. An entry is acknowledged (XACK) and deleted (XDEL) only after the PostgreSQL
transaction that wrote it committed, so a crash, SIGKILL or outage anywhere before that makes
the entry be delivered again, to this consumer after a retry or to another one through the
claim pass. Applying an entry twice, or an older version after a newer one, is harmless: the
upsert guard in facusync.sink makes every write idempotent and monotonic, so "at least once"
has the effect of "exactly once".

The loop, one batch at a time:

1. A reader thread XREADGROUPs up to BATCH_SIZE entries as a named member of the group
   (hostname-pid, so consumers on several hosts share the work), decodes them, and keeps the
   next batch ready while PostgreSQL works on the current one (queue depth 1).
2. The batch is written in ONE transaction (facusync.sink), with the durable low-water
   watermark in sync_control.
3. After COMMIT, one MULTI/EXEC writes the dead letters, XACKs and XDELs the batch's ids
   (never XTRIM on the live stream: it could drop entries nobody has committed yet); then
   the stats, best effort.

Crash recovery: on start and every CLAIM_IDLE/2, entries pending longer than CLAIM_IDLE (their
consumer died or hangs) are claimed and processed. A restart is not the entry's fault (systemd
may have restarted a consumer that waited for PostgreSQL), so an entry delivered more than
MAX_DELIVERIES times is not dead-lettered for that alone: it is written alone, in its own
transaction, and goes to the dead letters only if PostgreSQL refuses it, or if consumers stopped
SUSPECT_STOPS times while writing it alone (a row that kills the consumer). Outages: the batch
stays unacknowledged, the failure is logged once per state change, and the write is retried
with capped backoff after reconnecting. Every PostgreSQL statement and lock wait is bounded by
PG_STATEMENT_TIMEOUT (facusync.pgconn), and the watchdog is fed while such a bounded call runs,
so a table locked by a DBA for minutes is an outage waited out, not a hang systemd kills.

Ordering: one consumer applies entries in stream order, batch after batch. Several consumers
(or a claim of a dead consumer's old entries) may apply two entries of one key from different
batches in either order. The guard makes that harmless for different versions; only two
*different* contents under the *same* ULTIMA_MODIFICACION (or a tombstone and a comeback under
the same version) can then end either way, until the row changes again or is re-sent.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from facusync import metrics
from facusync.config import Config
from facusync.deadletter import dead_letter_fields, queue_dead_letter
from facusync.errors import QueueError, SinkError
from facusync.message import Change, MessageError, decode
from facusync.redisconn import GROUP, Keys, connect_redis, describe_redis_error
from facusync.service import Backoff, Service, StateLog, daemon_main
from facusync.sink import RETRY_ERRORS, Sink, WriteResult

log = logging.getLogger("facusync.consumer")

BLOCK_MS = 1000  # XREADGROUP BLOCK: short, so stop requests and idle work are prompt
PREFETCH = 1  # batches decoded ahead of the one being written
STATS_TTL = 300  # a consumer whose stats hash expired is gone
LATENCY_SAMPLES = 1000
DEAD_CONSUMER_AFTER = 3600.0  # group members idle this long with nothing pending are removed
DRAIN_ON_STOP = 10.0  # seconds allowed on SIGTERM to write what was already read
SUSPECT_STOPS = 2  # consumers that stopped while writing an entry alone: then it is poison
SUSPECT_TTL = 7 * 86400  # the suspects hash is forgotten after a week without suspects

Fields = Mapping[bytes | str, bytes | str]


def consumer_name() -> str:
    """Unique in the group: several consumers on several hosts share the work."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@dataclass
class Batch:
    """Entries read together; ``changes`` are the valid ones, ``dead`` the refused ones,
    ``suspects`` the valid ones delivered more than MAX_DELIVERIES times (written alone)."""

    ids: list[str] = field(default_factory=list)
    raw: dict[str, Fields] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    suspects: list[Change] = field(default_factory=list)
    dead: list[tuple[str, str]] = field(default_factory=list)  # (entry id, reason)
    deliveries: dict[str, int] = field(default_factory=dict)
    low_water: datetime | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ReadFailure:
    """The reader thread could not reach Redis; the main loop logs it (once per state)."""

    cause: str


def make_batch(entries: list[tuple[Any, Fields]], deliveries: Mapping[str, int],
               max_deliveries: int) -> Batch:
    """Decode entries; contract violations become dead letters, over-delivered entries
    suspects."""
    batch = Batch()
    for raw_id, fields in entries:
        if raw_id is None or fields is None:
            continue  # claimed but already deleted
        entry_id = _text(raw_id)
        batch.ids.append(entry_id)
        batch.raw[entry_id] = fields
        count = deliveries.get(entry_id, 1)
        batch.deliveries[entry_id] = count
        try:
            change = decode(entry_id, fields)
        except MessageError as exc:
            batch.dead.append((entry_id, str(exc)))
            continue
        (batch.suspects if count > max_deliveries else batch.changes).append(change)
    return batch


def parse_low_water(entries: list[tuple[Any, Fields]]) -> datetime | None:
    """The ``lw`` of the oldest stream entry (XRANGE - + COUNT 1), if it carries one."""
    if not entries:
        return None
    fields = entries[0][1] or {}
    text = _text(fields.get("lw", fields.get(b"lw")))
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


class Stats:
    """Running counters for the log, the Redis stats hash and the systemd STATUS line."""

    def __init__(self) -> None:
        self.totals: collections.Counter[str] = collections.Counter()
        self.window: collections.deque[tuple[float, int]] = collections.deque()
        self.last_commit: float | None = None
        self.first_batch_at: float | None = None  # when the first batch started (benchmarks)
        self.newest: float | None = None  # newest committed version, Unix seconds
        self.dead_letters = 0

    def batch(self, size: int, result: WriteResult, dead: int, newest: float | None) -> None:
        now = time.monotonic()
        self.window.append((now, size))
        self.totals.update(rows=size, batches=1, inserted=result.inserted,
                           updated=result.updated, unchanged=result.unchanged,
                           deleted=result.deleted, dead=dead)
        self.last_commit = time.time()
        if newest is not None and (self.newest is None or newest > self.newest):
            self.newest = newest

    def rows_per_s(self, span: float = 60.0) -> float:
        now = time.monotonic()
        while self.window and self.window[0][0] < now - span:
            self.window.popleft()
        if not self.window:
            return 0.0
        elapsed = max(now - self.window[0][0], 1.0)
        return sum(n for _, n in self.window) / elapsed

    def lag(self) -> float | None:
        return None if self.newest is None else max(0.0, time.time() - self.newest)

    def status_line(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.last_commit)) if self.last_commit else "-"
        lag = self.lag()
        lag_text = f"{lag:.0f}s" if lag is not None else "-"
        return (f"rows/s {self.rows_per_s():.0f}, last commit {when}, lag {lag_text}, "
                f"dead letters {self.dead_letters}")


class Reader(threading.Thread):
    """Reads and decodes the next batch while the main loop writes the current one.

    Only reading happens here; the main thread writes, acknowledges and claims, so an entry
    is still acknowledged only after its commit. ``progress`` lets the main loop starve the
    watchdog if this thread hangs.
    """

    def __init__(self, consumer: Consumer) -> None:
        super().__init__(name="facusync-reader", daemon=True)
        self.consumer = consumer
        self.items: queue.Queue[Batch | ReadFailure] = queue.Queue()
        self.space = threading.Semaphore(PREFETCH)
        self.halt = threading.Event()
        self.progress = time.monotonic()

    def run(self) -> None:
        backoff = Backoff(self.consumer.cfg.backoff_max)
        while not self.halt.is_set():
            if not self.space.acquire(timeout=0.5):
                self.progress = time.monotonic()  # waiting for the writer is not a hang
                continue
            try:
                batch = self.consumer.read_batch()
            except QueueError as exc:  # an outage is not a hang: progress is still made
                self.progress = time.monotonic()
                self.items.put(ReadFailure(exc.cause))
                self.halt.wait(backoff.next_delay())
                continue
            except Exception as exc:  # never die silently: the main loop reports it
                log.exception("reader thread failed")
                self.items.put(ReadFailure(f"unexpected error: {exc}"))
                self.halt.wait(backoff.next_delay())
                continue
            backoff.reset()
            self.progress = time.monotonic()
            self.items.put(batch)

    def taken(self) -> None:
        """The main loop took a batch: the reader may read the next one."""
        self.space.release()


class Consumer:
    """One member of the consumer group: the loop, its Redis side and its PostgreSQL sink."""

    def __init__(self, cfg: Config, service: Service | None = None, name: str | None = None,
                 *, staging: str = "reuse") -> None:
        self.cfg = cfg
        self.service = service or Service("facusync-consumer")
        self.name = name or consumer_name()
        self.keys = Keys(cfg.redis_prefix)
        self.sink = Sink(cfg, consumer=self.name, staging=staging)
        self.sink.watermark_cap = self.producer_watermark
        self.redis: redis.Redis | None = None
        self.stats = Stats()
        self.state = StateLog(log)
        self.backoff = Backoff(cfg.backoff_max)
        self._idle_watermark: datetime | None = None
        self._state = "starting"

    # -- connections ------------------------------------------------------------------------

    def _redis(self) -> redis.Redis:
        if self.redis is None:
            self.redis = connect_redis(self.cfg)
        return self.redis

    def connect(self) -> bool:
        """Connect to both servers and make sure the group exists; False if stopped first.

        SchemaError (tables missing) propagates: restarting cannot fix it, migrate can.
        """
        while not self.service.stopping.is_set():
            try:
                if self.sink.conn is None:
                    self.sink.connect()
                    newest = self.sink.newest_version()
                    if newest is not None and self.stats.newest is None:
                        self.stats.newest = newest.timestamp()
                self.ensure_group()
            except SinkError as exc:
                self._failing("PostgreSQL", exc.cause)
                continue
            except QueueError as exc:
                self._failing("Redis", exc.cause)
                continue
            self.state.ok()
            self.backoff.reset()
            return True
        return False

    def _failing(self, what: str, cause: str) -> None:
        self.state.failing(what, cause)
        self._state = f"{what} unavailable"
        self.service.status(f"waiting for {what}: {cause}")
        self.service.sleep(self.backoff.next_delay())

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a Redis command, turning driver errors into QueueError (NOGROUP: recreate)."""
        try:
            return fn(*args, **kwargs)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                log.warning("consumer group missing (Redis lost its data?); recreating it")
                self.ensure_group()
                return fn(*args, **kwargs)
            raise QueueError(describe_redis_error(exc, self.cfg)) from None
        except (redis.RedisError, OSError) as exc:
            raise QueueError(describe_redis_error(exc, self.cfg)) from None

    def ensure_group(self) -> None:
        """Create the group at id 0 (everything already queued is still to do) if missing."""
        try:
            self._redis().xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
            log.info("created consumer group", extra={"stream": self.keys.stream, "group": GROUP})
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise QueueError(describe_redis_error(exc, self.cfg)) from None
        except (redis.RedisError, OSError) as exc:
            raise QueueError(describe_redis_error(exc, self.cfg)) from None

    # -- reading ----------------------------------------------------------------------------

    def read_batch(self, block_ms: int = BLOCK_MS) -> Batch:
        """The next new entries for this consumer (empty when none arrived within block_ms).

        The oldest entry of the stream is read in the same round trip: its ``lw`` is a valid
        low-water mark at that moment (everything before it was committed, then deleted), and
        a low-water mark stays true forever, so it may be stored with this batch's commit.
        Our own batch is still in the stream then, which only makes it more conservative.
        """
        client = self._redis()

        def read() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.xreadgroup(GROUP, self.name, {self.keys.stream: ">"},
                            count=self.cfg.batch_size, block=block_ms)
            pipe.xrange(self.keys.stream, "-", "+", count=1)
            return pipe.execute()  # type: ignore[no-any-return]

        response, oldest = self._call(read)
        entries = response[0][1] if response else []
        batch = make_batch(entries, {}, self.cfg.max_deliveries)
        batch.low_water = parse_low_water(oldest)
        return batch

    def producer_watermark(self) -> datetime | None:
        """The producer's watermark in Redis now (lowered by `facusync resync`); QueueError."""
        raw = self._call(self._redis().get, self.keys.watermark)
        try:
            return datetime.fromisoformat(_text(raw)) if raw is not None else None
        except ValueError:
            return None

    def oldest_low_water(self) -> datetime | None:
        return parse_low_water(self._call(self._redis().xrange, self.keys.stream, "-", "+",
                                          count=1))

    def claim_batches(self, limit_rounds: int = 1000) -> int:
        """Claim and process entries idle longer than CLAIM_IDLE (their consumer died).

        XPENDING first, then XCLAIM, rather than XAUTOCLAIM: XPENDING reports how many times
        each entry was delivered, which MAX_DELIVERIES needs. Returns the entries claimed.
        """
        client = self._redis()
        idle_ms = int(self.cfg.claim_idle * 1000)
        claimed_total = 0
        for _ in range(limit_rounds):
            if self.service.stopping.is_set():
                break
            pending = self._call(client.xpending_range, self.keys.stream, GROUP, "-", "+",
                                 self.cfg.batch_size, idle=idle_ms)
            # Our own pending entries are being written or wait in the reader's queue.
            others = [p for p in pending if _text(p["consumer"]) != self.name]
            if not others:
                break
            counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in others}
            claimed = self._call(client.xclaim, self.keys.stream, GROUP, self.name, idle_ms,
                                 list(counts))
            entries = [(i, f) for i, f in claimed if i is not None]
            if entries:
                # XCLAIM counted one more delivery.
                batch = make_batch(entries, {k: v + 1 for k, v in counts.items()},
                                   self.cfg.max_deliveries)
                batch.low_water = self.oldest_low_water()
                log.warning("claimed entries of a stopped consumer",
                            extra={"size": len(batch), "owners": sorted(
                                {_text(p["consumer"]) for p in others})})
                claimed_total += len(batch)
                if not self.process(batch):
                    break
            if len(pending) < self.cfg.batch_size:
                break
        self._forget_dead_consumers()
        return claimed_total

    def _forget_dead_consumers(self) -> None:
        """Remove group members long idle with nothing pending (each restart adds one)."""
        try:
            members = self._call(self._redis().xinfo_consumers, self.keys.stream, GROUP)
            for member in members:
                name = _text(member.get("name"))
                if (name != self.name and int(member.get("pending", 0)) == 0
                        and int(member.get("idle", 0)) > DEAD_CONSUMER_AFTER * 1000):
                    self._call(self._redis().xgroup_delconsumer, self.keys.stream, GROUP, name)
        except QueueError:
            pass  # housekeeping only

    # -- writing ----------------------------------------------------------------------------

    def process(self, batch: Batch, *, retry: bool = True) -> bool:
        """Write, commit, then acknowledge one batch. False: abandoned unacknowledged.

        An outage keeps the batch unacknowledged and retries it (with backoff, reconnecting)
        until it is written or a stop is requested; then it is abandoned and will be claimed.
        """
        started = time.monotonic()
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = time.time()
        result = WriteResult()
        if batch.suspects:
            alone = self._write_suspects(batch, retry=retry)
            if alone is None:
                return False
            result.add(alone)
        if batch.changes:
            written = self._write(batch.changes, batch.low_water, retry=retry)
            if written is None:
                return False
            result.add(written)
        dead = list(batch.dead) + [(c.entry_id, reason) for c, reason in result.dead]
        duration_ms = (time.monotonic() - started) * 1000
        newest = (result.newest_version.replace(tzinfo=self.cfg.tz).timestamp()
                  if result.newest_version else None)
        self.stats.batch(len(batch), result, len(dead), newest)
        metrics.consumer_batch(result, len(dead), duration_ms / 1000, batch.low_water, self.stats.newest)
        if not self._acknowledge(batch, dead, result, duration_ms, retry=retry):
            return False
        extra = {
            "size": len(batch), "duration_ms": round(duration_ms, 1),
            "inserted": result.inserted, "updated": result.updated,
            "unchanged": result.unchanged, "deleted": result.deleted, "dead": len(dead),
            "ignored": result.ignored, "lag_s": _round(self.stats.lag()),
        }
        log.info("batch committed", extra=extra)
        for entry_id, reason in dead:
            log.warning("dead letter", extra={"entry_id": entry_id, "error": reason})
        self.service.status(self.stats.status_line())
        return True

    def _write_suspects(self, batch: Batch, *, retry: bool) -> WriteResult | None:
        """Entries delivered more than MAX_DELIVERIES times: one transaction each.

        Before each, the suspects hash counts that a consumer began writing it alone; the
        acknowledgement removes the count. A count already at SUSPECT_STOPS means consumers
        stopped that often in the middle of this very entry: it is dead-lettered unwritten.
        """
        result = WriteResult()
        for change in batch.suspects:
            started = self._count_suspect(change.entry_id)
            if started > SUSPECT_STOPS:
                batch.dead.append((change.entry_id, (
                    f"delivered {batch.deliveries.get(change.entry_id, 0)} times; the consumer "
                    f"stopped {started - 1} times while writing it alone")))
                continue
            written = self._write([change], None, retry=retry)
            if written is None:  # a stop during an outage is not the entry's fault
                self._count_suspect(change.entry_id, -1)
                return None
            result.add(written)
        return result

    def _count_suspect(self, entry_id: str, step: int = 1) -> int:
        """One more start of writing `entry_id` alone; 1 if Redis cannot count it now."""
        try:
            pipe = self._redis().pipeline(transaction=True)
            pipe.hincrby(self.keys.suspects, entry_id, step)
            pipe.expire(self.keys.suspects, SUSPECT_TTL)
            return int(pipe.execute()[0])
        except (redis.RedisError, OSError, QueueError):
            return 1

    def _write(self, changes: list[Change], low_water: datetime | None, *,
               retry: bool) -> WriteResult | None:
        tried = False
        while True:
            # The first attempt always runs, so that SIGTERM finishes the current batch;
            # retries stop with SIGTERM (the batch is abandoned unacknowledged, then claimed).
            # retry=False (draining on stop): one attempt on the open connection, no waiting.
            if tried and (not retry or self.service.stopping.is_set()):
                return None
            tried = True
            if self.sink.conn is None and (not retry or not self.connect()):
                return None
            try:
                result = self.sink.write(changes, low_water)
            except RETRY_ERRORS as exc:
                log.info("transaction conflict with another consumer; retrying",
                         extra={"error": str(exc).strip().splitlines()[0]})
                if not retry:
                    return None
                self.service.sleep(0.05)
                continue
            except SinkError as exc:
                if not retry:
                    return None
                self._failing("PostgreSQL", exc.cause)
                continue
            self.state.ok()
            self.backoff.reset()
            self._state = "running"
            return result

    def _acknowledge(self, batch: Batch, dead: list[tuple[str, str]], result: WriteResult,
                     duration_ms: float, *, retry: bool) -> bool:
        """After COMMIT: dead letters, XACK and XDEL in one MULTI/EXEC; then the stats.

        If Redis fails here the rows are committed but the entries stay pending: retry the
        acknowledgement only (rewriting would be harmless too, but slower); if we die first,
        they are claimed and re-applied as no-ops. The stats travel separately and on a best
        effort basis: under maxmemory Redis refuses HSET/LPUSH/XADD but still accepts XACK and
        XDEL, which are what frees the memory.
        """
        ids = batch.ids
        while True:
            try:
                client = self._redis()
                pipe = client.pipeline(transaction=True)
                for entry_id, reason in dead:
                    queue_dead_letter(pipe, self.keys.dead, self.keys.dead_index, dead_letter_fields(
                        batch.raw[entry_id], error=reason, original_id=entry_id,
                        consumer=self.name, deliveries=batch.deliveries.get(entry_id, 1)))
                if ids:
                    pipe.xack(self.keys.stream, GROUP, *ids)
                    pipe.xdel(self.keys.stream, *ids)
                if batch.suspects:
                    pipe.hdel(self.keys.suspects, *(c.entry_id for c in batch.suspects))
                pipe.xlen(self.keys.dead)
                replies = pipe.execute()
                self.stats.dead_letters = int(replies[-1])
                break
            except redis.ResponseError as exc:
                text = str(exc)
                if "NOGROUP" in text:  # Redis lost the stream: nothing left to acknowledge
                    log.warning("consumer group lost before the acknowledgement (Redis lost "
                                "its data?); the rows are committed")
                    self._guarded(self.ensure_group)
                    break
                if "OOM" in text and dead:
                    # Keep the dead ones pending (redelivered later), free the memory now.
                    log.warning("Redis is out of memory: dead letters postponed",
                                extra={"dead": len(dead)})
                    dead_ids = {entry_id for entry_id, _ in dead}
                    ids = [i for i in ids if i not in dead_ids]
                    dead = []
                    continue
                if not self._ack_failed(exc, retry):
                    return False
            except (redis.RedisError, OSError) as exc:
                if not self._ack_failed(exc, retry):
                    return False
        self._write_stats(len(batch), duration_ms)
        return True

    def _ack_failed(self, exc: Exception, retry: bool) -> bool:
        if not retry:
            return False
        self.state.failing("Redis", describe_redis_error(exc, self.cfg))
        return self.service.sleep(self.backoff.next_delay())

    def _write_stats(self, size: int, duration_ms: float) -> None:
        """The stats hash and latency list for `facusync status`; never worth a retry."""
        try:
            pipe = self._redis().pipeline(transaction=False)
            self._queue_stats(pipe, size, duration_ms)
            pipe.execute()
        except (redis.RedisError, OSError, QueueError) as exc:
            log.debug("stats not written", extra={"error": str(exc)})

    def _queue_stats(self, pipe: Any, size: int, duration_ms: float) -> None:
        now = time.time()
        key = self.keys.consumer_stats(self.name)
        lag = self.stats.lag()
        mapping: dict[str, str] = {
            "heartbeat": f"{now:.3f}",
            "state": self._state,
            "rows_per_s": f"{self.stats.rows_per_s():.1f}",
            "lag_s": "" if lag is None else f"{lag:.1f}",
            "pid": str(os.getpid()),
            "host": socket.gethostname(),
        }
        mapping.update({f"total_{k}": str(v) for k, v in self.stats.totals.items()})
        if size:
            mapping.update(last_batch_at=f"{now:.3f}", last_batch_size=str(size),
                           last_batch_ms=f"{duration_ms:.1f}")
            pipe.lpush(self.keys.batch_latencies, f"{now:.3f},{duration_ms:.1f},{size}")
            pipe.ltrim(self.keys.batch_latencies, 0, LATENCY_SAMPLES - 1)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, STATS_TTL)

    # -- idle -------------------------------------------------------------------------------

    def idle(self) -> None:
        """Nothing to read: raise the durable watermark to the producer's, if all is done.

        The producer writes its watermark in the same MULTI/EXEC as the entries up to it. We
        read the watermark and XLEN atomically (one MULTI/EXEC; order matters if not atomic:
        watermark first): an empty stream means every entry added before that watermark was
        committed (or dead-lettered), then deleted; so the watermark is a true low-water mark.
        """
        client = self._redis()

        def read() -> list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.get(self.keys.watermark)
            pipe.xlen(self.keys.stream)
            pipe.xlen(self.keys.dead)
            return pipe.execute()  # type: ignore[no-any-return]

        raw, length, dead = self._call(read)
        self.stats.dead_letters = int(dead)
        if self.sink.conn is None:  # lost during an outage, and no batch came to reconnect it
            self.sink.connect()
        if raw is not None and int(length) == 0:
            try:
                mark = datetime.fromisoformat(_text(raw))
            except ValueError:
                mark = None
            if mark is not None and mark != self._idle_watermark:
                self.sink.advance_watermark(mark)
                self._idle_watermark = mark
        self._write_stats(0, 0.0)
        metrics.consumer_progress(self._idle_watermark, self.stats.newest)
        self.service.status(self.stats.status_line())

    # -- the loop ---------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> int:
        """Until SIGTERM (or, with once, until the stream is drained)."""
        # Each blocking call is bounded (PG_STATEMENT_TIMEOUT per statement, Redis's socket
        # timeout); one batch is a handful of statements. A loop stuck longer is still killed.
        self.service.keep_alive_during_calls(
            5 * self.cfg.pg_statement_timeout + self.cfg.pg_connect_timeout + 40.0)
        # READY before connecting: a server that is down at boot is an outage to wait out
        # (STATUS says which), not a start-up failure systemd would kill and give up on.
        self.service.ready()
        self.service.status("connecting to PostgreSQL and Redis")
        if not self.connect():
            return 0
        self._state = "running"
        log.info("consumer started", extra={"consumer": self.name, "group": GROUP,
                                            "batch_size": self.cfg.batch_size})
        reader = Reader(self)
        reader.start()
        next_claim = 0.0
        try:
            while not self.service.stopping.is_set():
                if time.monotonic() - reader.progress < 120:
                    self.service.alive()  # a hung reader starves the watchdog
                if time.monotonic() >= next_claim:
                    self._guarded(self.claim_batches)
                    next_claim = time.monotonic() + self.cfg.claim_idle / 2
                try:
                    item = reader.items.get(timeout=1.0)
                except queue.Empty:
                    continue
                reader.taken()
                if isinstance(item, ReadFailure):
                    self.state.failing("Redis", item.cause)
                    self._state = "Redis unavailable"
                    self.service.status(f"waiting for Redis: {item.cause}")
                    continue
                if len(item) == 0:
                    self._guarded(self.idle)
                    if once:
                        break
                    continue
                self.process(item)
        finally:
            reader.halt.set()
            self._drain(reader)
            self.sink.close()
            self._state = "stopped"  # status shows a clean stop at once, not a silence
            self._write_stats(0, 0.0)
        log.info("consumer stopped", extra={"consumer": self.name, **self.stats.totals})
        return 0

    def _guarded(self, fn: Any) -> None:
        """Housekeeping that may meet an outage: log it, back off, carry on."""
        try:
            fn()
        except QueueError as exc:
            self._failing("Redis", exc.cause)
        except SinkError as exc:
            self._failing("PostgreSQL", exc.cause)
        else:
            self.state.ok()

    def _drain(self, reader: Reader) -> None:
        """On stop: write what was already read if it is quick, else leave it to a claim."""
        deadline = time.monotonic() + DRAIN_ON_STOP
        reader.join(timeout=BLOCK_MS / 1000 + 2)
        while time.monotonic() < deadline:
            try:
                item = reader.items.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Batch) and len(item) and not self.process(item, retry=False):
                log.info("abandoned a batch unacknowledged; another consumer will claim it",
                         extra={"size": len(item)})


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run(cfg: Config, service: Service, args: argparse.Namespace) -> int:
    return Consumer(cfg, service).run(once=bool(getattr(args, "once", False)))


def main(argv: list[str] | None = None) -> int:
    return daemon_main(
        "facusync-consumer",
        "Apply the change stream to PostgreSQL (at least once, idempotent).",
        run,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())

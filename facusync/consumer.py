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
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from facusync import metrics
from facusync.config import Config
from facusync.errors import QueueError, SinkError
from facusync.member import BLOCK_MS, Batch, Member, consumer_name
from facusync.message import Change
from facusync.redisconn import GROUP
from facusync.service import Backoff, Service, StateLog, daemon_main
from facusync.sink import RETRY_ERRORS, Sink, WriteResult
from facusync.stream import State

log = logging.getLogger("facusync.consumer")

PREFETCH = 1  # batches decoded ahead of the one being written
DRAIN_ON_STOP = 10.0  # seconds allowed on SIGTERM to write what was already read
SUSPECT_STOPS = 2  # consumers that stopped while writing an entry alone: then it is poison


@dataclass(frozen=True)
class ReadFailure:
    """The reader thread could not reach Redis; the main loop logs it (once per state)."""

    cause: str


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

    def __init__(self, member: Member, backoff_max: float) -> None:
        super().__init__(name="facusync-reader", daemon=True)
        self.member = member
        self.backoff = Backoff(backoff_max)
        self.items: queue.Queue[Batch | ReadFailure] = queue.Queue()
        self.space = threading.Semaphore(PREFETCH)
        self.halt = threading.Event()
        self.progress = time.monotonic()

    def run(self) -> None:
        backoff = self.backoff
        while not self.halt.is_set():
            if not self.space.acquire(timeout=0.5):
                self.progress = time.monotonic()  # waiting for the writer is not a hang
                continue
            try:
                batch = self.member.read_batch()
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
    """The loop of one member of the consumer group: read, write to PostgreSQL, acknowledge.

    Its error policy is one: an outage (QueueError, SinkError) is logged once per state
    change, shown in STATUS and in the stats hash, and waited out with capped backoff
    (_outage); success resets it (_recovered). What to send to Redis is facusync.member's.
    """

    def __init__(self, cfg: Config, service: Service | None = None, name: str | None = None,
                 *, staging: str = "reuse") -> None:
        self.cfg = cfg
        self.service = service or Service("facusync-consumer")
        self.name = name or consumer_name()
        self.member = Member(cfg, self.name)
        self.sink = Sink(cfg, consumer=self.name, staging=staging)
        self.sink.watermark_cap = self.member.producer_watermark
        self.stats = Stats()
        self.state_log = StateLog(log)
        self.backoff = Backoff(cfg.backoff_max)
        self.reported = State.STARTING  # what the stats hash says this consumer is doing
        self._idle_watermark: datetime | None = None

    # -- error policy -----------------------------------------------------------------------

    def _outage(self, what: str, cause: str, *, wait: bool = True) -> bool:
        """`what` is unavailable: say so (once), then back off. False when a stop came."""
        self.state_log.failing(what, cause)
        self.reported = State.unavailable(what)
        self.service.status(f"waiting for {what}: {cause}")
        return self.service.sleep(self.backoff.next_delay()) if wait else True

    def _recovered(self) -> None:
        self.state_log.ok()
        self.backoff.reset()
        self.reported = State.RUNNING

    def _housekeeping(self, work: Callable[[], object]) -> None:
        """Work between batches that may meet an outage: the policy above, then carry on."""
        try:
            work()
        except QueueError as exc:
            self._outage("Redis", exc.cause)
        except SinkError as exc:
            self._outage("PostgreSQL", exc.cause)
        else:
            self.state_log.ok()

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
                self.member.ensure_group()
            except SinkError as exc:
                self._outage("PostgreSQL", exc.cause)
                continue
            except QueueError as exc:
                self._outage("Redis", exc.cause)
                continue
            self._recovered()
            return True
        return False

    def claim_batches(self, limit_rounds: int = 1000) -> int:
        """Process entries idle longer than CLAIM_IDLE (their consumer died); how many."""
        claimed_total = 0
        for _ in range(limit_rounds):
            if self.service.stopping.is_set():
                break
            batch, more = self.member.claim_idle()
            if batch is not None:
                claimed_total += len(batch)
                if not self.process(batch):
                    break
            if not more:
                break
        self.member.forget_dead_members()
        return claimed_total

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
        if not self._acknowledge(batch, dead, duration_ms, retry=retry):
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
            started = self.member.count_suspect(change.entry_id)
            if started > SUSPECT_STOPS:
                batch.dead.append((change.entry_id, (
                    f"delivered {batch.deliveries.get(change.entry_id, 0)} times; the consumer "
                    f"stopped {started - 1} times while writing it alone")))
                continue
            written = self._write([change], None, retry=retry)
            if written is None:  # a stop during an outage is not the entry's fault
                self.member.count_suspect(change.entry_id, -1)
                return None
            result.add(written)
        return result

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
                self._outage("PostgreSQL", exc.cause)
                continue
            self._recovered()
            return result

    def _acknowledge(self, batch: Batch, dead: list[tuple[str, str]], duration_ms: float, *,
                     retry: bool) -> bool:
        """After COMMIT: dead letters, XACK and XDEL in one MULTI/EXEC (Member.acknowledge);
        then the stats.

        If Redis fails here the rows are committed but the entries stay pending: retry the
        acknowledgement only (rewriting would be harmless too, but slower); if we die first,
        they are claimed and re-applied as no-ops. The stats travel separately and on a best
        effort basis: under maxmemory Redis refuses HSET/LPUSH/XADD but still accepts XACK and
        XDEL, which are what frees the memory.
        """
        while True:
            try:
                count = self.member.acknowledge(batch, dead)
                break
            except QueueError as exc:
                if not retry or not self._outage("Redis", exc.cause):
                    return False
        if count is not None:
            self.stats.dead_letters = count
        self._write_stats(len(batch), duration_ms)
        return True

    def _write_stats(self, size: int, duration_ms: float) -> None:
        lag = self.stats.lag()
        fields: dict[str, str] = {
            "state": self.reported.value,
            "rows_per_s": f"{self.stats.rows_per_s():.1f}",
            "lag_s": "" if lag is None else f"{lag:.1f}",
        }
        fields.update({f"total_{k}": str(v) for k, v in self.stats.totals.items()})
        self.member.report(fields, (size, duration_ms) if size else None)

    # -- idle -------------------------------------------------------------------------------

    def idle(self) -> None:
        """Nothing to read: raise the durable watermark to the producer's, if all is done.

        The producer writes its watermark in the same MULTI/EXEC as the entries up to it. We
        read the watermark and XLEN atomically (one MULTI/EXEC; order matters if not atomic:
        watermark first): an empty stream means every entry added before that watermark was
        committed (or dead-lettered), then deleted; so the watermark is a true low-water mark.
        """
        raw, length, dead = self.member.idle_snapshot()
        self.stats.dead_letters = dead
        if self.sink.conn is None:  # lost during an outage, and no batch came to reconnect it
            self.sink.connect()
        if raw is not None and length == 0:
            try:
                mark = datetime.fromisoformat(raw)
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
        self.reported = State.RUNNING
        log.info("consumer started", extra={"consumer": self.name, "group": GROUP,
                                            "batch_size": self.cfg.batch_size})
        reader = Reader(self.member, self.cfg.backoff_max)
        reader.start()
        next_claim = 0.0
        try:
            while not self.service.stopping.is_set():
                if time.monotonic() - reader.progress < 120:
                    self.service.alive()  # a hung reader starves the watchdog
                if time.monotonic() >= next_claim:
                    self._housekeeping(self.claim_batches)
                    next_claim = time.monotonic() + self.cfg.claim_idle / 2
                try:
                    item = reader.items.get(timeout=1.0)
                except queue.Empty:
                    continue
                reader.taken()
                if isinstance(item, ReadFailure):
                    self._outage("Redis", item.cause, wait=False)  # the reader waits
                    continue
                if len(item) == 0:
                    self._housekeeping(self.idle)
                    if once:
                        break
                    continue
                self.process(item)
        finally:
            reader.halt.set()
            self._drain(reader)
            self.sink.close()
            self.reported = State.STOPPED  # status shows a clean stop at once, not a silence
            self._write_stats(0, 0.0)
        log.info("consumer stopped", extra={"consumer": self.name, **self.stats.totals})
        return 0

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

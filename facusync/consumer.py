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
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from facusync import metrics
from facusync.apply import BatchWriter, Outages, Stats
from facusync.config import Config
from facusync.errors import QueueError, SinkError
from facusync.member import BLOCK_MS, Batch, Member, consumer_name
from facusync.redisconn import GROUP
from facusync.service import Backoff, Service, daemon_main
from facusync.sink import Sink
from facusync.stream import State

log = logging.getLogger("facusync.consumer")

PREFETCH = 1  # batches decoded ahead of the one being written
DRAIN_ON_STOP = 10.0  # seconds allowed on SIGTERM to write what was already read


@dataclass(frozen=True)
class ReadFailure:
    """The reader thread could not reach Redis; the main loop logs it (once per state)."""

    cause: str


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

    Reading and acknowledging are facusync.member's, writing a batch facusync.apply's
    (BatchWriter); both follow the one error policy there (Outages).
    """

    def __init__(self, cfg: Config, service: Service | None = None,
                 name: str | None = None) -> None:
        self.cfg = cfg
        self.service = service or Service("facusync-consumer")
        self.name = name or consumer_name()
        self.member = Member(cfg, self.name)
        self.sink = Sink(cfg, consumer=self.name)
        self.sink.watermark_cap = self.member.producer_watermark
        self.stats = Stats()
        self.outages = Outages(self.service, cfg.backoff_max)
        self.writer = BatchWriter(cfg, self.service, self.sink, self.member, self.stats,
                                  self.outages, self.connect)
        self._idle_watermark: datetime | None = None

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
                self.outages.outage("PostgreSQL", exc.cause)
                continue
            except QueueError as exc:
                self.outages.outage("Redis", exc.cause)
                continue
            self.outages.recovered()
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
        """Write, commit, then acknowledge one batch (BatchWriter). False: abandoned."""
        return self.writer.process(batch, retry=retry)

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
        self.writer.write_stats(0, 0.0)
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
        self.outages.reported = State.RUNNING
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
                    self.outages.housekeeping(self.claim_batches)
                    next_claim = time.monotonic() + self.cfg.claim_idle / 2
                try:
                    item = reader.items.get(timeout=1.0)
                except queue.Empty:
                    continue
                reader.taken()
                if isinstance(item, ReadFailure):
                    self.outages.outage("Redis", item.cause, wait=False)  # the reader waits
                    continue
                if len(item) == 0:
                    self.outages.housekeeping(self.idle)
                    if once:
                        break
                    continue
                self.process(item)
        finally:
            reader.halt.set()
            self._drain(reader)
            self.sink.close()
            self.outages.reported = State.STOPPED  # status shows a clean stop at once, not a silence
            self.writer.write_stats(0, 0.0)
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

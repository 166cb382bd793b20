"""Applying one batch: write it in one transaction, then acknowledge it; and the consumer's
one error policy (Outages), shared with the loop in facusync.consumer.

An entry is acknowledged only after the PostgreSQL transaction that wrote it committed (see
facusync.consumer for the delivery guarantee). An outage keeps the batch unacknowledged and
retries it (with backoff, reconnecting) until it is written or a stop is requested.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from datetime import datetime

from facusync import metrics
from facusync.config import Config
from facusync.errors import QueueError, SinkError
from facusync.member import Batch, Member
from facusync.message import Change
from facusync.service import Backoff, Service, StateLog
from facusync.sink import RETRY_ERRORS, Sink, WriteResult
from facusync.stream import State

log = logging.getLogger("facusync.consumer")

SUSPECT_STOPS = 2  # consumers that stopped while writing an entry alone: then it is poison


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


class Outages:
    """The consumer's one error policy: an outage (QueueError, SinkError) is logged once per
    state change, shown in STATUS and in the stats hash, and waited out with capped backoff;
    success resets it."""

    def __init__(self, service: Service, backoff_max: float) -> None:
        self.service = service
        self.state_log = StateLog(log)
        self.backoff = Backoff(backoff_max)
        self.reported = State.STARTING  # what the stats hash says this consumer is doing

    def outage(self, what: str, cause: str, *, wait: bool = True) -> bool:
        """`what` is unavailable: say so (once), then back off. False when a stop came."""
        self.state_log.failing(what, cause)
        self.reported = State.unavailable(what)
        self.service.status(f"waiting for {what}: {cause}")
        return self.service.sleep(self.backoff.next_delay()) if wait else True

    def recovered(self) -> None:
        self.state_log.ok()
        self.backoff.reset()
        self.reported = State.RUNNING

    def housekeeping(self, work: Callable[[], object]) -> None:
        """Work between batches that may meet an outage: the policy above, then carry on."""
        try:
            work()
        except QueueError as exc:
            self.outage("Redis", exc.cause)
        except SinkError as exc:
            self.outage("PostgreSQL", exc.cause)
        else:
            self.state_log.ok()


class BatchWriter:
    """Writes, commits, then acknowledges batches for one consumer."""

    def __init__(self, cfg: Config, service: Service, sink: Sink, member: Member, stats: Stats,
                 outages: Outages, connect: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.service = service
        self.sink = sink
        self.member = member
        self.stats = stats
        self.outages = outages
        self.connect = connect  # reconnect both servers; False if a stop came first

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
        self.stats.batch(len(batch), result, len(dead), result.committed_newest)
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
                self.outages.outage("PostgreSQL", exc.cause)
                continue
            self.outages.recovered()
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
                if not retry or not self.outages.outage("Redis", exc.cause):
                    return False
        if count is not None:
            self.stats.dead_letters = count
        self.write_stats(len(batch), duration_ms)
        return True

    def write_stats(self, size: int, duration_ms: float) -> None:
        lag = self.stats.lag()
        fields: dict[str, str] = {
            "state": self.outages.reported.value,
            "rows_per_s": f"{self.stats.rows_per_s():.1f}",
            "lag_s": "" if lag is None else f"{lag:.1f}",
        }
        fields.update({f"total_{k}": str(v) for k, v in self.stats.totals.items()})
        self.member.report(fields, (size, duration_ms) if size else None)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)

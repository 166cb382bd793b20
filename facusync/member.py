"""One consumer's side of the stream protocol: read, claim, acknowledge, report.

facusync.consumer's loop decides what to do; this module talks to the group through
facusync.stream and turns every Redis failure into a QueueError that names the cause. A group
that vanished (Redis lost its data) is recreated and the command run again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import redis

from facusync.config import Config
from facusync.errors import QueueError
from facusync.message import Change, MessageError, decode
from facusync.redisconn import GROUP, Keys, connect_redis, describe_redis_error
from facusync.stream import DeadLetter, Entry, Fields, Stream, text

log = logging.getLogger("facusync.consumer")

BLOCK_MS = 1000  # XREADGROUP BLOCK: short, so stop requests and idle work are prompt
DEAD_CONSUMER_AFTER = 3600.0  # group members idle this long with nothing pending are removed
T = TypeVar("T")


def consumer_name() -> str:
    """Unique in the group: several consumers on several hosts share the work."""
    return f"{socket.gethostname()}-{os.getpid()}"


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


def make_batch(entries: list[Entry], deliveries: Mapping[str, int],
               max_deliveries: int) -> Batch:
    """Decode entries; contract violations become dead letters, over-delivered entries
    suspects."""
    batch = Batch()
    for raw_id, fields in entries:
        if raw_id is None or fields is None:
            continue  # claimed but already deleted
        entry_id = text(raw_id)
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


def parse_low_water(entries: list[Entry]) -> datetime | None:
    """The ``lw`` of the oldest stream entry (XRANGE - + COUNT 1), if it carries one."""
    if not entries:
        return None
    fields = entries[0][1] or {}
    low_water = text(fields.get("lw", fields.get(b"lw")))
    try:
        return datetime.fromisoformat(low_water) if low_water else None
    except ValueError:
        return None


class Member:
    """This consumer in the group: every call raises QueueError when Redis fails."""

    def __init__(self, cfg: Config, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.keys = Keys(cfg.redis_prefix)
        self.stream: Stream | None = None
        # Entries delivered to us and not yet acknowledged: read by the reader thread, written
        # and acknowledged by the main one. Our other pending entries were delivered by a read
        # whose reply was lost (claim_idle takes them back).
        self._in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()

    def _taken(self, batch: Batch) -> Batch:
        with self._in_flight_lock:
            self._in_flight.update(batch.ids)
        return batch

    def _connected(self) -> Stream:
        if self.stream is None:
            self.stream = Stream(connect_redis(self.cfg), self.keys)
        return self.stream

    def _call(self, command: Callable[[Stream], T]) -> T:
        """Run one protocol command, translating driver errors (NOGROUP: recreate, rerun)."""
        stream = self._connected()
        try:
            try:
                return command(stream)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("consumer group missing (Redis lost its data?); recreating it")
                self.ensure_group()
                return command(stream)
        except (redis.RedisError, OSError) as exc:
            raise QueueError(describe_redis_error(exc, self.cfg)) from None

    def ensure_group(self) -> None:
        """Create the group at id 0 (everything already queued is still to do) if missing."""
        if self._call(lambda s: s.ensure_group()):
            log.info("created consumer group", extra={"stream": self.keys.stream, "group": GROUP})

    def read_batch(self, block_ms: int = BLOCK_MS) -> Batch:
        """The next new entries for this consumer (empty when none arrived within block_ms).

        The oldest entry of the stream is read in the same round trip: its ``lw`` is a valid
        low-water mark at that moment (everything before it was committed, then deleted), and
        a low-water mark stays true forever, so it may be stored with this batch's commit.
        Our own batch is still in the stream then, which only makes it more conservative.
        """
        entries, oldest = self._call(lambda s: s.read_new(self.name, self.cfg.batch_size, block_ms))
        batch = make_batch(entries, {}, self.cfg.max_deliveries)
        batch.low_water = parse_low_water(oldest)
        return self._taken(batch)

    def producer_watermark(self) -> datetime | None:
        """The producer's watermark in Redis now (lowered by `facusync resync`)."""
        try:
            return self._call(lambda s: s.watermark())
        except ValueError:
            return None

    def claim_idle(self) -> tuple[Batch | None, bool]:
        """Entries of other members idle longer than CLAIM_IDLE (their consumer died), or
        ours that no batch holds, and whether more may be waiting.

        Ours: a read that timed out while Redis was frozen is still in Redis's socket buffer,
        and Redis runs it on thawing, delivering entries to us whose reply nobody reads; no
        other member would ever claim them from a living consumer.

        XPENDING first, then XCLAIM, rather than XAUTOCLAIM: XPENDING reports how many times
        each entry was delivered, which MAX_DELIVERIES needs.
        """
        idle_ms = int(self.cfg.claim_idle * 1000)
        pending = self._call(lambda s: s.idle_pending(self.cfg.batch_size, idle_ms))
        with self._in_flight_lock:  # ours in a batch are being written or wait in the queue
            others = [p for p in pending
                      if p.consumer != self.name or p.entry_id not in self._in_flight]
        if not others:
            return None, False
        counts = {p.entry_id: p.deliveries + 1 for p in others}  # XCLAIM counts one more
        entries = self._call(lambda s: s.claim(self.name, idle_ms, list(counts)))
        more = len(pending) >= self.cfg.batch_size
        if not entries:
            return None, more
        batch = self._taken(make_batch(entries, counts, self.cfg.max_deliveries))
        batch.low_water = parse_low_water(self._call(lambda s: s.oldest()))
        log.warning("claimed entries of a stopped consumer, or delivered by a read whose "
                    "reply was lost",
                    extra={"size": len(batch), "owners": sorted({p.consumer for p in others})})
        return batch, more

    def forget_dead_members(self) -> None:
        """Remove group members long idle with nothing pending; housekeeping only."""
        with contextlib.suppress(QueueError):
            self._call(lambda s: s.forget_idle_members(self.name, DEAD_CONSUMER_AFTER * 1000))

    def count_suspect(self, entry_id: str, step: int = 1) -> int:
        """One more start of writing `entry_id` alone; 1 if Redis cannot count it now."""
        try:
            return self._call(lambda s: s.count_suspect(entry_id, step))
        except QueueError:
            return 1

    def acknowledge(self, batch: Batch, dead: list[tuple[str, str]]) -> int | None:
        """After COMMIT: dead letters, XACK and XDEL at once; the dead-letter count.

        Under maxmemory Redis refuses XADD but still accepts XACK and XDEL, which are what
        frees the memory: the dead ones stay pending (redelivered later), the rest is
        acknowledged. A lost group leaves nothing to acknowledge (None).
        """
        count = self._acknowledge(batch, dead)
        with self._in_flight_lock:  # one left unacknowledged (OOM) may be claimed again
            self._in_flight.difference_update(batch.ids)
        return count

    def _acknowledge(self, batch: Batch, dead: list[tuple[str, str]]) -> int | None:
        ids = batch.ids
        suspects = [c.entry_id for c in batch.suspects]
        while True:
            letters = [DeadLetter(entry_id, batch.raw[entry_id], reason, batch.deliveries.get(entry_id, 1))
                       for entry_id, reason in dead]
            try:
                return self._connected().acknowledge(ids, letters, self.name, suspects)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    log.warning("consumer group lost before the acknowledgement (Redis lost "
                                "its data?); the rows are committed")
                    with contextlib.suppress(QueueError):
                        self.ensure_group()
                    return None
                if "OOM" not in str(exc) or not dead:
                    raise QueueError(describe_redis_error(exc, self.cfg)) from None
                log.warning("Redis is out of memory: dead letters postponed", extra={"dead": len(dead)})
                dead_ids = {entry_id for entry_id, _ in dead}
                ids = [i for i in ids if i not in dead_ids]
                dead = []
            except (redis.RedisError, OSError) as exc:
                raise QueueError(describe_redis_error(exc, self.cfg)) from None

    def report(self, fields: dict[str, str], batch: tuple[int, float] | None) -> None:
        """The stats hash `facusync status` reads; best effort, never worth a retry."""
        try:
            self._call(lambda s: s.report_consumer(self.name, fields, batch))
        except QueueError as exc:
            log.debug("stats not written", extra={"error": exc.cause})

    def idle_snapshot(self) -> tuple[str | None, int, int]:
        return self._call(lambda s: s.idle_snapshot())

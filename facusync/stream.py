"""The stream protocol: every Redis operation on the change stream and what goes with it.

One owner, like dramatiq's brokers/redis.py: appending (the script in lua/append.lua, with
its guard), reading and claiming as a member of the consumer group, acknowledging, dead
letters (lua/dead_letter.lua), the watermark, the fingerprints and the stats hashes that
`facusync status` and the metrics read. The daemons and commands call a Stream; none of them
speaks Redis. Redis errors are left to the caller, whose error policy decides (retry, report,
give up); the key names are in facusync.redisconn.Keys.

Dead letters keep the entry's original fields (so it can be inspected and re-queued as it
was) plus why and when it failed: ``error``, ``original_id``, ``consumer``, ``failed_at``
(Unix seconds) and ``deliveries``. A change is dead-lettered once: each dead letter is
registered under a signature of the change that was refused: format, op, key and version
(a keyed row's version moves with every change, so these name it whichever columns a copy
carries: the producer re-sends its window with another column set when a view column goes
missing or comes back); a row without a key is signed by its row too, without its NULL
columns. A second copy is acknowledged without being added. Retry and purge remove the
signature with the entry, so a replay that fails again shows up again.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from importlib import resources
from typing import Any

import redis

from facusync.lock import LockLost
from facusync.message import format_version
from facusync.redisconn import GROUP, Keys

STATS_TTL = 300  # a consumer whose stats hash expired is gone
LATENCY_SAMPLES = 1000
SUSPECT_TTL = 7 * 86400  # the suspects hash is forgotten after a week without suspects
UNCHECKED = "*"  # Guard.watermark: any value (or none) will do

# Fields the consumer adds when dead-lettering; the rest is the original message.
ANNOTATIONS = ("error", "original_id", "consumer", "failed_at", "deliveries")
SIGNED_FIELDS = ("v", "op", "key", "version")  # and "row" when there is no key

Fields = Mapping[bytes | str, bytes | str]
Entry = tuple[Any, Fields]


def _script(name: str) -> str:
    return (resources.files("facusync") / "lua" / name).read_text(encoding="utf-8")


APPEND_SCRIPT = _script("append.lua")
DEAD_LETTER_SCRIPT = _script("dead_letter.lua")


class State(StrEnum):
    """What a daemon reports in its stats hash (`facusync status` reads it back)."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"  # the producer, by backpressure
    BACKING_OFF = "backing_off"  # the producer, after a failure
    STOPPED = "stopped"  # a clean stop; a daemon that died falls silent instead
    REDIS_DOWN = "Redis unavailable"  # the consumer
    POSTGRESQL_DOWN = "PostgreSQL unavailable"  # the consumer

    @classmethod
    def unavailable(cls, what: str) -> State:
        return cls.REDIS_DOWN if what == "Redis" else cls.POSTGRESQL_DOWN


def text(value: bytes | str | None) -> str:
    """A Redis reply as text ("" for none); bytes that are not UTF-8 are replaced, not fatal."""
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def text_fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def _mapping(fields: Mapping[str, str]) -> dict[str | bytes, str]:
    return dict(fields.items())


def entry_age(entry_id: str, now: float) -> float:
    """Seconds since a stream entry was added (its id starts with Unix milliseconds)."""
    return max(0.0, now - int(entry_id.split("-")[0]) / 1000.0)


class WatermarkMoved(LockLost):
    """The watermark is not the one this cycle started from: Redis lost its data (or someone
    wrote it without the lock). The cycle stops; the next one starts over."""


@dataclass(frozen=True, slots=True)
class Guard:
    """What must still hold in Redis when a write lands, checked inside the write's script.

    ``lock_token``: the source lock's value ("" = not checked). ``watermark``: the exact
    text the watermark key must hold ("" = must be absent, UNCHECKED = not checked).
    """

    lock_key: str = ""
    lock_token: str = ""
    watermark: str = UNCHECKED

    def args(self) -> list[str]:
        return [self.lock_token, self.watermark]


NO_GUARD = Guard()


def signature(fields: Mapping[Any, bytes | str]) -> str:
    """What identifies a refused change, whichever copy of it was delivered."""
    by_name = {text(k): v for k, v in fields.items()}
    digest = hashlib.blake2b(digest_size=16)
    for name in SIGNED_FIELDS:
        digest.update(text(by_name.get(name)).encode("utf-8", "replace"))
        digest.update(b"\x00")
    if not text(by_name.get("key")):
        digest.update(_without_nulls(text(by_name.get("row"))).encode("utf-8", "replace"))
    return digest.hexdigest()


def _without_nulls(row_json: str) -> str:
    """A row's JSON without its NULL columns (the text itself if it is not a JSON object)."""
    try:
        row = json.loads(row_json)
    except ValueError:
        return row_json
    if not isinstance(row, dict):
        return row_json
    return json.dumps({k: v for k, v in row.items() if v is not None}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"))


def dead_letter_fields(original: Fields, *, error: str, original_id: str, consumer: str,
                       deliveries: int) -> dict[str, bytes | str]:
    """The dead-letter entry for one refused stream entry."""
    fields: dict[str, bytes | str] = {}
    for name, value in original.items():
        if text(name) not in ANNOTATIONS:
            fields[text(name)] = value
    fields.update(error=error[:2000], original_id=original_id, consumer=consumer,
                  failed_at=f"{time.time():.3f}", deliveries=str(deliveries))
    return fields


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refused entry to dead-letter with the acknowledgement of its batch."""

    entry_id: str
    fields: Fields
    reason: str
    deliveries: int


@dataclass(frozen=True, slots=True)
class Pending:
    """An entry delivered and not yet acknowledged, idle for a while."""

    entry_id: str
    consumer: str
    deliveries: int


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """The queue as `facusync status` and the metrics see it."""

    length: int
    pending: int
    pending_by_consumer: dict[str, int]
    oldest_id: str | None
    dead_letters: int


def read_watermark(client: redis.Redis, keys: Keys) -> datetime | None:
    """The producer's watermark in Redis (see Stream.watermark)."""
    return Stream(client, keys).watermark()


class Stream:
    """One installation's stream protocol on one Redis client."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._append = client.register_script(APPEND_SCRIPT)

    # -- appending (producer, reconcile, resync) -------------------------------------------

    def _guarded(self, command: str, guard: Guard, keys: list[str], args: list[str]) -> int:
        """Run one command of the append script; LockLost / WatermarkMoved if the guard refused."""
        lock_key = guard.lock_key or self.keys.source_lock
        done = int(self._append(keys=[lock_key, self.keys.watermark, *keys],
                                args=[*guard.args(), command, *args]))
        if done == -1:
            raise LockLost(f"the source lock {lock_key} is no longer ours (it expired, or Redis "
                           "lost its data); nothing was written")
        if done == -2:
            raise WatermarkMoved(f"the watermark {self.keys.watermark} is not the one this cycle "
                                 "started from (Redis lost its data?); nothing was written")
        return done

    def append(self, new_watermark: str, per: int, args: list[str], guard: Guard) -> int:
        """Entries with their fingerprints (and the watermark, unless ""), atomically."""
        return self._guarded("append", guard, [self.keys.stream, self.keys.fingerprints],
                             [new_watermark, str(per), *args])

    def delete(self, per: int, args: list[str], guard: Guard) -> int:
        """Tombstones, forgetting their fingerprints, atomically."""
        return self._guarded("delete", guard, [self.keys.stream, self.keys.fingerprints],
                             [str(per), *args])

    def restore_fingerprints(self, digests: Mapping[str, str], guard: Guard) -> None:
        args = [item for pair in digests.items() for item in pair]
        self._guarded("restore", guard, [self.keys.fingerprints], args)

    def known_digests(self, names: Sequence[str]) -> list[str | None]:
        """The fingerprints remembered for these keys (None: never sent, or forgotten)."""
        return [None if raw is None else text(raw)
                for raw in self.client.hmget(self.keys.fingerprints, list(names))]

    def fingerprint_count(self) -> int:
        return int(self.client.hlen(self.keys.fingerprints))

    def watermark_text(self) -> str | None:
        """The watermark exactly as stored (what a Guard compares), or None."""
        raw = self.client.get(self.keys.watermark)
        return None if raw is None else text(raw)

    def watermark(self) -> datetime | None:
        """The last enqueued version, or None when Redis has none (first run, or data lost)."""
        stored = self.watermark_text()
        return None if stored is None else datetime.fromisoformat(stored)

    def move_watermark(self, target: datetime, *, forget_fingerprints: bool) -> None:
        """`facusync resync`, under the source lock: the producer re-reads from `target`."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.watermark, format_version(target))
        if forget_fingerprints:
            pipe.delete(self.keys.fingerprints)
        pipe.execute()

    def length(self) -> int:
        """Entries not yet acknowledged (acknowledged ones are deleted): the backlog."""
        return int(self.client.xlen(self.keys.stream))

    # -- the consumer group -----------------------------------------------------------------

    def ensure_group(self) -> bool:
        """Create the group at id 0 (everything already queued is still to do); True if new."""
        try:
            self.client.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    def read_new(self, consumer: str, count: int, block_ms: int) -> tuple[list[Entry], list[Entry]]:
        """New entries for `consumer`, and the oldest entry of the stream, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xreadgroup(GROUP, consumer, {self.keys.stream: ">"}, count=count, block=block_ms)
        pipe.xrange(self.keys.stream, "-", "+", count=1)
        response, oldest = pipe.execute()
        return (response[0][1] if response else []), oldest

    def oldest(self) -> list[Entry]:
        """The oldest entry of the stream (XRANGE - + COUNT 1), if any."""
        return self.client.xrange(self.keys.stream, "-", "+", count=1)  # type: ignore[no-any-return]

    def idle_pending(self, count: int, idle_ms: int) -> list[Pending]:
        """Entries pending longer than idle_ms, with how often each was delivered."""
        return [Pending(text(p["message_id"]), text(p["consumer"]), int(p["times_delivered"]))
                for p in self.client.xpending_range(self.keys.stream, GROUP, "-", "+", count,
                                                    idle=idle_ms)]

    def claim(self, consumer: str, idle_ms: int, ids: list[str]) -> list[Entry]:
        """Take over entries (XCLAIM counts one more delivery); deleted ones are left out."""
        claimed = self.client.xclaim(self.keys.stream, GROUP, consumer, idle_ms, ids)
        return [(i, f) for i, f in claimed if i is not None]

    def forget_idle_members(self, keep: str, idle_ms: float) -> None:
        """Remove group members long idle with nothing pending (each restart adds one)."""
        for member in self.client.xinfo_consumers(self.keys.stream, GROUP):
            name = text(member.get("name"))
            if name != keep and int(member.get("pending", 0)) == 0 and int(member.get("idle", 0)) > idle_ms:
                self.client.xgroup_delconsumer(self.keys.stream, GROUP, name)

    def count_suspect(self, entry_id: str, step: int = 1) -> int:
        """Count one more (or one less) start of writing `entry_id` alone."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(self.keys.suspects, entry_id, step)
        pipe.expire(self.keys.suspects, SUSPECT_TTL)
        return int(pipe.execute()[0])

    def acknowledge(self, ids: list[str], dead: list[DeadLetter], consumer: str,
                    suspects: list[str]) -> int:
        """After COMMIT: dead letters, XACK and XDEL in one MULTI/EXEC; the dead-letter count.

        Never XTRIM on the live stream: it could drop entries nobody has committed yet.
        """
        pipe = self.client.pipeline(transaction=True)
        for letter in dead:
            fields = dead_letter_fields(letter.fields, error=letter.reason, original_id=letter.entry_id,
                                        consumer=consumer, deliveries=letter.deliveries)
            args: list[bytes | str] = [signature(fields)]
            for name, value in fields.items():
                args.extend((name, value))
            pipe.eval(DEAD_LETTER_SCRIPT, 2, self.keys.dead, self.keys.dead_index, *args)
        if ids:
            pipe.xack(self.keys.stream, GROUP, *ids)
            pipe.xdel(self.keys.stream, *ids)
        if suspects:
            pipe.hdel(self.keys.suspects, *suspects)
        pipe.xlen(self.keys.dead)
        return int(pipe.execute()[-1])

    def idle_snapshot(self) -> tuple[str | None, int, int]:
        """The watermark, the stream's length and the dead letters', read atomically (the
        consumer's idle watermark relies on it: see Consumer.idle)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.keys.watermark)
        pipe.xlen(self.keys.stream)
        pipe.xlen(self.keys.dead)
        raw, length, dead = pipe.execute()
        return (None if raw is None else text(raw)), int(length), int(dead)

    # -- stats ------------------------------------------------------------------------------

    def report_consumer(self, name: str, fields: dict[str, str], batch: tuple[int, float] | None) -> None:
        """The consumer's stats hash, and a (size, ms) batch sample for the percentiles."""
        now = time.time()
        key = self.keys.consumer_stats(name)
        fields = {"heartbeat": f"{now:.3f}", **fields, "pid": str(os.getpid()),
                  "host": socket.gethostname()}
        pipe = self.client.pipeline(transaction=False)
        if batch is not None:
            size, duration_ms = batch
            fields.update(last_batch_at=f"{now:.3f}", last_batch_size=str(size),
                          last_batch_ms=f"{duration_ms:.1f}")
            pipe.lpush(self.keys.batch_latencies, f"{now:.3f},{duration_ms:.1f},{size}")
            pipe.ltrim(self.keys.batch_latencies, 0, LATENCY_SAMPLES - 1)
        pipe.hset(key, mapping=_mapping(fields))
        pipe.expire(key, STATS_TTL)
        pipe.execute()

    def report_producer(self, fields: Mapping[str, str], queued: int = 0) -> None:
        self.client.hset(self.keys.producer_stats, mapping=_mapping(fields))
        if queued:
            self.client.hincrby(self.keys.producer_stats, "total_queued", queued)

    def producer_stats(self) -> dict[str, str]:
        return text_fields(self.client.hgetall(self.keys.producer_stats))

    def report_reconcile(self, fields: Mapping[str, str]) -> None:
        self.client.hset(self.keys.reconcile_stats, mapping=_mapping(fields))

    def reconcile_stats(self) -> dict[str, str]:
        return text_fields(self.client.hgetall(self.keys.reconcile_stats))

    def consumer_stats(self) -> dict[str, dict[str, str]]:
        """Every consumer's stats hash that has not expired, by consumer name."""
        out = {}
        for key in self.client.scan_iter(match=self.keys.consumer_stats_pattern, count=100):
            name = text(key)[len(self.keys.consumer_stats("")):]
            out[name] = text_fields(self.client.hgetall(text(key)))
        return out

    def batch_samples(self) -> list[tuple[float, float, float]]:
        """Recent batches: (Unix time, duration ms, size)."""
        samples = []
        for item in self.client.lrange(self.keys.batch_latencies, 0, LATENCY_SAMPLES - 1):
            try:
                when, duration, size = (float(x) for x in text(item).split(",")[:3])
            except ValueError:
                continue
            samples.append((when, duration, size))
        return samples

    def queue(self) -> QueueSnapshot:
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.keys.stream)
        pipe.xrange(self.keys.stream, "-", "+", count=1)
        pipe.xlen(self.keys.dead)
        length, oldest, dead = pipe.execute()
        by_consumer: dict[str, int] = {}
        pending = 0
        try:
            summary = self.client.xpending(self.keys.stream, GROUP)
        except redis.ResponseError:
            pass  # no group yet: no consumer has ever started
        else:
            pending = int(summary.get("pending", 0))
            for member in summary.get("consumers") or []:
                by_consumer[text(member["name"])] = int(member["pending"])
        return QueueSnapshot(length=int(length), pending=pending, pending_by_consumer=by_consumer,
                             oldest_id=text(oldest[0][0]) if oldest else None, dead_letters=int(dead))

class DeadLetters:
    """The dead-letter stream, for `facusync dead-letter` and reconcile."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def entries(self, first: str = "-", last: str = "+",
                count: int | None = None) -> list[tuple[str, dict[str, str]]]:
        return [(text(i), text_fields(f))
                for i, f in self.client.xrange(self.keys.dead, first, last, count=count)]

    def count(self) -> int:
        return int(self.client.xlen(self.keys.dead))

    def keys_of_rows(self) -> set[str]:
        """The row keys of every dead letter (reconcile leaves them alone)."""
        return {f["key"] for _, f in self.entries() if f.get("key")}

    def requeue(self, letters: list[tuple[str, dict[str, str]]]) -> None:
        """Put dead letters back on the change stream, as they were sent."""
        pipe = self.client.pipeline(transaction=True)
        for entry_id, fields in letters:
            original = {k: v for k, v in fields.items() if k not in ANNOTATIONS}
            original["src"] = "retry"
            original["lw"] = ""  # a replay says nothing about what is committed
            original["ts"] = f"{time.time():.3f}"
            pipe.xadd(self.keys.stream, original)  # type: ignore[arg-type]
            pipe.xdel(self.keys.dead, entry_id)
            pipe.hdel(self.keys.dead_index, signature(fields))
        pipe.execute()

    def purge(self, letters: list[tuple[str, dict[str, str]]]) -> None:
        """Delete dead letters for good, a thousand per MULTI/EXEC."""
        for i in range(0, len(letters), 1000):
            part = letters[i : i + 1000]
            pipe = self.client.pipeline(transaction=True)
            pipe.xdel(self.keys.dead, *[entry_id for entry_id, _ in part])
            for _, fields in part:
                pipe.hdel(self.keys.dead_index, signature(fields))
            pipe.execute()

"""Appending changes to the stream: fingerprint filter, then one script call per chunk.

Shared by the producer and reconcile. A chunk's stream entries, its fingerprints and (for the
producer) the new watermark are written in the same script call, so a crash between chunks
re-sends at most one chunk and never skips one: the watermark can never get ahead of what is
in the stream.

Each write is guarded (see Guard): the script first checks that the writer still holds the
source lock and that the watermark is still the one it expects. Redis losing its data
between two chunks (FLUSHALL, a restart without persistence) removes both, so the write is
refused and the cycle stops instead of stamping the next entries with a low-water mark
whose earlier entries are gone.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from facusync.lock import LockLost
from facusync.message import (
    RowEncoder,
    delete_fields,
    fingerprint,
    format_version,
    upsert_fields,
)
from facusync.redisconn import Keys

NULL_KEY_PREFIX = "\x00null:"
UNCHECKED = "*"  # Guard.watermark: any value (or none) will do


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

# The guard every script starts with. KEYS[1] = the lock, KEYS[2] = the watermark;
# ARGV[1] = lock token, ARGV[2] = expected watermark. -1: lock not ours; -2: watermark moved.
_GUARD = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[2] == '' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
elseif ARGV[2] ~= '*' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return -2 end
"""


def _run_guarded(client: redis.Redis, body: str, keys: Keys, guard: Guard, more_keys: list[str],
                 args: list[str]) -> int:
    """Run `body` after the guard; raise LockLost / WatermarkMoved if the guard refused."""
    script = client.register_script(_GUARD + body)
    lock_key = guard.lock_key or keys.source_lock
    done = int(script(keys=[lock_key, keys.watermark, *more_keys], args=[*guard.args(), *args]))
    if done == -1:
        raise LockLost(f"the source lock {lock_key} is no longer ours (it expired, or Redis lost "
                       "its data); nothing was written")
    if done == -2:
        raise WatermarkMoved(f"the watermark {keys.watermark} is not the one this cycle started "
                             "from (Redis lost its data?); nothing was written")
    return done


@dataclass(frozen=True, slots=True)
class EncodedRow:
    """A view row ready to send: its key (as the fingerprint field), version and JSON."""

    key: str | None
    version: datetime | None
    row_json: str
    digest: str

    @property
    def fp_field(self) -> str:
        # Rows with a NULL key are poison; remember them by content so that the overlap
        # re-read does not dead-letter the same row again every cycle.
        return self.key if self.key is not None else NULL_KEY_PREFIX + self.digest


@functools.lru_cache(maxsize=8)
def _encoder(names: tuple[str, ...]) -> RowEncoder:
    return RowEncoder(names)


def encode(names: Sequence[str], row: Sequence[Any], key_index: int, version_index: int) -> EncodedRow:
    """Turn one fetched tuple into what travels and what is remembered."""
    row_json = _encoder(tuple(names)).encode(row)
    key = row[key_index]
    version = row[version_index]
    return EncodedRow(
        key=None if key is None else str(key),
        version=version if isinstance(version, datetime) else None,
        row_json=row_json,
        digest=fingerprint(row_json),
    )


@dataclass
class ChunkResult:
    queued: int = 0
    unchanged: int = 0
    max_version: datetime | None = None  # of the rows read, at or below the ceiling if any
    watermark_text: str | None = None  # what the watermark key now holds, if this chunk set it
    sent_versions: list[datetime] = field(default_factory=list)  # of the rows queued


def read_watermark_text(client: redis.Redis, keys: Keys) -> str | None:
    """The watermark exactly as stored (what a Guard compares), or None."""
    raw = client.get(keys.watermark)
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def read_watermark(client: redis.Redis, keys: Keys) -> datetime | None:
    """The last enqueued version, or None when Redis has none (first run, or data lost)."""
    text = read_watermark_text(client, keys)
    return None if text is None else datetime.fromisoformat(text)


# One script call per chunk: the entries, their fingerprints and the watermark are written
# atomically (a Lua script runs as one unit, like MULTI/EXEC), and Python builds one command
# instead of thousands, which is what made the producer slow. KEYS[3] the stream, KEYS[4]
# the fingerprints; ARGV after the guard's: new watermark (or ""), fields per entry, then
# per entry: fingerprint field, digest, field/value pairs.
_APPEND = """
local per = tonumber(ARGV[4])
local i = 5
local n = 0
while i <= #ARGV do
  redis.call('XADD', KEYS[3], '*', unpack(ARGV, i + 2, i + 1 + per))
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2 + per
  n = n + 1
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3]) end
return n
"""

# Tombstones: ARGV after the guard's: fields per entry, then per entry: the key (whose
# fingerprint is forgotten) and field/value pairs.
_DELETE = """
local per = tonumber(ARGV[3])
local i = 4
local n = 0
while i <= #ARGV do
  redis.call('XADD', KEYS[3], '*', unpack(ARGV, i + 1, i + per))
  redis.call('HDEL', KEYS[4], ARGV[i])
  i = i + 1 + per
  n = n + 1
end
return n
"""

# Fingerprints only (reconcile found PostgreSQL already equal): field/value pairs.
_RESTORE = """
if #ARGV > 2 then redis.call('HSET', KEYS[3], unpack(ARGV, 3)) end
return 0
"""


def append_upserts(
    client: redis.Redis,
    keys: Keys,
    rows: Sequence[EncodedRow],
    *,
    low_water: datetime | None,
    advance_watermark: bool,
    src: str = "poll",
    force: bool = False,
    guard: Guard = NO_GUARD,
    ceiling: datetime | None = None,
    expect: Mapping[str, datetime] | None = None,
) -> ChunkResult:
    """Queue the rows whose fingerprint changed; atomically remember them (and the watermark).

    ``low_water`` is the watermark before this chunk: every row at or below it is already in
    an earlier entry (see message.py). ``force`` queues even unchanged rows (resend).
    ``ceiling`` is the source's clock: a row dated past it does not count for the new
    watermark (neither carried to the future nor to the present: the watermark stays the
    newest real version, whose overlap a lagging writer's late rows rely on). Raises LockLost
    if ``guard`` refuses.
    ``expect`` (reconcile): key -> the newer version PostgreSQL held; every row of the call
    must have one (each entry carries the same fields).
    """
    result = ChunkResult()
    if not rows:
        return result
    known = client.hmget(keys.fingerprints, [r.fp_field for r in rows]) if not force else [None] * len(rows)
    lw = format_version(low_water) if low_water else ""
    args: list[str] = []
    per = 0
    sent: dict[str, str] = {}
    for row, old in zip(rows, known, strict=True):
        if (row.version is not None and (ceiling is None or row.version <= ceiling)
                and (result.max_version is None or row.version > result.max_version)):
            result.max_version = row.version
        old_text = old.decode() if isinstance(old, bytes) else old
        if old_text == row.digest or sent.get(row.fp_field) == row.digest:
            result.unchanged += 1
            continue
        entry = upsert_fields(row.key or "", row.version or datetime(1, 1, 1), row.row_json, lw, src)
        if row.version is None:
            entry["version"] = ""  # the consumer dead-letters it with "missing version"
        if expect is not None:
            entry["expect"] = format_version(expect[row.key or ""])
        per = 2 * len(entry)
        args.append(row.fp_field)
        args.append(row.digest)
        for name, value in entry.items():
            args.append(name)
            args.append(value)
        sent[row.fp_field] = row.digest
        result.queued += 1
        if row.version is not None:
            result.sent_versions.append(row.version)
    new_wm = ""
    newest = result.max_version
    if advance_watermark and newest is not None and (low_water is None or newest > low_water):
        new_wm = format_version(newest)
        result.watermark_text = new_wm
    if args or new_wm:
        _run_guarded(client, _APPEND, keys, guard, [keys.stream, keys.fingerprints],
                     [new_wm, str(per), *args])
    return result


def append_deletes(
    client: redis.Redis,
    keys: Keys,
    tombstones: Sequence[tuple[str, str]],
    *,
    low_water: datetime | None,
    src: str = "reconcile",
    guard: Guard = NO_GUARD,
) -> int:
    """Queue tombstones (key, last known version) and forget their fingerprints, atomically."""
    if not tombstones:
        return 0
    lw = format_version(low_water) if low_water else ""
    args: list[str] = []
    per = 0
    for key, version in tombstones:
        entry = delete_fields(key, version, lw, src)
        per = 2 * len(entry)
        args.append(key)
        for name, value in entry.items():
            args.append(name)
            args.append(value)
    return _run_guarded(client, _DELETE, keys, guard, [keys.stream, keys.fingerprints],
                        [str(per), *args])


def restore_fingerprints(client: redis.Redis, keys: Keys, digests: dict[str, str],
                         guard: Guard = NO_GUARD) -> None:
    """Remember fingerprints of rows PostgreSQL already holds (reconcile, after a Redis loss)."""
    if not digests:
        return
    args = [item for pair in digests.items() for item in pair]
    _run_guarded(client, _RESTORE, keys, guard, [keys.fingerprints], args)

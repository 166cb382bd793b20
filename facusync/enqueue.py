"""Appending changes to the stream: fingerprint filter, then one MULTI/EXEC per chunk.

Shared by the producer and reconcile. A chunk's stream entries, its fingerprints and (for the
producer) the new watermark are written in the same MULTI/EXEC, so a crash between chunks
re-sends at most one chunk and never skips one: the watermark can never get ahead of what is
in the stream.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from facusync.message import (
    RowEncoder,
    delete_fields,
    fingerprint,
    format_version,
    upsert_fields,
)
from facusync.redisconn import Keys

NULL_KEY_PREFIX = "\x00null:"


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
    max_version: datetime | None = None


def read_watermark(client: redis.Redis, keys: Keys) -> datetime | None:
    """The last enqueued version, or None when Redis has none (first run, or data lost)."""
    raw = client.get(keys.watermark)
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return datetime.fromisoformat(text)


# One script call per chunk: the entries, their fingerprints and the watermark are written
# atomically (a Lua script runs as one unit, like MULTI/EXEC), and Python builds one command
# instead of thousands, which is what made the producer slow. ARGV: new watermark (or ""),
# fields per entry, then per entry: fingerprint field, digest, field/value pairs.
_APPEND = """
local per = tonumber(ARGV[2])
local i = 3
local n = 0
while i <= #ARGV do
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 2, i + 1 + per))
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2 + per
  n = n + 1
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[3], ARGV[1]) end
return n
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
    expect: Mapping[str, datetime] | None = None,
) -> ChunkResult:
    """Queue the rows whose fingerprint changed; atomically remember them (and the watermark).

    ``low_water`` is the watermark before this chunk: every row at or below it is already in
    an earlier entry (see message.py). ``force`` queues even unchanged rows (resend).
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
        if row.version is not None and (result.max_version is None or row.version > result.max_version):
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
    new_wm = ""
    if advance_watermark and result.max_version is not None and (
        low_water is None or result.max_version > low_water
    ):
        new_wm = format_version(result.max_version)
    if args or new_wm:
        script = client.register_script(_APPEND)
        script(keys=[keys.stream, keys.fingerprints, keys.watermark], args=[new_wm, str(per), *args])
    return result


def append_deletes(
    client: redis.Redis,
    keys: Keys,
    tombstones: Sequence[tuple[str, str]],
    *,
    low_water: datetime | None,
    src: str = "reconcile",
) -> int:
    """Queue tombstones (key, last known version) and forget their fingerprints, atomically."""
    if not tombstones:
        return 0
    lw = format_version(low_water) if low_water else ""
    pipe = client.pipeline(transaction=True)
    for key, version in tombstones:
        pipe.xadd(keys.stream, delete_fields(key, version, lw, src))  # type: ignore[arg-type]
    pipe.hdel(keys.fingerprints, *[k for k, _ in tombstones])
    pipe.execute()
    return len(tombstones)

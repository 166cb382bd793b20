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

from facusync.message import (
    RowEncoder,
    delete_fields,
    fingerprint,
    format_version,
    upsert_fields,
)
from facusync.redisconn import Keys
from facusync.stream import NO_GUARD, Guard, Stream

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
    max_version: datetime | None = None  # of the rows read, at or below the ceiling if any
    watermark_text: str | None = None  # what the watermark key now holds, if this chunk set it
    sent_versions: list[datetime] = field(default_factory=list)  # of the rows queued


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
    stream = Stream(client, keys)
    known = stream.known_digests([r.fp_field for r in rows]) if not force else [None] * len(rows)
    low_water_text = format_version(low_water) if low_water else ""
    args: list[str] = []
    args_per_entry = 0
    sent: dict[str, str] = {}
    for row, old in zip(rows, known, strict=True):
        if (row.version is not None and (ceiling is None or row.version <= ceiling)
                and (result.max_version is None or row.version > result.max_version)):
            result.max_version = row.version
        if old == row.digest or sent.get(row.fp_field) == row.digest:
            result.unchanged += 1
            continue
        entry = upsert_fields(row.key or "", row.version or datetime(1, 1, 1), row.row_json,
                              low_water_text, src)
        if row.version is None:
            entry["version"] = ""  # the consumer dead-letters it with "missing version"
        if expect is not None:
            entry["expect"] = format_version(expect[row.key or ""])
        args_per_entry = 2 * len(entry)
        args.append(row.fp_field)
        args.append(row.digest)
        for name, value in entry.items():
            args.append(name)
            args.append(value)
        sent[row.fp_field] = row.digest
        result.queued += 1
        if row.version is not None:
            result.sent_versions.append(row.version)
    new_watermark = ""
    newest = result.max_version
    if advance_watermark and newest is not None and (low_water is None or newest > low_water):
        new_watermark = format_version(newest)
        result.watermark_text = new_watermark
    if args or new_watermark:
        stream.append(new_watermark, args_per_entry, args, guard)
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
    low_water_text = format_version(low_water) if low_water else ""
    args: list[str] = []
    args_per_entry = 0
    for key, version in tombstones:
        entry = delete_fields(key, version, low_water_text, src)
        args_per_entry = 2 * len(entry)
        args.append(key)
        for name, value in entry.items():
            args.append(name)
            args.append(value)
    return Stream(client, keys).delete(args_per_entry, args, guard)


def restore_fingerprints(client: redis.Redis, keys: Keys, digests: dict[str, str],
                         guard: Guard = NO_GUARD) -> None:
    """Remember fingerprints of rows PostgreSQL already holds (reconcile, after a Redis loss)."""
    if not digests:
        return
    Stream(client, keys).restore_fingerprints(digests, guard)

"""Dead letters: what a refused stream entry looks like in the dead-letter stream.

A dead letter keeps the entry's original fields (so it can be inspected and re-queued as it
was) plus why and when it failed: ``error`` (PostgreSQL's first line, or the contract
violation), ``original_id``, ``consumer``, ``failed_at`` (Unix seconds) and ``deliveries``.
Bad data never stops the line (docs/DESIGN.md, invariant 4): the entry is acknowledged and deleted
from the change stream in the same MULTI/EXEC that writes its dead letter.

A row is dead-lettered once. The same poison row can reach the consumer twice: after Redis
lost its data, the producer re-sends its overlap window while a consumer may still hold the
first copy; and when a view column goes missing or comes back, the producer re-sends the rows
of its window with the other column set. Each dead letter is registered in a hash under a
signature of the change that was refused: format, op, key and version (a keyed row's version
moves with every change, so these name it whichever columns a copy carries); a row without a
key has no other name than its content, so its row is signed too, without its NULL columns
(a copy sent while a column was missing lacks it; when that column is NULL the copies are
the same row; a missing column that held a value still makes a second dead letter). A second
copy is acknowledged without being added. `facusync dead-letter retry` and `purge` remove the
signature with the entry, so a replay that fails again shows up again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import redis

META_FIELDS = ("error", "original_id", "consumer", "failed_at", "deliveries")
SIGNED_FIELDS = ("v", "op", "key", "version")  # and "row" when there is no key

# KEYS: dead-letter stream, signature index; ARGV: signature, then field/value pairs.
_ADD_ONCE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], '') == 0 then return false end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('HSET', KEYS[2], ARGV[1], id)
return id
"""


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def signature(fields: Mapping[Any, bytes | str]) -> str:
    """What identifies a refused change, whichever copy of it was delivered."""
    by_name = {_text(k): v for k, v in fields.items()}
    digest = hashlib.blake2b(digest_size=16)
    for name in SIGNED_FIELDS:
        digest.update(_text(by_name.get(name)).encode("utf-8", "replace"))
        digest.update(b"\x00")
    if not _text(by_name.get("key")):
        digest.update(_without_nulls(_text(by_name.get("row"))).encode("utf-8", "replace"))
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


def queue_dead_letter(pipe: redis.client.Pipeline, dead_stream: str, index: str,
                      fields: Mapping[str, bytes | str]) -> None:
    """Add the dead letter in `pipe` unless the same change is already a dead letter."""
    args: list[bytes | str] = [signature(fields)]
    for name, value in fields.items():
        args.extend((name, value))
    pipe.eval(_ADD_ONCE, 2, dead_stream, index, *args)


def forget(client: redis.Redis | redis.client.Pipeline, index: str,
           fields: Mapping[Any, bytes | str]) -> None:
    """Drop a dead letter's signature (it was retried or purged)."""
    client.hdel(index, signature(fields))


def dead_letter_fields(
    original: Mapping[bytes | str, bytes | str],
    *,
    error: str,
    original_id: str,
    consumer: str,
    deliveries: int,
) -> dict[str, bytes | str]:
    """The dead-letter entry for one refused stream entry."""
    fields: dict[str, bytes | str] = {}
    for name, value in original.items():
        key = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        if key not in META_FIELDS:
            fields[key] = value
    fields.update(
        error=error[:2000],
        original_id=original_id,
        consumer=consumer,
        failed_at=f"{time.time():.3f}",
        deliveries=str(deliveries),
    )
    return fields

"""sync_control, the durable state in PostgreSQL: every statement on it, by name.

One owner, like procrastinate's manager.py: the statements live in control.sql, each under
a ``-- name:`` line; the sink, the producer, resync, status and the time-zone commands call
the functions here with their own cursor (so each statement runs in the caller's
transaction). psycopg2 errors are left to the caller's error policy.
"""

from __future__ import annotations

import re
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg2.errors
import psycopg2.extensions

from facusync.errors import SinkError

Cursor = psycopg2.extensions.cursor


def _load() -> dict[str, str]:
    text = (resources.files("facusync") / "control.sql").read_text(encoding="utf-8")
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        lines = [line for line in body.splitlines() if not line.startswith("--")]
        queries[name.strip()] = " ".join(" ".join(lines).split()).rstrip(";")
    return queries


QUERIES = _load()


def run(cur: Cursor, name: str, **params: Any) -> None:
    """Execute the named statement on the caller's cursor."""
    cur.execute(QUERIES[name], params or None)


def _one(cur: Cursor, name: str, **params: Any) -> Any:
    """The first column of the named query's row, or None."""
    run(cur, name, **params)
    row = cur.fetchone()
    return row[0] if row else None


def exists(cur: Cursor) -> bool:
    return bool(_one(cur, "exists"))


def lock_row(cur: Cursor) -> None:
    run(cur, "lock_row")


def record_batch(cur: Cursor, *, low_water: datetime | None, newest: datetime | None, zone: str,
                 consumer: str, size: int, inserted: int, updated: int, unchanged: int,
                 deleted: int, dead: int) -> tuple[bool, float | None]:
    """The batch's bookkeeping: (False, None) when the stored times are in another zone than
    `zone`; else True and newest_version as stored (capped), in Unix seconds, so the
    consumer's metrics say what sync_control says."""
    run(cur, "record_batch", low_water=low_water, newest=newest, zone=zone, consumer=consumer,
        size=size, inserted=inserted, updated=updated, unchanged=unchanged, deleted=deleted,
        dead=dead)
    row = cur.fetchone()
    if row is None:
        return False, None
    return True, None if row[0] is None else float(row[0])


def raise_watermark(cur: Cursor, mark: datetime | None) -> None:
    run(cur, "raise_watermark", mark=mark)


def lower_watermark(cur: Cursor, mark: datetime) -> None:
    """`facusync resync`: the committed low-water mark goes back with the producer's."""
    run(cur, "lower_watermark", mark=mark)


def watermark(cur: Cursor) -> datetime | None:
    """The consumer's durable low-water mark: everything at or below it is in PostgreSQL."""
    mark = _one(cur, "watermark")
    return mark if isinstance(mark, datetime) else None


def newest_version(cur: Cursor) -> datetime | None:
    newest = _one(cur, "newest_version")
    return newest if isinstance(newest, datetime) else None


def zone(cur: Cursor) -> str | None:
    """The zone the stored source times are in; SinkError (an outage) while migration 005
    is not applied.

    Not a configuration error: right after `apt install` of a new version the services restart
    before the operator runs `migrate`, and a daemon that exited 78 would stay failed
    (RestartPreventExitStatus). It waits with backoff instead, saying what it waits for.
    """
    try:
        recorded = _one(cur, "zone")
    except psycopg2.errors.UndefinedColumn:
        cur.connection.rollback()
        raise SinkError("the schema is older than this facusync (migration 005 not applied): "
                        "waiting for `sudo facusync migrate --admin`") from None
    return None if recorded is None else str(recorded)


def zone_any_schema(cur: Cursor) -> str | None:
    """The recorded zone, or None (also before migration 005, for `facusync status`)."""
    recorded = _one(cur, "zone_any_schema")
    return None if recorded is None else str(recorded)


def record_zone(cur: Cursor, new: str, recorded: str | None) -> None:
    run(cur, "record_zone", zone=new, recorded=recorded)


def lock_for_conversion(cur: Cursor) -> str | None:
    """Lock sync_control against every consumer commit; the recorded zone."""
    run(cur, "lock_for_conversion")
    recorded = _one(cur, "zone_for_update")
    return None if recorded is None else str(recorded)


def convert_zone(cur: Cursor, old: str, new: str) -> None:
    run(cur, "convert_zone", old=old, new=new)


def status(cur: Cursor) -> tuple[Any, ...]:
    """watermark, newest_version, last_commit_at, last_consumer, and the two ages in seconds."""
    run(cur, "status")
    row = cur.fetchone()
    return tuple(row) if row else (None,) * 6

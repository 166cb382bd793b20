"""The change message: the contract between producer (and reconcile) and consumer.

One stream entry per row change. Fields (all strings, as Redis stores them):

- ``v``       format version, ``"1"``. A consumer dead-letters a version it does not know.
- ``op``      ``upsert`` or ``delete``.
- ``key``     the conduce.
- ``version`` ULTIMA_MODIFICACION as ISO 8601, the source's local wall time, no offset.
- ``row``     upserts only: JSON object of the synced columns, lower-case names, datetimes as
              ISO 8601 without offset (a datetimeoffset as its UTC instant, ``+00:00``),
              decimals as strings (nothing is rounded), times as ISO 8601, uniqueidentifiers
              as lower-case text, binary as PostgreSQL's hex input ``\\x0a1b…``.
- ``lw``      low-water mark: the producer's watermark *before* this entry was added. Every
              source row with a version at or below it was added to the stream in an earlier
              entry. When the oldest entry still in the stream carries ``lw = X``, everything
              at or below X is committed in PostgreSQL (entries are acknowledged, then deleted,
              only after commit). The consumer stores that as the durable, low-water
              watermark in ``sync_control``. Empty when there was none yet.
- ``expect``  optional, upserts from reconcile only: the version PostgreSQL held when
              reconcile compared the row, when that was *newer* than the view's (a restore
              from a backup, a hand edit). The consumer then replaces the row whatever its
              version, but only if PostgreSQL still holds exactly ``expect`` (compare and
              set): the view is the authority on what it holds now, and a change polling
              delivered meanwhile is never overwritten by reconcile's older read. Without
              ``expect`` the monotonic guard applies. A consumer that does not know the
              field applies the guard, which refuses the row: harmless.
- ``src``     who queued it: ``poll``, ``reconcile`` or ``retry`` (informational).
- ``ts``      enqueue time, Unix seconds (informational, for a person reading the stream: the
              consumer does not read it; the lag is measured from the entry ID).

Version 1 is the first and only format; change it only by bumping ``v`` and teaching the
consumer both.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from typing import Any

FORMAT_VERSION = "1"
SUPPORTED_VERSIONS = frozenset({"1"})
OP_UPSERT = "upsert"
OP_DELETE = "delete"


class MessageError(ValueError):
    """A stream entry that does not follow the contract (it goes to the dead letters)."""


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float)):
        return value  # bool is an int subclass and stays a JSON boolean
    if isinstance(value, datetime):
        if value.tzinfo is not None:  # a datetimeoffset: its instant, in UTC
            return value.astimezone(UTC).isoformat(timespec="microseconds")
        return value.isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time_of_day):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()  # bytea's hex input: the same bytes, zeros included
    if isinstance(value, uuid.UUID):
        return str(value)
    raise MessageError(f"value of type {type(value).__name__} cannot travel in a message")


def _json_default(value: Any) -> Any:
    """Called by the C JSON encoder only for what JSON lacks (datetime, Decimal, ...)."""
    converted = _json_value(value)
    if converted is value:
        raise MessageError(f"value of type {type(value).__name__} cannot travel in a message")
    return converted


class RowEncoder:
    """Encodes rows of one column layout: the same JSON as encode_row, about twice as fast.

    Keys are placed in sorted order once, and the C encoder converts str/int/bool/None itself,
    calling back only for datetimes and decimals.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.order = sorted(range(len(names)), key=lambda i: names[i])
        self.sorted_names = [names[i] for i in self.order]
        self._encode = json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), default=_json_default
        ).encode

    def encode(self, row: Sequence[Any]) -> str:
        return self._encode({n: row[i] for n, i in zip(self.sorted_names, self.order, strict=True)})


def encode_row(row: Mapping[str, Any]) -> str:
    """The row as canonical JSON: stable key order, exact decimals, naive ISO datetimes."""
    return json.dumps(
        {k: _json_value(v) for k, v in row.items()},
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
    )


def key_identity(key: str) -> str:
    """The conduce as SQL Server's usual collation (CI_AS) compares it: trailing spaces
    ignored, case ignored ('C-0000004', 'c-0000004' and 'C-0000004 ' are one conduce).

    PostgreSQL compares the same way through the unique index of sql/004 on
    ``lower(rtrim(conduce, ' '))``; the key is stored as the view spells it now.
    """
    return key.rstrip(" ").lower()


def fingerprint(row_json: str) -> str:
    """A short digest of the row's values: equal digests mean nothing to send."""
    return hashlib.blake2b(row_json.encode("utf-8"), digest_size=10).hexdigest()


def format_version(value: datetime) -> str:
    """ULTIMA_MODIFICACION as it travels: naive ISO 8601 with microseconds."""
    return value.isoformat(timespec="microseconds")


def upsert_fields(
    key: str, version: datetime, row_json: str, low_water: str, src: str = "poll"
) -> dict[str, str]:
    """The stream entry for a changed or new row."""
    return {
        "v": FORMAT_VERSION,
        "op": OP_UPSERT,
        "key": key,
        "version": format_version(version),
        "row": row_json,
        "lw": low_water,
        "src": src,
        "ts": f"{time.time():.3f}",
    }


def delete_fields(key: str, version: str, low_water: str, src: str = "reconcile") -> dict[str, str]:
    """The tombstone for a key gone from the view; version is the last one PostgreSQL held."""
    return {
        "v": FORMAT_VERSION,
        "op": OP_DELETE,
        "key": key,
        "version": version,
        "lw": low_water,
        "src": src,
        "ts": f"{time.time():.3f}",
    }


@dataclass(frozen=True, slots=True)
class Change:
    """A decoded, validated stream entry."""

    entry_id: str
    op: str
    key: str
    version: datetime
    row: dict[str, Any] | None
    low_water: datetime | None
    expect: datetime | None = None  # compare and set: apply only over this version


def _text(fields: Mapping[bytes | str, bytes | str], name: str) -> str | None:
    raw = fields.get(name)
    if raw is None:
        raw = fields.get(name.encode())
    if raw is None:
        return None
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def _optional_time(fields: Mapping[bytes | str, bytes | str], name: str) -> datetime | None:
    """An optional ISO 8601 field (``lw``, ``expect``): None when absent or empty."""
    value = _text(fields, name)
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise MessageError(f"{name} {value!r} is not an ISO 8601 timestamp") from None


def decode(entry_id: str, fields: Mapping[bytes | str, bytes | str]) -> Change:
    """Validate an entry against the contract; raise MessageError with the reason."""
    try:
        format_text = _text(fields, "v")
        if format_text not in SUPPORTED_VERSIONS:
            raise MessageError(f"unknown message format version {format_text!r}")
        op = _text(fields, "op")
        if op not in (OP_UPSERT, OP_DELETE):
            raise MessageError(f"unknown op {op!r}")
        key = _text(fields, "key")
        if not key:
            raise MessageError("missing or empty key")
        version_text = _text(fields, "version")
        if not version_text:
            raise MessageError("missing version")
        try:
            version = datetime.fromisoformat(version_text)
        except ValueError:
            raise MessageError(f"version {version_text!r} is not an ISO 8601 timestamp") from None
        if version.tzinfo is not None:
            raise MessageError(f"version {version_text!r} carries an offset; expected local time")
        row: dict[str, Any] | None = None
        if op == OP_UPSERT:
            row_text = _text(fields, "row")
            if row_text is None:
                raise MessageError("upsert without row")
            try:
                parsed = json.loads(row_text)
            except ValueError as exc:
                raise MessageError(f"row is not valid JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise MessageError("row is not a JSON object")
            row = parsed
        low_water = _optional_time(fields, "lw")
        expect = _optional_time(fields, "expect")
    except UnicodeDecodeError as exc:
        raise MessageError(f"entry is not UTF-8: {exc}") from None
    return Change(entry_id, op, key, version, row, low_water, expect)

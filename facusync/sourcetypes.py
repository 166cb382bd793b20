"""Which SQL Server column types are synced, into which PostgreSQL types, and how they travel.

Checked once at start-up (and whenever the view's columns are looked at again) against the
view's declared types, read with sys.dm_exec_describe_first_result_set: a column that cannot
be synced faithfully stops the producer with exit 78 and a message naming it, instead of a
crash loop or values stored wrong.

How each family travels: numbers, strings and naive date/times as pymssql returns them;
uniqueidentifier as its canonical text; binary/varbinary as PostgreSQL's ``\\x`` hex input
(so bytea gets the same bytes, zeros included); ``time`` and ``datetimeoffset`` are selected
as SQL Server's text (Debian 12's pymssql 2.2.2 truncates time to milliseconds, fails on
time(0-4) and returns datetimeoffset as raw bytes) and parsed here, to microseconds (what
PostgreSQL keeps); a datetimeoffset travels as its UTC instant (timestamptz keeps the instant,
not the offset).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

# PostgreSQL types (information_schema data_type) each SQL Server type may be stored in.
_TEXT = frozenset({"text", "character varying", "character"})
_NUMBERS = frozenset({"smallint", "integer", "bigint", "numeric", "real", "double precision"})
_STAMPS = frozenset({"timestamp with time zone", "timestamp without time zone"})
TARGETS: dict[str, frozenset[str]] = {
    "bit": frozenset({"boolean", "smallint", "integer", "bigint"}),
    **{t: _NUMBERS for t in ("tinyint", "smallint", "int", "bigint")},
    **{t: frozenset({"numeric"}) | _TEXT for t in ("decimal", "numeric", "money", "smallmoney")},
    **{t: frozenset({"double precision", "real", "numeric"}) for t in ("float", "real")},
    **{t: _TEXT for t in ("char", "varchar", "nchar", "nvarchar")},
    "date": frozenset({"date"}) | _STAMPS | _TEXT,
    **{t: _STAMPS | _TEXT for t in ("datetime", "datetime2", "smalldatetime")},
    "time": frozenset({"time without time zone"}) | _TEXT,
    "datetimeoffset": frozenset({"timestamp with time zone"}) | _TEXT,
    "uniqueidentifier": frozenset({"uuid"}) | _TEXT,
    **{t: frozenset({"bytea"}) for t in ("binary", "varbinary")},
}
# Selected as text and parsed by the producer (see the module docstring).
AS_TEXT = frozenset({"time", "datetimeoffset"})
VERSION_TYPES = frozenset({"datetime", "datetime2", "smalldatetime"})
KEY_TYPES = frozenset({"char", "varchar", "nchar", "nvarchar"})


def base_type(system_type_name: str) -> str:
    """'nvarchar(30)' -> 'nvarchar'."""
    return system_type_name.split("(")[0].strip().lower()


def type_problems(columns: dict[str, str], pg_types: dict[str, str], key: str,
                  version: str, table: str) -> list[str]:
    """Why synced columns cannot be synced faithfully: {view column: SQL Server type},
    {lower-case table column: PostgreSQL data_type}. Empty when all is well."""
    problems = []
    for column, declared in columns.items():
        source = base_type(declared)
        target = pg_types.get(column.lower(), "")
        allowed = TARGETS.get(source)
        if column.lower() == version.lower() and source not in VERSION_TYPES:
            problems.append(f"MSSQL_VERSION_COLUMN {column} is {declared}: it must be datetime, "
                            "datetime2 or smalldatetime (a local time)")
        elif column.lower() == key.lower() and source not in KEY_TYPES:
            problems.append(f"MSSQL_KEY_COLUMN {column} is {declared}: it must be a character type")
        elif not declared:
            problems.append(f"SQL Server did not describe the type of view column {column}: "
                            "check that the login may read the view's metadata")
        elif allowed is None:
            problems.append(f"view column {column} is {declared}, which facusync cannot sync: "
                            f"leave it out of the view, or drop {table}.{column.lower()} so it is "
                            "not synced")
        elif target not in allowed:
            problems.append(f"view column {column} is {declared} but {table}.{column.lower()} is "
                            f"{target}: values would be stored wrong; make it one of "
                            f"{', '.join(sorted(allowed))} (ALTER TABLE ... TYPE), or drop it")
    return problems


_OFFSET_TEXT = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.(\d+))? ([+-])(\d{2}):(\d{2})$")
_TIME_TEXT = re.compile(r"^(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?$")


def _microseconds(digits: str | None) -> int:
    """Fraction digits (up to 7) -> microseconds, half to even like PostgreSQL's rint()."""
    if not digits:
        return 0
    units = int(digits.ljust(7, "0")[:7])
    return round(units / 10)


def parse_time(text: str) -> time:
    """SQL Server's 'hh:mm:ss[.nnnnnnn]' -> time, to the microsecond."""
    m = _TIME_TEXT.match(text.strip())
    if not m:
        raise ValueError(f"not a time: {text!r}")
    moment = datetime(2000, 1, 1, int(m.group(1)), int(m.group(2)), int(m.group(3)))
    moment += timedelta(microseconds=_microseconds(m.group(4)))
    if moment.day != 1:  # 23:59:59.9999995 rounds up; PostgreSQL keeps 24:00:00, Python cannot
        return time(23, 59, 59, 999999)
    return moment.time()


def parse_datetimeoffset(text: str) -> datetime:
    """SQL Server's 'yyyy-mm-dd hh:mm:ss[.nnnnnnn] +hh:mm' -> the aware instant, in UTC."""
    m = _OFFSET_TEXT.match(text.strip())
    if not m:
        raise ValueError(f"not a datetimeoffset: {text!r}")
    minutes = (int(m.group(4)) * 60 + int(m.group(5))) * (-1 if m.group(3) == "-" else 1)
    local = datetime.fromisoformat(m.group(1)) + timedelta(microseconds=_microseconds(m.group(2)))
    return (local - timedelta(minutes=minutes)).replace(tzinfo=UTC)


PARSERS: dict[str, Callable[[str], Any]] = {"time": parse_time,
                                            "datetimeoffset": parse_datetimeoffset}

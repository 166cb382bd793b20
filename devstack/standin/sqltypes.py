"""SQL Server column types: how values are stored in SQLite and put on the wire.

Storage keeps SQL Server semantics that SQLite lacks:
- ``datetime`` is TEXT 'YYYY-MM-DD HH:MM:SS.fff' already rounded to 1/300 s ticks
  (so the milliseconds always end in 0, 3 or 7), which makes text comparison
  equal time comparison;
- ``datetime2`` is TEXT 'YYYY-MM-DD HH:MM:SS.fffffff';
- ``decimal``/``numeric`` are TEXT with exactly ``scale`` decimals, never float;
- ``bit`` is INTEGER 0/1; strings are TEXT COLLATE NOCASE (SQL Server's default
  collation is case-insensitive);
- ``uniqueidentifier`` is upper-case TEXT (how SQL Server shows it), ``time`` is TEXT
  'HH:MM:SS.fffffff', ``datetimeoffset`` is TEXT 'YYYY-MM-DD HH:MM:SS.fffffff +HH:MM' (local
  time and offset, as SQL Server shows it), ``binary(n)``/``varbinary(n)`` are BLOBs
  (``binary`` padded with zero bytes to n, as SQL Server does).
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from . import tds

# ---------------------------------------------------------------------------
# Type descriptions


@dataclass(frozen=True)
class SqlType:
    """A declared SQL Server type: name plus length (chars/bytes), precision, scale."""

    name: str
    length: int = 0
    precision: int = 0
    scale: int = 0

    def __str__(self) -> str:
        if self.name in ("nvarchar", "varchar", "varbinary", "binary"):
            return f"{self.name}({self.length})"
        if self.name in ("decimal", "numeric"):
            return f"{self.name}({self.precision},{self.scale})"
        if self.name in SCALED:
            return f"{self.name}({self.scale})"
        return self.name

    @property
    def sqlite_decl(self) -> str:
        """Column declaration used in the SQLite table (affinity + collation)."""
        if self.name in ("int", "bigint", "bit", "smallint", "tinyint"):
            return "INTEGER"
        if self.name == "float":
            return "REAL"
        if self.name in ("nvarchar", "varchar", "uniqueidentifier"):
            return "TEXT COLLATE NOCASE"
        if self.name in ("varbinary", "binary"):
            return "BLOB"
        return "TEXT"  # decimal, numeric, datetime, datetime2, date, time, datetimeoffset


# Types with a fractional-second scale (default 7), sent natively from TDS 7.3 on.
SCALED = ("datetime2", "time", "datetimeoffset")
_TYPE_RE = re.compile(r"^\s*(\w+)\s*(?:\(\s*(max|\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$", re.I)
_ALIASES = {"dec": "decimal", "integer": "int", "nchar": "nvarchar", "char": "varchar",
            "ntext": "nvarchar", "text": "varchar", "real": "float", "smalldatetime": "datetime"}


def parse_type(text: str) -> SqlType:
    """Parse 'nvarchar(30)', 'decimal(18,4)', 'datetime2(3)', 'int' ..."""
    m = _TYPE_RE.match(text)
    if not m:
        raise ValueError(f"bad SQL type {text!r}")
    name = m.group(1).lower()
    name = _ALIASES.get(name, name)
    arg1, arg2 = m.group(2), m.group(3)
    if name in ("nvarchar", "varchar", "varbinary", "binary"):
        limit = 4000 if name == "nvarchar" else 8000
        default = 1 if name == "binary" else limit
        length = default if arg1 is None else limit if arg1.lower() == "max" else int(arg1)
        return SqlType(name, length=min(length, limit))
    if name in ("decimal", "numeric"):
        precision = int(arg1) if arg1 else 18
        return SqlType(name, precision=precision, scale=int(arg2) if arg2 else 0)
    if name in SCALED:
        return SqlType(name, scale=int(arg1) if arg1 else 7)
    if name in ("int", "bigint", "bit", "datetime", "float", "date", "smallint", "tinyint",
                "uniqueidentifier", "sql_variant"):
        return SqlType(name)
    raise ValueError(f"unsupported SQL type {text!r}")


INT = SqlType("int")
BIGINT = SqlType("bigint")
BIT = SqlType("bit")
FLOAT = SqlType("float")
DATETIME = SqlType("datetime")
DATETIME2 = SqlType("datetime2", scale=7)


def nvarchar(length: int) -> SqlType:
    return SqlType("nvarchar", length=max(1, min(length, 4000)))


# ---------------------------------------------------------------------------
# Value normalisation (shared by the server, the harness and the seeder)

_EPOCH_1900 = date(1900, 1, 1).toordinal()
_TICKS_PER_DAY = 300 * 86400
_DT_RE = re.compile(
    r"^\s*(\d{4})-?(\d{2})-?(\d{2})"
    r"(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?\s*$"
)


class ConversionError(ValueError):
    """A string that SQL Server could not convert to a date/time (error 241)."""


def parse_datetime_parts(text: str) -> tuple[datetime, str]:
    """Split a date/time literal into (datetime without fraction, fraction digits)."""
    m = _DT_RE.match(text)
    if not m:
        raise ConversionError(text)
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        base = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0))
    except ValueError as exc:
        raise ConversionError(text) from exc
    return base, frac or ""


def _ticks_text(base: datetime, ticks: int) -> str:
    """Format a second plus 1/300 s ticks the way SQL Server shows datetime."""
    if ticks >= 300:
        base += timedelta(seconds=1)
        ticks -= 300
    ms = (ticks * 1000 + 150) // 300  # .xx0 / .xx3 / .xx7, as FreeTDS converts ticks
    return f"{base:%Y-%m-%d %H:%M:%S}.{ms:03d}"


def datetime_text(value: Any) -> str:
    """Normalise a datetime (or literal) to stored text, rounded to 1/300 s ticks.

    The rounding is SQL Server's: .xx0/.xx1 -> .xx0, .xx2-.xx4 -> .xx3,
    .xx5-.xx8 -> .xx7, .xx9 -> next .xx0.
    """
    if isinstance(value, datetime):
        base = value.replace(microsecond=0, tzinfo=None)
        ticks = (value.microsecond * 3 + 5000) // 10000
        return _ticks_text(base, ticks)
    if isinstance(value, date):
        return f"{value:%Y-%m-%d} 00:00:00.000"
    if isinstance(value, str):
        if len(value) == 23 and value[10] == " " and value[22] in "037":
            return value  # already normalised (fast path for the encoder)
        base, frac = parse_datetime_parts(value)
        if not frac:
            return _ticks_text(base, 0)
        scale = 10 ** len(frac)
        ticks = (int(frac) * 600 + scale) // (2 * scale)  # round half up
        return _ticks_text(base, ticks)
    raise ConversionError(repr(value))


def datetime2_text(value: Any) -> str:
    """Normalise to 'YYYY-MM-DD HH:MM:SS.fffffff' (100 ns units)."""
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}.{value.microsecond:06d}0"
    if isinstance(value, date):
        return f"{value:%Y-%m-%d} 00:00:00.0000000"
    if isinstance(value, str):
        if len(value) == 27 and value[10] == " " and value[19] == ".":
            return value
        base, frac = parse_datetime_parts(value)
        frac = frac or "0"
        scale = 10 ** len(frac)
        units = (int(frac) * 10**7 * 2 + scale) // (2 * scale)
        if units >= 10**7:
            base += timedelta(seconds=1)
            units -= 10**7
        return f"{base:%Y-%m-%d %H:%M:%S}.{units:07d}"
    raise ConversionError(repr(value))


def decimal_text(value: Any, scale: int) -> str:
    """Exact decimal text with exactly ``scale`` decimals (never via float)."""
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value))
        quantum = Decimal(1).scaleb(-scale)
        return format(dec.quantize(quantum, rounding=ROUND_HALF_UP), "f")
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal: {value!r}") from exc


def to_storage(sqltype: SqlType, value: Any) -> Any:
    """Convert a Python value to what the SQLite column stores."""
    if value is None:
        return None
    name = sqltype.name
    if name == "datetime":
        return datetime_text(value)
    if name == "datetime2":
        return datetime2_text(value)
    if name == "date":
        return datetime2_text(value)[:10]
    if name in ("decimal", "numeric"):
        return decimal_text(value, sqltype.scale)
    if name == "bit":
        return 1 if value else 0
    if name in ("int", "bigint", "smallint", "tinyint"):
        return int(value)
    if name == "float":
        return float(value)
    if name in ("nvarchar", "varchar"):
        return str(value)
    if name == "uniqueidentifier":
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))).upper()
    if name == "time":
        return time_text(value)
    if name == "datetimeoffset":
        return datetimeoffset_text(value)
    if name == "binary":
        return bytes(value)[:sqltype.length].ljust(sqltype.length, b"\x00")
    if name == "varbinary":
        return bytes(value)[:sqltype.length]
    return value


def time_text(value: Any) -> str:
    """'HH:MM:SS.fffffff' (100 ns units) from a time or a literal."""
    if isinstance(value, time):
        return f"{value:%H:%M:%S}.{value.microsecond:06d}0"
    return datetime2_text("2000-01-01 " + str(value).strip())[11:]


def datetimeoffset_text(value: Any) -> str:
    """'YYYY-MM-DD HH:MM:SS.fffffff +HH:MM' from an aware datetime or a literal."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConversionError(f"{value!r} has no offset")
        minutes = int((value.utcoffset() or timedelta()).total_seconds()) // 60
        local = datetime2_text(value.replace(tzinfo=None))
    else:
        m = re.match(r"^\s*(.*?)\s*([+-])(\d{2}):(\d{2})\s*$", str(value))
        if not m:
            raise ConversionError(repr(value))
        local = datetime2_text(m.group(1))
        minutes = (int(m.group(3)) * 60 + int(m.group(4))) * (-1 if m.group(2) == "-" else 1)
    sign = "-" if minutes < 0 else "+"
    return f"{local} {sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _offset_parts(text: str) -> tuple[datetime, int, int]:
    """(local datetime, 100 ns units within the second, offset minutes) of stored text."""
    local = datetime.fromisoformat(text[:19])
    minutes = int(text[29:31]) * 60 + int(text[32:34])
    return local, int(text[20:27]), -minutes if text[28] == "-" else minutes


def from_storage(sqltype: SqlType, value: Any) -> Any:
    """Convert a stored SQLite value back to the Python value pymssql would return."""
    if value is None:
        return None
    name = sqltype.name
    if name in ("datetime", "datetime2"):
        text = value if name == "datetime2" else datetime_text(value)
        if len(text) in (23, 26) and text[10] == " ":
            return datetime.fromisoformat(text)  # canonical text: the fast C parser
        base, frac = parse_datetime_parts(text)
        return base.replace(microsecond=int((frac + "000000")[:6]))
    if name in ("decimal", "numeric"):
        return Decimal(str(value))
    if name == "bit":
        return bool(value)
    if name == "date":
        return date.fromisoformat(str(value)[:10])
    if name == "uniqueidentifier":
        return uuid.UUID(str(value))
    if name == "time":
        return time.fromisoformat(str(value)[:15])
    if name == "datetimeoffset":
        local, units, minutes = _offset_parts(str(value))
        return local.replace(microsecond=units // 10,
                             tzinfo=timezone(timedelta(minutes=minutes)))
    if name in ("binary", "varbinary"):
        return bytes(value)
    return value


# ---------------------------------------------------------------------------
# Wire encoding

_pack_H = struct.Struct("<H").pack


def type_info(sqltype: SqlType, tds_version: int) -> bytes:
    """TYPE_INFO of a column in COLMETADATA."""
    name = sqltype.name
    collate = tds.at_least(tds_version, tds.TDS71)
    if name in ("int", "smallint", "tinyint"):
        return b"\x26\x04"
    if name == "bigint":
        return b"\x26\x08"
    if name == "bit":
        return b"\x68\x01"
    if name == "float":
        return b"\x6d\x08"
    if name == "datetime":
        return b"\x6f\x08"
    if name in ("decimal", "numeric"):
        code = 0x6A if name == "decimal" else 0x6C
        return bytes([code, decimal_size(sqltype.precision), sqltype.precision, sqltype.scale])
    if name == "uniqueidentifier":
        return b"\x24\x10"  # GUIDTYPE, BYTELEN 16
    if name in ("datetime2", "date", "time", "datetimeoffset") and \
            tds.at_least(tds_version, tds.TDS73):
        if name == "date":
            return b"\x28"
        code = {"datetime2": 0x2A, "time": 0x29, "datetimeoffset": 0x2B}[name]
        return bytes([code, sqltype.scale])
    if name in ("datetime2", "date", "time", "datetimeoffset"):
        # Below TDS 7.3 SQL Server sends these as nvarchar text.
        return b"\xe7" + _pack_H(2 * text_width(sqltype)) + (tds.COLLATION if collate else b"")
    if name == "nvarchar":
        return b"\xe7" + _pack_H(2 * sqltype.length) + (tds.COLLATION if collate else b"")
    if name == "varchar":
        return b"\xa7" + _pack_H(sqltype.length) + (tds.COLLATION if collate else b"")
    if name == "varbinary":
        return b"\xa5" + _pack_H(sqltype.length)
    if name == "binary":
        return b"\xad" + _pack_H(sqltype.length)  # BIGBINARYTYPE
    if name == "sql_variant":
        return b"\x62" + struct.pack("<I", 8016)  # SSVARIANTTYPE, LONGLEN max length; no rows
    raise ValueError(f"no wire encoding for {sqltype}")


def text_width(sqltype: SqlType) -> int:
    if sqltype.name == "date":
        return 10
    fraction = sqltype.scale + 1 if sqltype.scale else 0
    if sqltype.name == "time":
        return 8 + fraction
    if sqltype.name == "datetimeoffset":
        return 19 + fraction + 7
    return 19 + fraction


def decimal_size(precision: int) -> int:
    if precision <= 9:
        return 5
    if precision <= 19:
        return 9
    if precision <= 28:
        return 13
    return 17


def colmetadata(columns: list[tuple[str, SqlType]], tds_version: int) -> bytes:
    out = bytearray(struct.pack("<BH", tds.TOK_COLMETADATA, len(columns)))
    usertype = b"\x00\x00\x00\x00" if tds.at_least(tds_version, tds.TDS72) else b"\x00\x00"
    for name, sqltype in columns:
        out += usertype + b"\x01\x00"  # flags: nullable
        out += type_info(sqltype, tds_version)
        out += tds.b_varchar(name[:128])
    return bytes(out)


_pack_dt = struct.Struct("<BiI").pack
_days_cache: dict[str, int] = {}
_minutes: dict[str, tuple[int, int]] = {}
# 'SS.fff' -> ticks within the minute, for every canonical (tick-rounded) value.
_TAILS = {f"{s:02d}.{(t * 1000 + 150) // 300:03d}": s * 300 + t for s in range(60) for t in range(300)}


def _minute_base(text: str) -> tuple[int, int]:
    """(days since 1900-01-01, ticks at the start of the minute) for stored datetime text."""
    key = text[:16]
    base = (date.fromisoformat(text[:10]).toordinal() - _EPOCH_1900,
            (int(text[11:13]) * 60 + int(text[14:16])) * 60 * 300)
    if len(_minutes) >= 200_000:
        _minutes.clear()
    _minutes[key] = base
    return base


def encode_datetime(value: Any) -> bytes:
    """DATETIMN value: length 8, days since 1900-01-01, 1/300 s ticks since midnight."""
    text = value if value.__class__ is str and len(value) == 23 and value[22] in "037" \
        else datetime_text(value)
    day = text[:10]
    days = _days_cache.get(day)
    if days is None:
        days = date.fromisoformat(day).toordinal() - _EPOCH_1900
        if len(_days_cache) < 100_000:
            _days_cache[day] = days
    ticks = (int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])) * 300 \
        + (int(text[20:23]) * 3 + 5) // 10
    return _pack_dt(8, days, ticks)


def _time_bytes(scale: int) -> int:
    return 3 if scale <= 2 else 4 if scale <= 4 else 5


def make_datetime2_encoder(scale: int) -> Callable[[Any], bytes]:
    """DATETIME2N value (TDS 7.3+): time in 10^-scale s units, then days since 0001-01-01."""
    nbytes = _time_bytes(scale)
    divisor = 10 ** (7 - scale)

    def encode(value: Any) -> bytes:
        text = datetime2_text(value)
        days = date.fromisoformat(text[:10]).toordinal() - 1
        units = (int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])) * 10**7 \
            + int(text[20:27])
        units = (units + divisor // 2) // divisor if divisor > 1 else units
        return bytes([nbytes + 3]) + units.to_bytes(nbytes, "little") + days.to_bytes(3, "little")

    return encode


def make_time_encoder(scale: int, *, with_date: bool = False) -> Callable[[Any], bytes]:
    """TIMEN (or, with_date, DATETIMEOFFSETN) value, TDS 7.3+.

    MS-TDS 2.2.5.5.1.8: time(n) is 10^-n s units since midnight in 3-5 bytes; datetimeoffset
    is the datetime2 of the UTC instant followed by the offset in minutes (signed 16 bits).
    """
    nbytes = _time_bytes(scale)
    divisor = 10 ** (7 - scale)

    def units_of(moment: datetime, hundred_ns: int) -> int:
        units = (moment.hour * 3600 + moment.minute * 60 + moment.second) * 10**7 + hundred_ns
        return (units + divisor // 2) // divisor if divisor > 1 else units

    def encode(value: Any) -> bytes:
        if not with_date:
            text = time_text(value)
            moment = datetime.fromisoformat("2000-01-01 " + text[:8])
            return bytes([nbytes]) + units_of(moment, int(text[9:16])).to_bytes(nbytes, "little")
        local, hundred_ns, minutes = _offset_parts(datetimeoffset_text(value))
        utc = local - timedelta(minutes=minutes)
        days = utc.date().toordinal() - 1
        return (bytes([nbytes + 5]) + units_of(utc, hundred_ns).to_bytes(nbytes, "little")
                + days.to_bytes(3, "little") + struct.pack("<h", minutes))

    return encode


def encode_date(value: Any) -> bytes:
    days = date.fromisoformat(str(value)[:10]).toordinal() - 1
    return b"\x03" + days.to_bytes(3, "little")


def make_decimal_encoder(sqltype: SqlType) -> Callable[[Any], bytes]:
    """DECIMALN value: length, sign byte (1 = positive), magnitude little-endian."""
    size = decimal_size(sqltype.precision)
    scale = sqltype.scale
    head = bytes([size])

    def encode(value: Any) -> bytes:
        text = value if value.__class__ is str else decimal_text(value, scale)
        dot = text.find(".")
        if (len(text) - dot - 1 if dot >= 0 else 0) != scale:
            text = decimal_text(text, scale)
        number = int(text.replace(".", ""))
        sign = b"\x01"
        if number < 0:
            sign, number = b"\x00", -number
        return head + sign + number.to_bytes(size - 1, "little")

    return encode


def text_for_wire(sqltype: SqlType) -> Callable[[Any], str]:
    """Text form of datetime2/date/time/datetimeoffset for clients below TDS 7.3."""
    if sqltype.name == "date":
        return lambda v: str(v)[:10]
    if sqltype.name == "time":
        return lambda v: time_text(v)[:text_width(sqltype)]
    if sqltype.name == "datetimeoffset":
        fraction = sqltype.scale + 1 if sqltype.scale else 0
        return lambda v: (lambda t: t[:19 + fraction] + t[27:])(datetimeoffset_text(v))
    width = text_width(sqltype)

    def convert(value: Any) -> str:
        return datetime2_text(value)[:width]

    return convert


# Strings repeat a lot (client codes and names): encoded values are cached per column,
# up to a bound so that unique keys do not grow it without end.
_STRING_SNIPPET = """\
        if {v} is None:
            {c} = b'\\xff\\xff'
        else:
            {c} = cache{i}.get({v})
            if {c} is None:
                if {v}.__class__ is not str:
                    {v} = {conv}({v})
                e = {v}.encode({codec!r}{errors})
                if len(e) > {maxb}:
                    e = e[:{maxb}]
                {c} = pH(len(e)) + e
                if len(cache{i}) < 20000:
                    cache{i}[{v}] = {c}
"""

# datetime: days and the minute's ticks are cached per 'YYYY-MM-DD HH:MM' prefix; only
# seconds and milliseconds are parsed per value (stored text is already tick-rounded).
_DATETIME_SNIPPET = """\
        if {v} is None:
            {c} = b'\\x00'
        else:
            if {v}.__class__ is not str or len({v}) != 23:
                {v} = datetime_text({v})
            base = minutes.get({v}[:16])
            if base is None:
                base = minute_base({v})
            tick = tails.get({v}[17:])
            if tick is None:
                tick = int({v}[17:19]) * 300 + (int({v}[20:23]) * 3 + 5) // 10
            {c} = pdt(8, base[0], base[1] + tick)
"""


def build_row_encoder(
    types: list[SqlType], tds_version: int
) -> Callable[[list[tuple[Any, ...]]], bytes]:
    """Generate (and compile) a function that encodes a batch of rows into ROW tokens.

    Generated code avoids a per-value dispatch: it is the hot loop of every
    SELECT and the reason the stand-in streams well over 100k rows/s.
    """
    env: dict[str, Any] = {
        "pH": _pack_H,
        "pI4": struct.Struct("<Bi").pack,
        "pQ8": struct.Struct("<Bq").pack,
        "pD8": struct.Struct("<Bd").pack,
        "datetime_text": datetime_text,
        "minutes": _minutes,
        "minute_base": _minute_base,
        "tails": _TAILS,
        "pdt": _pack_dt,
        "str": str,
        "int": int,
        "float": float,
    }
    lines = ["def encode(rows):", "    out = []", "    ap = out.append", "    for r in rows:"]
    names = [f"v{i}" for i in range(len(types))]
    if names:
        lines.append(f"        {', '.join(names)}{',' if len(names) == 1 else ''} = r")
    modern = tds.at_least(tds_version, tds.TDS73)
    for i, sqltype in enumerate(types):
        v, c = f"v{i}", f"c{i}"
        name = sqltype.name
        env[f"cache{i}"] = {}
        if name in ("int", "smallint", "tinyint"):
            lines.append(f"        {c} = b'\\x00' if {v} is None else pI4(4, int({v}))")
        elif name == "bigint":
            lines.append(f"        {c} = b'\\x00' if {v} is None else pQ8(8, int({v}))")
        elif name == "bit":
            lines.append(
                f"        {c} = b'\\x00' if {v} is None else (b'\\x01\\x01' if {v} else b'\\x01\\x00')"
            )
        elif name == "float":
            lines.append(f"        {c} = b'\\x00' if {v} is None else pD8(8, float({v}))")
        elif name == "datetime":
            lines.append(_DATETIME_SNIPPET.format(v=v, c=c))
        elif name in ("decimal", "numeric"):
            env[f"enc{i}"] = make_decimal_encoder(sqltype)
            lines.append(f"        {c} = b'\\x00' if {v} is None else enc{i}({v})")
        elif name in ("datetime2", "date") and modern:
            env[f"enc{i}"] = encode_date if name == "date" else make_datetime2_encoder(sqltype.scale)
            lines.append(f"        {c} = b'\\x00' if {v} is None else enc{i}({v})")
        elif name in ("time", "datetimeoffset") and modern:
            env[f"enc{i}"] = make_time_encoder(sqltype.scale, with_date=name == "datetimeoffset")
            lines.append(f"        {c} = b'\\x00' if {v} is None else enc{i}({v})")
        elif name == "uniqueidentifier":
            env[f"uuid{i}"] = uuid.UUID
            lines.append(f"        {c} = b'\\x00' if {v} is None else "
                         f"b'\\x10' + uuid{i}(str({v})).bytes_le")
        elif name in ("datetime2", "date", "time", "datetimeoffset"):
            env[f"conv{i}"] = text_for_wire(sqltype)
            lines.append(f"        if {v} is not None:\n            {v} = conv{i}({v})")
            lines.append(_STRING_SNIPPET.format(i=i, v=v, c=c, conv="str", codec="utf-16-le",
                                                errors="", maxb=2 * text_width(sqltype)))
        elif name == "nvarchar":
            lines.append(_STRING_SNIPPET.format(i=i, v=v, c=c, conv="str", codec="utf-16-le",
                                                errors="", maxb=2 * sqltype.length))
        elif name == "varchar":
            lines.append(_STRING_SNIPPET.format(i=i, v=v, c=c, conv="str", codec="cp1252",
                                                errors=", 'replace'", maxb=sqltype.length))
        elif name in ("varbinary", "binary"):
            lines.append(
                f"        if {v} is None:\n            {c} = b'\\xff\\xff'\n"
                f"        else:\n            e = bytes({v})[:{sqltype.length}]\n"
                f"            {c} = pH(len(e)) + e"
            )
        elif name == "sql_variant":  # declared for metadata only: NULLs, never a value
            lines.append(f"        {c} = b'\\x00\\x00\\x00\\x00'")
        else:
            raise ValueError(f"no wire encoding for {sqltype}")
    parts = ", ".join(f"c{i}" for i in range(len(types)))
    lines.append(f"        ap(b''.join((b'\\xd1', {parts})))")
    lines.append("    return b''.join(out)")
    code = "\n".join(lines)
    exec(compile(code, f"<row encoder {types}>", "exec"), env)
    return env["encode"]  # type: ignore[no-any-return]


def infer_type(values: list[Any]) -> SqlType:
    """Type of a computed column, from the first values SQLite returned."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return nvarchar(1)
    if kinds <= {int}:
        ints = [v for v in values if v is not None]
        if all(-(2**31) <= v < 2**31 for v in ints):
            return INT
        return BIGINT
    if kinds <= {int, float}:
        return FLOAT
    if kinds <= {bytes}:
        return SqlType("varbinary", length=8000)
    return nvarchar(4000)

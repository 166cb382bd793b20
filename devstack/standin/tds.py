"""TDS 7.x wire format: packet framing, request parsing and response tokens.

Only what a SQL Server 2016 stand-in needs to satisfy FreeTDS (pymssql, tsql):
PRELOGIN, LOGIN7, SQL_BATCH, ATTENTION and the tokens LOGINACK, ENVCHANGE,
INFO/ERROR, COLMETADATA, ROW and DONE.  Layouts follow [MS-TDS]; the comments
note the quirks FreeTDS depends on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Packet types (client -> server unless noted).
PKT_SQL_BATCH = 0x01
PKT_RPC = 0x03
PKT_REPLY = 0x04  # server -> client
PKT_ATTENTION = 0x06
PKT_TRANSACTION = 0x0E
PKT_LOGIN7 = 0x10
PKT_PRELOGIN = 0x12

STATUS_EOM = 0x01
HEADER = struct.Struct(">BBHHBB")  # type, status, length, spid, packet id, window
HEADER_SIZE = 8

# Tokens.
TOK_COLMETADATA = 0x81
TOK_ERROR = 0xAA
TOK_INFO = 0xAB
TOK_LOGINACK = 0xAD
TOK_ROW = 0xD1
TOK_ENVCHANGE = 0xE3
TOK_DONE = 0xFD

DONE_FINAL = 0x00
DONE_MORE = 0x01
DONE_ERROR = 0x02
DONE_COUNT = 0x10
DONE_ATTN = 0x20

CMD_SELECT = 0xC1

# TDS versions as FreeTDS sends them in LOGIN7 (read little-endian there).
TDS70 = 0x70000000
TDS71 = 0x71000001
TDS72 = 0x72090002
TDS73 = 0x730B0003
TDS74 = 0x74000004

# SQL_Latin1_General_CP1_CI_AS: LCID 0x0409, IgnoreCase|IgnoreKana|IgnoreWidth, sort id 52.
# FreeTDS derives the single-byte charset (CP1252) of varchar data from it.
COLLATION = bytes([0x09, 0x04, 0xD0, 0x00, 0x34])

SERVER_NAME = "STANDIN"
PROG_NAME = "Microsoft SQL Server"
PROG_VERSION = (13, 0, 6300)  # SQL Server 2016 SP3


def at_least(version: int, minimum: int) -> bool:
    """Compare TDS versions by their major/minor byte (7.1 < 7.2 < 7.3 < 7.4)."""
    return (version >> 24) >= (minimum >> 24)


def ucs2(text: str) -> bytes:
    return text.encode("utf-16-le")


def b_varchar(text: str) -> bytes:
    """B_VARCHAR: 1-byte length in characters, then UTF-16LE."""
    data = ucs2(text)
    return bytes([len(data) // 2]) + data


def us_varchar(text: str) -> bytes:
    """US_VARCHAR: 2-byte length in characters, then UTF-16LE."""
    data = ucs2(text)
    return struct.pack("<H", len(data) // 2) + data


class ProtocolError(Exception):
    """The client sent something that is not valid TDS; the connection is closed."""


# ---------------------------------------------------------------------------
# PRELOGIN


def parse_prelogin(payload: bytes) -> dict[int, bytes]:
    """Return {option token: data} from a PRELOGIN request."""
    options: dict[int, bytes] = {}
    pos = 0
    while pos < len(payload):
        token = payload[pos]
        if token == 0xFF:
            break
        if pos + 5 > len(payload):
            raise ProtocolError("truncated PRELOGIN option table")
        offset, length = struct.unpack_from(">HH", payload, pos + 1)
        options[token] = payload[offset : offset + length]
        pos += 5
    return options


# PRELOGIN ENCRYPTION values ([MS-TDS] 2.2.6.5).
ENCRYPT_OFF = 0x00  # server: TLS for the LOGIN7 packet only, then plaintext
ENCRYPT_ON = 0x01  # the whole session over TLS
ENCRYPT_NOT_SUP = 0x02  # no TLS at all (no certificate)
ENCRYPT_REQ = 0x03  # server: the whole session over TLS, the client did not ask for it

OPTION_ENCRYPTION = 0x01


def answer_encryption(server_setting: str, client_value: int) -> tuple[int, bool]:
    """The ENCRYPTION value SQL Server answers, and whether it then drops the connection.

    ``server_setting`` is "not_sup" (no certificate), "off" (a certificate, Force Encryption
    off: SQL Server's default) or "on" (Force Encryption). The table is [MS-TDS] 2.2.6.5.
    """
    client_wants = client_value in (ENCRYPT_ON, ENCRYPT_REQ)
    if server_setting == "not_sup":
        return ENCRYPT_NOT_SUP, client_wants
    if client_value == ENCRYPT_NOT_SUP:
        if server_setting == "on":
            return ENCRYPT_REQ, True
        return ENCRYPT_NOT_SUP, False
    if client_wants:
        return ENCRYPT_ON, False
    return (ENCRYPT_REQ if server_setting == "on" else ENCRYPT_OFF), False


def build_prelogin_reply(encryption: int = ENCRYPT_NOT_SUP) -> bytes:
    """VERSION, ENCRYPTION, INSTOPT, THREADID, MARS=off.

    Any ENCRYPTION other than NOT_SUP makes the client start TLS right after this reply
    (handshake records inside PRELOGIN packets); OFF then covers the LOGIN7 packet only.
    """
    major, minor, build = PROG_VERSION
    items = [
        (0x00, struct.pack(">BBHH", major, minor, build, 0)),
        (OPTION_ENCRYPTION, bytes([encryption])),
        (0x02, b"\x00"),
        (0x03, b""),
        (0x04, b"\x00"),
    ]
    table_len = len(items) * 5 + 1
    table = bytearray()
    data = bytearray()
    for token, value in items:
        table += struct.pack(">BHH", token, table_len + len(data), len(value))
        data += value
    table.append(0xFF)
    return bytes(table + data)


# ---------------------------------------------------------------------------
# LOGIN7


@dataclass
class Login:
    """The parts of a LOGIN7 request the stand-in uses."""

    tds_version: int
    packet_size: int
    hostname: str
    user: str
    password: str
    app_name: str
    database: str
    language: str


def _unscramble(data: bytes) -> str:
    """LOGIN7 password: each byte had its nibbles swapped, then was XORed with 0xA5."""
    plain = bytearray()
    for byte in data:
        byte ^= 0xA5
        plain.append(((byte & 0x0F) << 4) | (byte >> 4))
    return plain.decode("utf-16-le", errors="replace")


def parse_login7(payload: bytes) -> Login:
    if len(payload) < 86:
        raise ProtocolError("LOGIN7 too short")
    tds_version, packet_size = struct.unpack_from("<II", payload, 4)

    def field(at: int, secret: bool = False) -> str:
        offset, chars = struct.unpack_from("<HH", payload, at)
        raw = payload[offset : offset + chars * 2]
        if secret:
            return _unscramble(raw)
        return raw.decode("utf-16-le", errors="replace")

    try:
        return Login(
            tds_version=tds_version,
            packet_size=packet_size,
            hostname=field(36),
            user=field(40),
            password=field(44, secret=True),
            app_name=field(48),
            language=field(64),
            database=field(68),
        )
    except (struct.error, IndexError) as exc:
        raise ProtocolError(f"malformed LOGIN7: {exc}") from exc


# ---------------------------------------------------------------------------
# SQL_BATCH


def parse_sql_batch(payload: bytes, tds_version: int) -> str:
    """The batch text; from TDS 7.2 on it starts with an ALL_HEADERS block."""
    start = 0
    if at_least(tds_version, TDS72) and len(payload) >= 4:
        total = struct.unpack_from("<I", payload, 0)[0]
        # Be lenient like SQL Server: a client below 7.2 may still send headers.
        if 4 <= total <= len(payload):
            start = total
    return payload[start:].decode("utf-16-le", errors="replace")


# ---------------------------------------------------------------------------
# Response tokens


def token_done(status: int, rowcount: int, tds_version: int, curcmd: int = 0) -> bytes:
    if at_least(tds_version, TDS72):
        return struct.pack("<BHHQ", TOK_DONE, status, curcmd, rowcount)
    return struct.pack("<BHHI", TOK_DONE, status, curcmd, rowcount & 0xFFFFFFFF)


def token_message(
    number: int,
    message: str,
    tds_version: int,
    *,
    severity: int = 16,
    state: int = 1,
    line: int = 1,
    info: bool = False,
) -> bytes:
    """An ERROR (or INFO) token; pymssql raises for severity > 10."""
    body = struct.pack("<iBB", number, state, severity) + us_varchar(message)
    body += b_varchar(SERVER_NAME) + b_varchar("")
    body += struct.pack("<i", line) if at_least(tds_version, TDS72) else struct.pack("<H", line)
    token = TOK_INFO if info else TOK_ERROR
    return struct.pack("<BH", token, len(body)) + body


def token_loginack(tds_version: int) -> bytes:
    """LOGINACK echoes the client's TDS version big-endian (74 00 00 04 for 7.4)."""
    major, minor, build = PROG_VERSION
    body = b"\x01" + struct.pack(">I", tds_version) + b_varchar(PROG_NAME)
    body += bytes([major, minor, build >> 8, build & 0xFF])
    return struct.pack("<BH", TOK_LOGINACK, len(body)) + body


def token_envchange(kind: int, new: str, old: str) -> bytes:
    body = bytes([kind]) + b_varchar(new) + b_varchar(old)
    return struct.pack("<BH", TOK_ENVCHANGE, len(body)) + body


def token_envchange_collation(collation: bytes) -> bytes:
    body = bytes([7, len(collation)]) + collation + b"\x00"
    return struct.pack("<BH", TOK_ENVCHANGE, len(body)) + body


ENV_DATABASE = 1
ENV_LANGUAGE = 2
ENV_PACKETSIZE = 4

"""What TLS the SQL Server hop uses, and why a TLS login failed, in words an operator can act on.

FreeTDS reports every TLS failure as "connection failed" (DB-Lib 20002). To name the cause,
this module repeats the first steps of a login itself: a TDS PRELOGIN announcing what
MSSQL_ENCRYPT asks for, then the TLS handshake with the same CA file and host-name rule,
its records carried inside PRELOGIN packets as TDS 7.x does ([MS-TDS] 2.2.6.5). It never
sends the LOGIN7 packet, so no password is involved. Python's ssl (OpenSSL) does this
handshake, not FreeTDS's GnuTLS, so the TLS version it reports is what the server offers
to a client that, like FreeTDS with `enable tls v1 = no`, accepts TLS 1.1 to 1.3.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import warnings
from dataclasses import dataclass, replace
from typing import Any

from facusync.config import Config

PRELOGIN = 0x12
HEADER = struct.Struct(">BBHHBB")
ENCRYPT_OFF, ENCRYPT_ON, ENCRYPT_NOT_SUP, ENCRYPT_REQ = 0x00, 0x01, 0x02, 0x03
# What FreeTDS sends for each `encryption` value (login.c, tds71_do_login).
CLIENT_VALUE = {"off": ENCRYPT_NOT_SUP, "request": ENCRYPT_OFF, "require": ENCRYPT_ON}

# OpenSSL verify codes (x509_vfy.h).
_NOT_YET_VALID, _EXPIRED, _NAME_MISMATCH = 9, 10, (62, 64)  # host name, IP address
_VERSION_REASONS = {"UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "TLSV1_ALERT_PROTOCOL_VERSION",
                    "WRONG_SSL_VERSION", "VERSION_TOO_LOW"}


@dataclass(frozen=True)
class TlsState:
    """How the SQL Server hop is (or would be) protected; `problem` says what is wrong."""

    encryption: str  # "none", "login only" or "whole session"
    tls_version: str | None
    cipher: str | None
    verified: bool
    problem: str | None = None

    def describe(self) -> str:
        if self.problem:
            return self.problem
        if self.encryption == "none":
            return "not encrypted"
        check = "certificate verified" if self.verified else "certificate NOT verified (set MSSQL_CA_FILE)"
        return f"encrypted ({self.encryption}), {self.tls_version}, {check}"


class _Packets:
    """Whole TDS messages over a socket, for the PRELOGIN exchange only."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, payload: bytes) -> None:
        size = 4096 - HEADER.size
        for start in range(0, max(len(payload), 1), size):
            body = payload[start : start + size]
            status = 1 if start + size >= len(payload) else 0
            self.sock.sendall(HEADER.pack(PRELOGIN, status, len(body) + HEADER.size, 0, 1, 0) + body)

    def receive(self) -> bytes:
        payload = bytearray()
        while True:
            _type, status, length, _spid, _pid, _win = HEADER.unpack(self._exactly(HEADER.size))
            payload += self._exactly(length - HEADER.size)
            if status & 1:
                return bytes(payload)

    def _exactly(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("SQL Server closed the connection during PRELOGIN")
            data += chunk
        return bytes(data)


def _prelogin_request(encryption: int) -> bytes:
    options = [(0x00, bytes(6)), (0x01, bytes([encryption])), (0x02, b"\x00"),
               (0x03, struct.pack(">I", os.getpid() & 0xFFFFFFFF))]
    table, data = bytearray(), bytearray()
    start = len(options) * 5 + 1
    for token, value in options:
        table += struct.pack(">BHH", token, start + len(data), len(value))
        data += value
    return bytes(table) + b"\xff" + bytes(data)


def _server_encryption(reply: bytes) -> int:
    pos = 0
    while pos + 5 <= len(reply) and reply[pos] != 0xFF:
        token, offset, length = struct.unpack_from(">BHH", reply, pos)  # ints
        if token == 0x01 and length >= 1 and offset < len(reply):
            return int(reply[offset])
        pos += 5
    return ENCRYPT_NOT_SUP


def client_context(cfg: Config) -> ssl.SSLContext:
    """The TLS rules FreeTDS applies for these settings: verify only with a CA file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # FreeTDS still offers TLS 1.1
    with warnings.catch_warnings():  # deprecated indeed; FreeTDS accepts it all the same
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
    if cfg.mssql_ca_file:
        context.load_verify_locations(cafile=cfg.mssql_ca_file)
        context.check_hostname = cfg.mssql_check_hostname
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def probe_tls(cfg: Config) -> TlsState:
    """PRELOGIN and the TLS handshake as pymssql would do them; raises OSError if unreachable."""
    with socket.create_connection((cfg.mssql_host, cfg.mssql_port), timeout=cfg.mssql_login_timeout) as sock:
        packets = _Packets(sock)
        packets.send(_prelogin_request(CLIENT_VALUE[cfg.mssql_encrypt]))
        offered = _server_encryption(packets.receive())
        refused = _negotiation_problem(cfg, offered)
        if refused is not None or offered == ENCRYPT_NOT_SUP:
            return TlsState("none", None, None, False, refused)
        scope = "login only" if offered == ENCRYPT_OFF and cfg.mssql_encrypt == "request" else "whole session"
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            tls = client_context(cfg).wrap_bio(incoming, outgoing, server_hostname=cfg.mssql_host)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    packets.send(outgoing.read())
                    incoming.write(packets.receive())
        except ssl.SSLError as exc:
            return TlsState(scope, None, None, False, handshake_problem(cfg, exc))
        except ConnectionError:
            return TlsState(scope, None, None, False, handshake_problem(cfg, None))
        cipher = tls.cipher()
        return TlsState(scope, tls.version(), cipher[0] if cipher else None, bool(cfg.mssql_ca_file))


def _negotiation_problem(cfg: Config, offered: int) -> str | None:
    if offered == ENCRYPT_NOT_SUP and cfg.mssql_encrypt == "require":
        return ("the server offers no encryption (it has no certificate) but MSSQL_ENCRYPT=require:"
                " give SQL Server a certificate, or set MSSQL_ENCRYPT=request")
    if offered == ENCRYPT_REQ and cfg.mssql_encrypt == "off":
        return ("the server requires encryption (Force Encryption is on) but MSSQL_ENCRYPT=off:"
                " set MSSQL_ENCRYPT=request or require")
    return None


def handshake_problem(cfg: Config, exc: ssl.SSLError | None) -> str:
    """One line for a failed TLS handshake (None: the server hung up during it)."""
    if exc is None:
        return ("SQL Server ended the TLS handshake (no TLS version or cipher in common?): enable"
                " TLS 1.2 on the server, or check MSSQL_ENCRYPT")
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code == _EXPIRED:
            return ("SQL Server's TLS certificate has expired: renew it on the server (or check this"
                    " machine's clock); MSSQL_CA_FILE cannot fix this")
        if code == _NOT_YET_VALID:
            return "SQL Server's TLS certificate is not valid yet: check the clocks of both machines"
        if code in _NAME_MISMATCH:
            return (f"SQL Server's TLS certificate does not name {cfg.mssql_host!r}: set MSSQL_HOST to"
                    " a name the certificate lists, or MSSQL_CHECK_HOSTNAME=no")
        return (f"SQL Server's TLS certificate is not trusted ({exc.verify_message}): put the CA that"
                " signed it in MSSQL_CA_FILE")
    if exc.reason in _VERSION_REASONS:
        return ("no TLS version in common with SQL Server (FreeTDS here speaks TLS 1.1 to 1.3, not"
                " 1.0): enable TLS 1.2 on the server, or set MSSQL_ENCRYPT=off to connect unencrypted")
    return (f"the TLS handshake with SQL Server failed ({exc.reason or exc}): check MSSQL_ENCRYPT and"
            " MSSQL_CA_FILE")


def session_tls(cfg: Config, conn: Any) -> TlsState:
    """How an open pymssql connection is protected, for `facusync check`.

    SQL Server tells whether the session is encrypted (CONNECTIONPROPERTY needs no
    permission); the probe adds the TLS version. Verified: FreeTDS checked the certificate
    against MSSQL_CA_FILE, or this connection would not exist.
    """
    try:
        probed = probe_tls(cfg)
    except (OSError, struct.error) as exc:
        return TlsState("?", None, None, False, f"TLS probe failed: {exc}")
    cursor = conn.cursor()
    try:
        cursor.execute("SELECT CONNECTIONPROPERTY('encrypt_option')")
        row = cursor.fetchone()
    finally:
        cursor.close()
    whole = bool(row) and str(row[0]).upper() == "TRUE"
    if whole:
        return replace(probed, encryption="whole session")
    if probed.encryption == "whole session":  # the probe found more than the session has
        return replace(probed, encryption="?", problem="SQL Server says this session is not encrypted")
    return probed

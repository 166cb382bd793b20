"""The TDS server: one thread per client connection, SQLite behind each.

Every connection is independent (its own socket, thread, SQLite handle and
session); whatever one client sends can only end its own connection. Faults
(refused logins, delays, dropped or stalled results) are read from a small JSON
control file that the test harness rewrites while the server runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import sqlite3
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import engine, schema, sqltypes, tds
from .engine import TdsError
from .sqltypes import SqlType

log = logging.getLogger("standin.server")

FETCH_ROWS = 2000  # rows per SQLite fetchmany and per encoder call
FLUSH_BYTES = 64 * 1024  # encoded bytes buffered before writing to the socket
MAX_PACKET = 32767


class ClientGone(Exception):
    """The client closed the connection (or we dropped it on purpose)."""


@dataclass(frozen=True)
class Faults:
    """Misbehaviour requested by a test; read at each login and each batch."""

    refuse_logins: bool = False
    delay: float = 0.0
    drop_after_rows: int | None = None
    hang: bool = False
    # (column, shown as): the ERP team renamed a view column; the data stays where it is.
    rename_columns: tuple[tuple[str, str], ...] = ()
    # Seconds before answering a batch that reads rows (a loaded server, a slow link); logins,
    # TOP 0 and metadata queries answer at once.
    slow_reads: float = 0.0
    clock_offset: float = 0.0


class FaultFile:
    """Reads the control JSON again only when the file was replaced or changed."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._faults = Faults()
        self._lock = threading.Lock()

    def current(self) -> Faults:
        if self.path is None:
            return self._faults
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                self._faults = self._load() if stamp else Faults()
            return self._faults

    def _load(self) -> Faults:
        assert self.path is not None
        try:
            data: dict[str, Any] = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            log.warning("unreadable control file %s, ignoring it", self.path)
            return Faults()
        drop = data.get("drop_after_rows")
        return Faults(
            refuse_logins=bool(data.get("refuse_logins", False)),
            delay=float(data.get("delay", 0.0) or 0.0),
            drop_after_rows=None if drop is None else int(drop),
            hang=bool(data.get("hang", False)),
            rename_columns=tuple((str(old), str(new))
                                 for old, new in (data.get("rename_columns") or {}).items()),
            slow_reads=float(data.get("slow_reads", 0.0) or 0.0),
            clock_offset=float(data.get("clock_offset", 0.0) or 0.0),
        )


def _reads_rows(batch: str) -> bool:
    """A batch that reads rows of a table (what a slow server is slow at)."""
    text = batch.upper()
    return " FROM " in text and "TOP 0" not in text and "DM_EXEC_DESCRIBE" not in text


@dataclass
class ServerConfig:
    db_path: Path
    user: str
    password: str
    database: str = "g_FACU"
    control: Path | None = None
    packet_size: int | None = None  # None: use what the client asks for
    # SQL Server's encryption setting: "not_sup" (no certificate), "off" (a certificate,
    # Force Encryption off: TLS for the login packet unless the client asks for more) or
    # "on" (Force Encryption: the whole session over TLS). See tds.answer_encryption.
    encryption: str = "not_sup"
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_min: str = "1.2"
    tls_max: str = "1.2"  # SQL Server 2016 speaks TLS 1.0 to 1.2


TLS_VERSIONS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1,
                "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server side of the TLS handshake, or None when the server has no certificate."""
    if config.encryption == "not_sup":
        return None
    if config.cert_file is None or config.key_file is None:
        raise ValueError(f"encryption {config.encryption!r} needs a certificate and its key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config.cert_file, config.key_file)
    if TLS_VERSIONS[config.tls_min] < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the old versions be offered at all
    context.minimum_version = TLS_VERSIONS[config.tls_min]
    context.maximum_version = TLS_VERSIONS[config.tls_max]
    # Tickets would arrive after the client thinks the handshake (in PRELOGIN packets) is over.
    context.num_tickets = 0
    return context


_encoders: dict[tuple[tuple[SqlType, ...], int], Callable[[list[tuple[Any, ...]]], bytes]] = {}


def row_encoder(types: list[SqlType], tds_version: int) -> Callable[[list[tuple[Any, ...]]], bytes]:
    key = (tuple(types), tds_version)
    encoder = _encoders.get(key)
    if encoder is None:
        encoder = _encoders[key] = sqltypes.build_row_encoder(types, tds_version)
    return encoder


class Connection:
    """One client: login, then a loop of requests until the client leaves."""

    def __init__(self, config: ServerConfig, faults: FaultFile, sock: socket.socket, spid: int,
                 tls: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.tls_context = tls
        # Once TLS is up, socket bytes go through this object (MemoryBIOs both ways).
        self.tls: ssl.SSLObject | None = None
        self.tls_in = ssl.MemoryBIO()
        self.tls_out = ssl.MemoryBIO()
        self.encrypted_session = False
        self.faults = faults
        self.sock = sock
        self.spid = spid
        self.inbuf = bytearray()
        self.out = bytearray()
        self.packet_id = 1
        self.tds_version = tds.TDS74
        self.packet_size = 4096
        self.attention = False
        self.db: sqlite3.Connection | None = None
        self.planner: engine.Planner | None = None
        self.session: engine.Session | None = None

    # -- socket input -------------------------------------------------------

    def _recv(self, timeout: float | None = None) -> bool:
        """Read what is available into inbuf; False if nothing came within timeout."""
        if timeout is not None:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return False
        data = self.sock.recv(65536)
        if not data:
            raise ClientGone()
        self.inbuf += self._decrypt(data) if self.tls is not None else data
        return True

    def _decrypt(self, data: bytes) -> bytes:
        """Plaintext from raw TLS records (may be empty until a whole record arrived)."""
        assert self.tls is not None
        self.tls_in.write(data)
        plain = bytearray()
        while True:
            try:
                chunk = self.tls.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return bytes(plain)
            if not chunk:
                return bytes(plain)
            plain += chunk

    def _send(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.write(data)
            data = self.tls_out.read()
        self.sock.sendall(data)

    def _take_packet(self) -> tuple[int, int, bytes] | None:
        if len(self.inbuf) < tds.HEADER_SIZE:
            return None
        ptype, status, length, _spid, _pid, _win = tds.HEADER.unpack_from(self.inbuf, 0)
        if length < tds.HEADER_SIZE:
            raise tds.ProtocolError(f"bad packet length {length}")
        if len(self.inbuf) < length:
            return None
        payload = bytes(self.inbuf[tds.HEADER_SIZE : length])
        del self.inbuf[:length]
        return ptype, status, payload

    def read_message(self) -> tuple[int, bytes]:
        """A whole request (packets up to EOM); an ATTENTION is returned as soon as seen."""
        parts: list[bytes] = []
        first_type: int | None = None
        while True:
            packet = self._take_packet()
            if packet is None:
                self._recv()
                continue
            ptype, status, payload = packet
            if ptype == tds.PKT_ATTENTION:
                self.attention = False
                return ptype, b""
            if first_type is None:
                first_type = ptype
            parts.append(payload)
            if status & tds.STATUS_EOM:
                return first_type, b"".join(parts)
            if sum(map(len, parts)) > 64 * 1024 * 1024:
                raise tds.ProtocolError("request larger than 64 MiB")

    def attention_pending(self, timeout: float = 0.0) -> bool:
        """True once the client sent ATTENTION (cancel); reads without blocking by default."""
        if self.attention:
            return True
        self._recv(timeout)
        # Only look at complete packets at the front; anything else waits for read_message.
        while len(self.inbuf) >= tds.HEADER_SIZE:
            ptype, _status, length = struct.unpack_from(">BBH", self.inbuf, 0)
            if len(self.inbuf) < length:
                break
            if ptype == tds.PKT_ATTENTION:
                del self.inbuf[:length]
                self.attention = True
                return True
            break
        return False

    # -- socket output ------------------------------------------------------

    def _packets(self, data: bytes | bytearray, final: bool, ptype: int = tds.PKT_REPLY) -> bytes:
        size = self.packet_size - tds.HEADER_SIZE
        chunks = []
        view = memoryview(data)
        for start in range(0, max(len(data), 1), size):
            body = view[start : start + size]
            last = final and start + size >= len(data)
            status = tds.STATUS_EOM if last else 0
            chunks.append(tds.HEADER.pack(ptype, status, len(body) + 8, self.spid, self.packet_id, 0))
            chunks.append(bytes(body))
            self.packet_id = (self.packet_id + 1) & 0xFF
        return b"".join(chunks)

    def flush(self, final: bool = False, everything: bool = False) -> None:
        """Send buffered tokens; partial trailing packets wait unless final/everything."""
        size = self.packet_size - tds.HEADER_SIZE
        cut = len(self.out) if final or everything else len(self.out) - len(self.out) % size
        if cut == 0 and not final:
            return
        data = self.out[:cut]
        del self.out[:cut]
        self._send(self._packets(data, final))
        if final:
            self.packet_id = 1

    def reply(self, *tokens: bytes) -> None:
        for token in tokens:
            self.out += token
        self.flush(final=True)

    # -- lifecycle ------------------------------------------------------------

    def serve(self) -> None:
        peer = "?"
        try:
            host, port = self.sock.getpeername()[:2]
            peer = f"{host}:{port}"
            if self.login():
                self.loop()
        except ClientGone:
            pass
        except tds.ProtocolError as exc:
            log.warning("spid %d (%s): protocol error: %s", self.spid, peer, exc)
        except ssl.SSLError as exc:
            log.info("spid %d (%s): TLS failed: %s", self.spid, peer, exc)
        except OSError as exc:
            log.debug("spid %d (%s): socket error: %s", self.spid, peer, exc)
        except Exception:
            log.exception("spid %d (%s): unexpected error, closing this connection", self.spid, peer)
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None

    def drop(self) -> None:
        """Cut the connection abruptly (RST), as a crashed server or broken network would."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass
        raise ClientGone()

    def stall(self) -> None:
        """Stop answering while the 'hang' fault is set; keep draining the socket."""
        log.info("spid %d: hanging (fault)", self.spid)
        while self.faults.current().hang:
            self._recv(0.2)
        log.info("spid %d: hang fault cleared, resuming", self.spid)

    def wait_delay(self, delay: float) -> bool:
        """Sleep for the 'delay' fault; True if the client cancelled meanwhile."""
        deadline = time.monotonic() + delay
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.attention_pending(min(remaining, 0.2)):
                return True

    # -- login ---------------------------------------------------------------

    def login(self) -> bool:
        ptype, payload = self.read_message()
        login_only = False
        if ptype == tds.PKT_PRELOGIN:
            options = tds.parse_prelogin(payload)
            client = (options.get(tds.OPTION_ENCRYPTION) or bytes([tds.ENCRYPT_NOT_SUP]))[0]
            answer, terminate = tds.answer_encryption(self.config.encryption, client)
            self.reply(tds.build_prelogin_reply(answer))
            if terminate:
                log.info("spid %d: client encryption %#x, server %s: connection terminated",
                         self.spid, client, self.config.encryption)
                return False
            if answer != tds.ENCRYPT_NOT_SUP:
                self.start_tls()
                login_only = answer == tds.ENCRYPT_OFF
                self.encrypted_session = not login_only
            ptype, payload = self.read_message()
        elif self.config.encryption == "on":
            raise tds.ProtocolError("encryption is forced and the client sent no PRELOGIN")
        if login_only:
            self.tls = None  # ENCRYPT_OFF: the client dropped TLS after the login packet
        if ptype != tds.PKT_LOGIN7:
            raise tds.ProtocolError(f"expected LOGIN7, got packet type {ptype:#x}")
        login = tds.parse_login7(payload)
        version = login.tds_version
        if not (0x70 <= (version >> 24) <= 0x74):
            version = tds.TDS74
        self.tds_version = version
        faults = self.faults.current()
        if faults.hang:
            self.stall()
        if faults.delay:
            time.sleep(faults.delay)
        v = self.tds_version
        failed = tds.token_message(18456, f"Login failed for user '{login.user}'.", v, severity=14)
        if faults.refuse_logins or login.user.lower() != self.config.user.lower() \
                or login.password != self.config.password:
            log.info("spid %d: login refused for user %r", self.spid, login.user)
            self.reply(failed, tds.token_done(tds.DONE_ERROR, 0, v))
            return False
        database = login.database or self.config.database
        known = [self.config.database, *engine.KNOWN_EXTRA_DATABASES]
        match = next((d for d in known if d.lower() == database.lower()), None)
        if match is None:
            message = f'Cannot open database "{database}" requested by the login. The login failed.'
            self.reply(tds.token_message(4060, message, v, severity=11), failed,
                       tds.token_done(tds.DONE_ERROR, 0, v))
            return False
        requested = login.packet_size or 4096
        self.packet_size = max(512, min(self.config.packet_size or requested, MAX_PACKET))
        self.db = schema.connect(self.config.db_path, readonly=True)
        self._describe_connection()
        self.planner = engine.Planner(self.db)
        self.session = engine.Session(database=match, user=login.user, spid=self.spid,
                                      server_database=self.config.database,
                                      encrypted=self.encrypted_session)
        tokens = [
            tds.token_envchange(tds.ENV_DATABASE, match, "master"),
            tds.token_message(5701, f"Changed database context to '{match}'.", v, severity=0,
                              state=2, info=True),
        ]
        if tds.at_least(v, tds.TDS71):
            tokens.append(tds.token_envchange_collation(tds.COLLATION))
        tokens += [
            tds.token_envchange(tds.ENV_LANGUAGE, "us_english", ""),
            tds.token_message(5703, "Changed language setting to us_english.", v, severity=0, info=True),
            tds.token_loginack(v),
            tds.token_envchange(tds.ENV_PACKETSIZE, str(self.packet_size), str(requested)),
            tds.token_done(tds.DONE_FINAL, 0, v),
        ]
        self.reply(*tokens)
        log.info("spid %d: %s logged in (TDS %08x, packet %d, app %r)", self.spid, login.user,
                 v, self.packet_size, login.app_name)
        return True

    def start_tls(self) -> None:
        """The TLS handshake, its records carried inside PRELOGIN packets (TDS 7.x).

        Afterwards TLS records travel on the socket as they are, TDS packets inside them.
        """
        if self.tls_context is None:
            raise tds.ProtocolError("TLS requested but the server has no certificate")
        handshake = self.tls_context.wrap_bio(self.tls_in, self.tls_out, server_side=True)
        while True:
            try:
                handshake.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_handshake()
            except ssl.SSLError:
                self._send_handshake()  # the alert that tells the client why
                raise
            ptype, payload = self.read_message()
            if ptype != tds.PKT_PRELOGIN:
                raise tds.ProtocolError(f"expected TLS in a PRELOGIN packet, got type {ptype:#x}")
            self.tls_in.write(payload)
        self._send_handshake()
        self.tls = handshake
        log.info("spid %d: TLS up (%s, %s)", self.spid, handshake.version(),
                 (handshake.cipher() or ("?",))[0])
        early, self.inbuf = bytes(self.inbuf), bytearray()
        if early:  # records sent right behind the handshake (TLS 1.3 clients do)
            self.inbuf += self._decrypt(early)

    def _send_handshake(self) -> None:
        pending = self.tls_out.read()
        if pending:
            self.sock.sendall(self._packets(pending, True, tds.PKT_PRELOGIN))
            self.packet_id = 1

    def _describe_connection(self) -> None:
        """sys.dm_exec_connections for this session, as a temp table the planner can read."""
        assert self.db is not None
        self.db.execute("PRAGMA query_only = OFF")
        self.db.execute("CREATE TEMP TABLE dm_exec_connections (session_id INTEGER, "
                        "net_transport TEXT, protocol_type TEXT, encrypt_option TEXT, "
                        "auth_scheme TEXT)")
        self.db.execute("INSERT INTO dm_exec_connections VALUES (?, 'TCP', 'TSQL', ?, 'SQL')",
                        (self.spid, "TRUE" if self.encrypted_session else "FALSE"))
        self.db.execute("PRAGMA query_only = ON")

    # -- requests -----------------------------------------------------------

    def loop(self) -> None:
        v = self.tds_version
        while True:
            ptype, payload = self.read_message()
            if ptype == tds.PKT_ATTENTION:
                # Cancel that arrived after the response was complete: still acknowledge it.
                self.reply(tds.token_done(tds.DONE_ATTN, 0, v))
            elif ptype == tds.PKT_SQL_BATCH:
                self.batch(tds.parse_sql_batch(payload, v))
            elif ptype == tds.PKT_TRANSACTION:
                self.reply(tds.token_done(tds.DONE_FINAL, 0, v))
            elif ptype == tds.PKT_RPC:
                self.reply(tds.token_message(2812, "The stand-in does not support RPC requests.", v),
                           tds.token_done(tds.DONE_ERROR, 0, v))
            else:
                raise tds.ProtocolError(f"unexpected packet type {ptype:#x}")

    def batch(self, text: str) -> None:
        assert self.planner is not None and self.session is not None
        v = self.tds_version
        log.debug("spid %d: batch %r", self.spid, text[:500])
        faults = self.faults.current()
        self.session.clock_offset = faults.clock_offset
        if faults.hang and faults.drop_after_rows is None:
            self.stall()
        delay = faults.delay + (faults.slow_reads if _reads_rows(text) else 0.0)
        if delay and self.wait_delay(delay):
            self.reply(tds.token_done(tds.DONE_ATTN, 0, v))
            return
        statements = engine.split_batch(text)
        if not statements:
            self.reply(tds.token_done(tds.DONE_FINAL, 0, v))
            return
        for index, statement in enumerate(statements):
            more = tds.DONE_MORE if index < len(statements) - 1 else 0
            try:
                control = engine.session_statement(statement, self.session)
                if control is not None:
                    if control.new_database:
                        self.out += tds.token_envchange(tds.ENV_DATABASE, control.new_database,
                                                        control.new_database)
                        self.out += tds.token_message(
                            5701, f"Changed database context to '{control.new_database}'.", v,
                            severity=0, state=1, info=True)
                    self.out += tds.token_done(more, 0, v)
                    continue
                query = self.planner.plan(statement, self.session, faults.rename_columns)
                if not self.select(query, more, faults):
                    return  # cancelled: DONE_ATTN already sent
            except TdsError as exc:
                log.info("spid %d: error %d: %s", self.spid, exc.number, exc.message)
                self.out += tds.token_message(exc.number, exc.message, v, severity=exc.severity,
                                              state=exc.state)
                self.out += tds.token_done(tds.DONE_ERROR, 0, v)
                break
        self.flush(final=True)

    def select(self, query: engine.Query, more: int, faults: Faults) -> bool:
        """Stream one result set; False if the client cancelled it (ATTENTION)."""
        assert self.db is not None and self.session is not None
        v = self.tds_version
        try:
            cursor = self.db.execute(query.sql)
        except sqlite3.Error as exc:
            raise engine.sqlite_error(exc) from exc
        try:
            try:
                rows = cursor.fetchmany(FETCH_ROWS)
            except sqlite3.Error as exc:
                raise engine.sqlite_error(exc) from exc
            columns = self._result_columns(query, cursor, rows)
            encode = row_encoder([t for _, t in columns], v)
            self.out += sqltypes.colmetadata(columns, v)
            # drop_after_rows: the fault hits once the N-th row is sent (N=0: before any
            # row); a result with fewer rows completes normally.
            limit = faults.drop_after_rows
            sent = 0
            if limit == 0:
                self._row_fault(faults, sent)
                limit = None
            while rows:
                if limit is not None and sent + len(rows) >= limit:
                    head, rows = rows[: limit - sent], rows[limit - sent :]
                    self.out += encode(head)
                    sent += len(head)
                    self._row_fault(faults, sent)
                    limit = None
                if rows:
                    try:
                        self.out += encode(rows)
                    except (struct.error, ValueError, TypeError, OverflowError) as exc:
                        raise TdsError(8115, f"Arithmetic overflow or conversion error: {exc}") from exc
                    sent += len(rows)
                if len(self.out) >= FLUSH_BYTES:
                    self.flush()
                    if self.attention_pending():
                        cursor.close()
                        self.out += tds.token_done(tds.DONE_ATTN, 0, v)
                        self.flush(final=True)
                        log.debug("spid %d: cancelled after %d rows", self.spid, sent)
                        return False
                try:
                    rows = cursor.fetchmany(FETCH_ROWS)
                except sqlite3.Error as exc:
                    raise engine.sqlite_error(exc) from exc
        finally:
            cursor.close()
        self.session.rowcount = sent
        self.out += tds.token_done(tds.DONE_COUNT | more, sent, v, curcmd=tds.CMD_SELECT)
        return True

    def _row_fault(self, faults: Faults, sent: int) -> None:
        """Deliver what is buffered, then cut the connection, or stall until 'hang' is cleared."""
        self.flush(everything=True)
        log.info("spid %d: fault after %d rows (%s)", self.spid, sent, "hang" if faults.hang else "drop")
        if not faults.hang:
            self.drop()
        self.stall()

    @staticmethod
    def _result_columns(query: engine.Query, cursor: sqlite3.Cursor,
                        rows: list[tuple[Any, ...]]) -> list[tuple[str, SqlType]]:
        names = [d[0] for d in cursor.description or ()]
        planned = query.columns if len(query.columns) == len(names) else [("", None)] * len(names)
        if len(query.columns) != len(names):
            planned = [(name, None) for name in names]
        out = []
        for i, (name, sqltype) in enumerate(planned):
            if sqltype is None:
                sqltype = sqltypes.infer_type([row[i] for row in rows])
            out.append((name, sqltype))
        return out


class Server:
    """Accepts connections and runs each in its own thread."""

    def __init__(self, config: ServerConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.faults = FaultFile(config.control)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # an IPv6 literal too
        self.listener = socket.create_server((host, port), family=family, backlog=128, reuse_port=False)
        self.host, self.port = self.listener.getsockname()[:2]
        self.tls = tls_context(config)
        self._spid = 50
        self._stopping = False

    def serve_forever(self) -> None:
        while not self._stopping:
            try:
                sock, _addr = self.listener.accept()
            except OSError:
                if self._stopping:
                    return
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self._spid = self._spid + 1 if self._spid < 32000 else 51
            conn = Connection(self.config, self.faults, sock, self._spid, self.tls)
            threading.Thread(target=conn.serve, name=f"spid-{self._spid}", daemon=True).start()

    def stop(self) -> None:
        self._stopping = True
        self.listener.close()


def run(config: ServerConfig, host: str, port: int, port_file: Path | None) -> None:
    """Start listening, announce readiness (stdout line + port file), serve until killed."""
    schema.init_db(config.db_path)
    server = Server(config, host, port)
    if port_file is not None:
        tmp = port_file.with_suffix(port_file.suffix + ".tmp")
        tmp.write_text(str(server.port))
        os.replace(tmp, port_file)
    print(f"ready {server.host}:{server.port}", flush=True)
    log.info("listening on %s:%s, database %s, data %s", server.host, server.port,
             config.database, config.db_path)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()

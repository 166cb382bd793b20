"""The TDS server: one thread per client connection, SQLite behind each.

Every connection is independent (its own socket, thread, SQLite handle and
session); whatever one client sends can only end its own connection. Faults
(refused logins, delays, dropped or stalled results) are read from a small JSON
control file that the test harness rewrites while the server runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import ssl
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import engine, schema, sqltypes, tds
from .engine import TdsError
from .faults import FaultFile, Faults, reads_rows, stall
from .login import LoggedIn, login
from .settings import ServerConfig, tls_context
from .sqltypes import SqlType
from .transport import ClientGone, Transport

log = logging.getLogger("standin.server")

FETCH_ROWS = 2000  # rows per SQLite fetchmany and per encoder call
FLUSH_BYTES = 64 * 1024  # encoded bytes buffered before writing to the socket


_encoders: dict[tuple[tuple[SqlType, ...], int], Callable[[list[tuple[Any, ...]]], bytes]] = {}


def row_encoder(types: list[SqlType], tds_version: int) -> Callable[[list[tuple[Any, ...]]], bytes]:
    """The generated encoder for rows of these types, built once per shape and version."""
    key = (tuple(types), tds_version)
    encoder = _encoders.get(key)
    if encoder is None:
        encoder = _encoders[key] = sqltypes.build_row_encoder(types, tds_version)
    return encoder


class Connection:
    """One client's session: login, then a loop of requests until the client leaves."""

    def __init__(self, config: ServerConfig, faults: FaultFile, sock: socket.socket, spid: int,
                 tls: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.faults = faults
        self.spid = spid
        self.link = Transport(sock, spid, tls)
        self.state: LoggedIn | None = None

    # -- lifecycle ------------------------------------------------------------

    def serve(self) -> None:
        """Run the session to its end; whatever happens, only this connection closes."""
        peer = "?"
        try:
            host, port = self.link.sock.getpeername()[:2]
            peer = f"{host}:{port}"
            self.state = login(self.link, self.config, self.faults)
            if self.state is not None:
                self.loop(self.state)
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
        self.link.close()
        if self.state is not None:
            with contextlib.suppress(sqlite3.Error):
                self.state.db.close()
            self.state = None

    def wait_delay(self, delay: float) -> bool:
        """Sleep for the 'delay' fault; True if the client cancelled meanwhile."""
        deadline = time.monotonic() + delay
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.link.attention_pending(min(remaining, 0.2)):
                return True

    # -- requests -----------------------------------------------------------

    def loop(self, state: LoggedIn) -> None:
        """Answer requests until the client leaves."""
        v = state.tds_version
        while True:
            ptype, payload = self.link.read_message()
            if ptype == tds.PKT_ATTENTION:
                # Cancel that arrived after the response was complete: still acknowledge it.
                self.link.reply(tds.token_done(tds.DONE_ATTN, 0, v))
            elif ptype == tds.PKT_SQL_BATCH:
                self.batch(state, tds.parse_sql_batch(payload, v))
            elif ptype == tds.PKT_TRANSACTION:
                self.link.reply(tds.token_done(tds.DONE_FINAL, 0, v))
            elif ptype == tds.PKT_RPC:
                self.link.reply(tds.token_message(2812, "The stand-in does not support RPC requests.", v),
                                tds.token_done(tds.DONE_ERROR, 0, v))
            else:
                raise tds.ProtocolError(f"unexpected packet type {ptype:#x}")

    def batch(self, state: LoggedIn, text: str) -> None:
        """Run each statement of a batch; the first error ends it, as in SQL Server."""
        v = state.tds_version
        log.debug("spid %d: batch %r", self.spid, text[:500])
        faults = self.faults.current()
        state.session.clock_offset = faults.clock_offset
        if faults.hang and faults.drop_after_rows is None:
            stall(self.link, self.faults)
        delay = faults.delay + (faults.slow_reads if reads_rows(text) else 0.0)
        if delay and self.wait_delay(delay):
            self.link.reply(tds.token_done(tds.DONE_ATTN, 0, v))
            return
        statements = engine.split_batch(text)
        if not statements:
            self.link.reply(tds.token_done(tds.DONE_FINAL, 0, v))
            return
        for index, statement in enumerate(statements):
            more = tds.DONE_MORE if index < len(statements) - 1 else 0
            try:
                control = engine.session_statement(statement, state.session)
                if control is not None:
                    if control.new_database:
                        self.link.out += tds.token_envchange(tds.ENV_DATABASE, control.new_database,
                                                             control.new_database)
                        self.link.out += tds.token_message(
                            5701, f"Changed database context to '{control.new_database}'.", v,
                            severity=0, state=1, info=True)
                    self.link.out += tds.token_done(more, 0, v)
                    continue
                query = state.planner.plan(statement, state.session, faults.rename_columns)
                if not self.select(state, query, more, faults):
                    return  # cancelled: DONE_ATTN already sent
            except TdsError as exc:
                log.info("spid %d: error %d: %s", self.spid, exc.number, exc.message)
                self.link.out += tds.token_message(exc.number, exc.message, v,
                                                   severity=exc.severity, state=exc.state)
                self.link.out += tds.token_done(tds.DONE_ERROR, 0, v)
                break
        self.link.flush(final=True)

    def select(self, state: LoggedIn, query: engine.Query, more: int, faults: Faults) -> bool:
        """Stream one result set; False if the client cancelled it (ATTENTION)."""
        v = state.tds_version
        try:
            cursor = state.db.execute(query.sql)
        except sqlite3.Error as exc:
            raise engine.sqlite_error(exc) from exc
        try:
            try:
                rows = cursor.fetchmany(FETCH_ROWS)
            except sqlite3.Error as exc:
                raise engine.sqlite_error(exc) from exc
            columns = self._result_columns(query, cursor, rows)
            encode = row_encoder([t for _, t in columns], v)
            self.link.out += sqltypes.colmetadata(columns, v)
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
                    self.link.out += encode(head)
                    sent += len(head)
                    self._row_fault(faults, sent)
                    limit = None
                if rows:
                    try:
                        self.link.out += encode(rows)
                    except (struct.error, ValueError, TypeError, OverflowError) as exc:
                        raise TdsError(8115, f"Arithmetic overflow or conversion error: {exc}") from exc
                    sent += len(rows)
                if len(self.link.out) >= FLUSH_BYTES:
                    self.link.flush()
                    if self.link.attention_pending():
                        cursor.close()
                        self.link.out += tds.token_done(tds.DONE_ATTN, 0, v)
                        self.link.flush(final=True)
                        log.debug("spid %d: cancelled after %d rows", self.spid, sent)
                        return False
                try:
                    rows = cursor.fetchmany(FETCH_ROWS)
                except sqlite3.Error as exc:
                    raise engine.sqlite_error(exc) from exc
        finally:
            cursor.close()
        state.session.rowcount = sent
        self.link.out += tds.token_done(tds.DONE_COUNT | more, sent, v, curcmd=tds.CMD_SELECT)
        return True

    def _row_fault(self, faults: Faults, sent: int) -> None:
        """Deliver what is buffered, then cut the connection, or stall until 'hang' is cleared."""
        self.link.flush(everything=True)
        log.info("spid %d: fault after %d rows (%s)", self.spid, sent, "hang" if faults.hang else "drop")
        if not faults.hang:
            self.link.drop()
        stall(self.link, self.faults)

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

"""TDS packets over one client socket, with the socket's TLS when the login negotiated it.

The session (server.Connection) speaks in whole requests and token buffers; this class
owns what lies below: framing, packet ids and sizes, TLS records, and spotting a
client's ATTENTION (cancel) while a result is still streaming.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
from collections.abc import Callable

from . import tds

MAX_REQUEST = 64 * 1024 * 1024


class ClientGone(Exception):
    """The client closed the connection (or we dropped it on purpose)."""


class Transport:
    """One client socket: requests in, reply packets out, TLS in between once it is up."""

    def __init__(self, sock: socket.socket, spid: int, tls_context: ssl.SSLContext | None) -> None:
        self.sock = sock
        self.spid = spid
        self.tls_context = tls_context
        # Once TLS is up, socket bytes go through this object (MemoryBIOs both ways).
        self.tls: ssl.SSLObject | None = None
        self.tls_in = ssl.MemoryBIO()
        self.tls_out = ssl.MemoryBIO()
        self.inbuf = bytearray()
        self.out = bytearray()  # reply tokens not sent yet
        self.packet_id = 1
        self.packet_size = 4096
        self.attention = False

    # -- input --------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> bool:
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
                self.recv()
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
            if sum(map(len, parts)) > MAX_REQUEST:
                raise tds.ProtocolError("request larger than 64 MiB")

    def attention_pending(self, timeout: float = 0.0) -> bool:
        """True once the client sent ATTENTION (cancel); reads without blocking by default."""
        if self.attention:
            return True
        self.recv(timeout)
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

    def drain_while(self, condition: Callable[[], bool]) -> None:
        """Keep reading (and buffering) the socket without answering while condition holds."""
        while condition():
            self.recv(0.2)

    # -- output -------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.write(data)
            data = self.tls_out.read()
        self.sock.sendall(data)

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
        """Send these tokens, and whatever was buffered before them, as one whole response."""
        for token in tokens:
            self.out += token
        self.flush(final=True)

    # -- TLS ------------------------------------------------------------------

    def start_tls(self) -> ssl.SSLObject:
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
        early, self.inbuf = bytes(self.inbuf), bytearray()
        if early:  # records sent right behind the handshake (TLS 1.3 clients do)
            self.inbuf += self._decrypt(early)
        return handshake

    def _send_handshake(self) -> None:
        pending = self.tls_out.read()
        if pending:
            self.sock.sendall(self._packets(pending, True, tds.PKT_PRELOGIN))
            self.packet_id = 1

    # -- ending -------------------------------------------------------------

    def drop(self) -> None:
        """Cut the connection abruptly (RST), as a crashed server or broken network would."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass
        raise ClientGone()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

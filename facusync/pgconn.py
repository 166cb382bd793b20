"""PostgreSQL: connecting with a timeout, and turning driver errors into one actionable line."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions

from facusync.config import Config, ca_bundle
from facusync.errors import SinkError
from facusync.tlsinfo import TlsSettings, TlsState, describe_failure, failure_kind, verify_failure

# PostgreSQL's SSLRequest: length 8, code 1234.5679; the server answers "S" and TLS begins.
_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")

# How long past PG_STATEMENT_TIMEOUT a daemon waits for PostgreSQL's answer (the server's own
# cancellation included) before it gives the connection up as frozen.
ANSWER_MARGIN = 5.0
WATCH_S = 0.5  # how often a connection's watcher looks at the call under way

LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired
QUERY_CANCELED = "57014"  # statement_timeout expired


def describe_pg_error(exc: Exception) -> str:
    """The likely cause in words an operator can act on; never echoes the DSN."""
    code = getattr(exc, "pgcode", None)
    if code == LOCK_NOT_AVAILABLE:
        return ("waited PG_STATEMENT_TIMEOUT for a lock another session holds (VACUUM FULL, "
                "ALTER TABLE, REINDEX, LOCK TABLE? see pg_locks); retrying")
    if code == QUERY_CANCELED:
        return ("a statement ran longer than PG_STATEMENT_TIMEOUT (the server is blocked or "
                "overloaded); retrying")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = text.lower()
    if isinstance(exc, NoAnswer):
        return text
    if "password authentication failed" in low or "no password supplied" in low:
        return ("authentication failed: check PG_USER and PG_PASSWORD (a role that does not "
                "exist yet is created by `sudo facusync migrate --admin --create-roles`)")
    if "peer authentication failed" in low:
        return ("peer authentication failed: over the local socket PostgreSQL admits only the "
                "operating-system user of the same name; use PG_HOST=localhost and a password, "
                "or `sudo facusync migrate --admin` for the superuser")
    if "does not exist" in low and "database" in low:
        return ("unknown database: check PG_DATABASE (create it, e.g. `sudo -u postgres "
                "createdb syncdb`, then run `sudo facusync migrate --admin`)")
    if "connection refused" in low:
        return "connection refused: is PostgreSQL running on PG_HOST:PG_PORT?"
    if "timeout" in low or "timed out" in low:
        return ("timed out: is PG_HOST/PG_PORT right, and is the server up and answering (not "
                "frozen, paused or swapped out, no firewall dropping packets)?")
    if "could not translate host name" in low:
        return "unknown host: check PG_HOST"
    if "the database system is starting up" in low or "shutting down" in low:
        return "the server is starting up or shutting down; retrying"
    if "pg_hba.conf" in low and "no encryption" in low:
        return ("the server accepts only encrypted connections: set PG_SSLMODE=verify-full "
                "(with PG_SSLROOTCERT) or require")
    if "requires a valid client certificate" in low:
        return "TLS: the server wants a client certificate it trusts: set PG_SSLCERT and PG_SSLKEY"
    if "private key file" in low:
        return ("PG_SSLKEY is readable by others: make it mode 0600, owned by the facusync user "
                "(or 0640 owned by root)")
    return text


def tls_settings(cfg: Config) -> TlsSettings:
    """The PostgreSQL settings named by a TLS failure."""
    return TlsSettings(mode=f"PG_SSLMODE={cfg.pg_sslmode}", ca="PG_SSLROOTCERT",
                       host=f"PG_HOST={cfg.pg_host}", server_cert="the server's ssl_cert_file",
                       server_versions="the server's ssl_min/max_protocol_version",
                       client_cert="PG_SSLCERT and PG_SSLKEY")


def describe_pg_connect_error(exc: Exception, cfg: Config) -> str:
    """describe_pg_error, plus why a TLS handshake failed (libpq alone says only
    "certificate verify failed" for an untrusted and for an expired certificate)."""
    plain = describe_pg_error(exc)
    raw = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    kind = failure_kind(raw) if plain == raw else None  # not one describe_pg_error knew
    if kind is None:
        return plain
    reason = raw.split("failed: ", 1)[-1]
    if kind == "untrusted" and cfg.pg_sslrootcert:
        reason = verify_failure(cfg.pg_host, cfg.pg_port, ca_bundle(cfg.pg_sslrootcert),
                                check_hostname=cfg.pg_sslmode == "verify-full",
                                timeout=cfg.pg_connect_timeout, preamble=_SSL_REQUEST, accept=b"S")
        kind = failure_kind(reason) or kind
    return describe_failure(kind, tls_settings(cfg), reason.removeprefix("SSL error: "))


def _tls_arguments(cfg: Config) -> dict[str, Any]:
    """libpq's TLS keywords; unset ones are left out so libpq's own defaults apply."""
    args: dict[str, Any] = {"sslmode": cfg.pg_sslmode}
    if cfg.pg_sslrootcert:
        args["sslrootcert"] = ca_bundle(cfg.pg_sslrootcert)
    if cfg.pg_sslcert:
        args["sslcert"] = cfg.pg_sslcert
        args["sslkey"] = cfg.pg_sslkey
    return args


def pg_tls_state(conn: psycopg2.extensions.connection, cfg: Config) -> TlsState:
    """What this connection negotiated, as the server sees it (pg_stat_ssl)."""
    with conn.cursor() as cur:
        cur.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        row = cur.fetchone()
    encrypted = bool(row and row[0])
    # libpq refuses the connection in verify-ca/verify-full unless the certificate checked out.
    return TlsState(encrypted=encrypted, version=row[1] if row and encrypted else None,
                    verified=encrypted and cfg.pg_sslmode in ("verify-ca", "verify-full"),
                    hostname_checked=encrypted and cfg.pg_sslmode == "verify-full")


_T = TypeVar("_T")


class NoAnswer(psycopg2.OperationalError):
    """PostgreSQL took a request and gave no answer in time: frozen, or the network drops."""


class _AnswerDeadline:
    """Gives a connection up when PostgreSQL does not answer one request within `seconds`.

    A server that is frozen (a paused VM, a host swapped out, SIGSTOP) leaves the connection
    open: its kernel still acknowledges what we send, so neither TCP keepalives nor
    TCP_USER_TIMEOUT fire, and its statement_timeout is frozen with it. A watcher thread (one
    per connection, waking every WATCH_S) shuts our end of the socket down instead; libpq then
    fails the call, which is raised as NoAnswer. A call only stamps when it is due: a timer
    thread per call cost about 100 us each, a fifth of a small batch's time.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fd = -1  # -1: not watching (closed, or not yet connected)
        self._due = 0.0  # time.monotonic() by which the call under way must return; 0: none
        self._fired = False
        self._watcher: threading.Thread | None = None

    def start(self, fd: int) -> None:
        self.fd = fd
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="pg-answer-deadline")
        self._watcher.start()

    def stop(self) -> None:
        self.fd = -1

    def call(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        if self.fd < 0:
            return function(*args, **kwargs)
        self._fired = False
        self._due = time.monotonic() + self.seconds
        try:
            return function(*args, **kwargs)
        except psycopg2.Error:
            if self._fired:
                raise NoAnswer(f"timed out: PostgreSQL did not answer within {self.seconds:g} s "
                               "(PG_STATEMENT_TIMEOUT plus a margin): is the server frozen, "
                               "swapped out or paused, or does a firewall drop the connection? "
                               "Reconnecting with backoff") from None
            raise
        finally:
            self._due = 0.0

    def _watch(self) -> None:
        while self.fd >= 0:
            due = self._due
            if due and time.monotonic() >= due:
                self._fired = True
                self._due = 0.0
                with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self.fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            time.sleep(WATCH_S)


class _DeadlineCursor(psycopg2.extensions.cursor):
    """A cursor whose requests to the server are bounded by its connection's deadline."""

    connection: _DeadlineConnection

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.connection.deadline.call(super().execute, *args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return self.connection.deadline.call(super().executemany, *args, **kwargs)

    def copy_expert(self, *args: Any, **kwargs: Any) -> Any:
        return self.connection.deadline.call(super().copy_expert, *args, **kwargs)

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        return self.connection.deadline.call(super().callproc, *args, **kwargs)

    def fetchone(self) -> Any:
        return self.connection.deadline.call(super().fetchone)

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        return self.connection.deadline.call(super().fetchmany, *args, **kwargs)

    def fetchall(self) -> Any:
        return self.connection.deadline.call(super().fetchall)


class _DeadlineConnection(psycopg2.extensions.connection):
    """A connection whose every round trip to the server has an answer deadline."""

    deadline: _AnswerDeadline

    def commit(self) -> None:
        self.deadline.call(super().commit)

    def rollback(self) -> None:
        self.deadline.call(super().rollback)

    def close(self) -> None:
        self.deadline.stop()
        super().close()


def connect_pg(cfg: Config, *, application: str = "facusync",
               bounded: bool = False) -> psycopg2.extensions.connection:
    """A connection with a connect timeout, TCP keepalives and an application_name.

    ``bounded`` (the daemons): every statement, and every wait for a lock, is cancelled after
    PG_STATEMENT_TIMEOUT, unacknowledged data after as long, and a request the server
    acknowledged but does not answer (a frozen server) ANSWER_MARGIN later, so a blocked or
    frozen PostgreSQL or a half-open connection becomes an error the loop retries, never a
    hang that starves the watchdog. The keepalives find a dead peer within ~25 s.
    """
    options = tcp_user_timeout = None  # libpq's defaults (make_dsn drops None)
    deadline = _AnswerDeadline(cfg.pg_statement_timeout + ANSWER_MARGIN)
    if bounded:
        millis = cfg.pg_statement_timeout * 1000
        options = f"-c statement_timeout={millis} -c lock_timeout={millis}"
        tcp_user_timeout = millis
    try:
        conn: psycopg2.extensions.connection = psycopg2.connect(
            host=cfg.pg_host,
            port=cfg.pg_port,
            dbname=cfg.pg_database,
            user=cfg.pg_user,
            password=cfg.pg_password.reveal(),
            connect_timeout=cfg.pg_connect_timeout,
            application_name=application,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
            **_tls_arguments(cfg),
            options=options,
            tcp_user_timeout=tcp_user_timeout,
            connection_factory=_DeadlineConnection if bounded else None,
        )
    except psycopg2.Error as exc:
        raise SinkError(describe_pg_connect_error(exc, cfg)) from None
    if isinstance(conn, _DeadlineConnection):
        conn.deadline = deadline
        conn.cursor_factory = _DeadlineCursor
        deadline.start(conn.fileno())
    return conn

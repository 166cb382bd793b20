"""PostgreSQL: connecting with a timeout, and turning driver errors into one actionable line."""

from __future__ import annotations

import psycopg2
import psycopg2.extensions

from facusync.config import Config
from facusync.errors import SinkError

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
        return "timed out: is PG_HOST/PG_PORT right and the server up?"
    if "could not translate host name" in low:
        return "unknown host: check PG_HOST"
    if "the database system is starting up" in low or "shutting down" in low:
        return "the server is starting up or shutting down; retrying"
    return text


def connect_pg(cfg: Config, *, application: str = "facusync",
               bounded: bool = False) -> psycopg2.extensions.connection:
    """A connection with a connect timeout, TCP keepalives and an application_name.

    ``bounded`` (the daemons): every statement, and every wait for a lock, is cancelled after
    PG_STATEMENT_TIMEOUT, and unacknowledged data after as long, so a blocked PostgreSQL or a
    half-open connection becomes an error the loop retries, never a hang that starves the
    watchdog. The keepalives find a dead peer while waiting for an answer within ~25 s.
    """
    options = tcp_user_timeout = None  # libpq's defaults (make_dsn drops None)
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
            options=options,
            tcp_user_timeout=tcp_user_timeout,
        )
    except psycopg2.Error as exc:
        raise SinkError(describe_pg_error(exc)) from None
    return conn

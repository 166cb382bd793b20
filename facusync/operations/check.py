"""Check: reach SQL Server, PostgreSQL and Redis once each, and say how it went.

An operation of its own so that the probes (a query each, timed, with the TLS state of the
link) live beside the other operations and `facusync check` only prints them. A failure is a
result, not an error: each probe names the likely cause or the setting to change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from facusync.config import Config
from facusync.errors import FacusyncError
from facusync.mssqlconn import connect_mssql, describe_mssql_error
from facusync.mssqltls import session_tls
from facusync.pgconn import connect_pg, describe_pg_error, pg_tls_state
from facusync.redisconn import connect_redis, describe_redis_error, redis_tls_state
from facusync.tlsinfo import TlsState

# What a probe's function returns: the server's version, and how the link is protected.
Reached = tuple[str, TlsState | None]


@dataclass
class Probe:
    """The result of reaching one server."""

    target: str
    address: str
    ok: bool
    detail: str
    rtt_ms: float | None
    tls: TlsState | None = None


def _timed(target: str, address: str, fn: Callable[[], str | Reached],
           describe: Callable[[Exception], str]) -> Probe:
    start = time.monotonic()
    try:
        result = fn()
    except FacusyncError as exc:
        cause = getattr(exc, "cause", str(exc))
        return Probe(target, address, False, cause, None)
    except Exception as exc:  # a driver error after connecting
        return Probe(target, address, False, describe(exc), None)
    version, tls = result if isinstance(result, tuple) else (result, None)
    return Probe(target, address, True, version, round((time.monotonic() - start) * 1000, 1), tls)


def probe_mssql(cfg: Config) -> Probe:
    """Log in, ask for the version: the producer's and reconcile's way in."""
    def run() -> str:
        conn = connect_mssql(cfg)
        try:
            cur = conn.cursor()
            cur.execute("SELECT @@VERSION")
            row = cur.fetchone()
            version = str(row[0]).splitlines()[0].strip() if row else "?"
            return f"{version}; {session_tls(cfg, conn).describe()}"
        finally:
            conn.close()

    return _timed("SQL Server", f"{cfg.mssql_host}:{cfg.mssql_port}/{cfg.mssql_database}", run,
                  describe_mssql_error)


def probe_pg(cfg: Config) -> Probe:
    """Log in as PG_USER, ask for the version: the consumer's way in."""
    def run() -> Reached:
        conn = connect_pg(cfg, application="facusync-check", bounded=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                row = cur.fetchone()
            return (f"PostgreSQL {row[0]}" if row else "?"), pg_tls_state(conn, cfg)
        finally:
            conn.close()

    return _timed("PostgreSQL", f"{cfg.pg_host}:{cfg.pg_port}/{cfg.pg_database}", run,
                  describe_pg_error)


def probe_redis(cfg: Config) -> Probe:
    """Authenticate, ask for the version: the queue both daemons share."""
    def run() -> Reached:
        client = connect_redis(cfg)
        try:
            info = client.info("server")
            return f"Redis {info.get('redis_version', '?')}", redis_tls_state(client)
        finally:
            client.close()

    return _timed("Redis", f"{cfg.redis_host}:{cfg.redis_port}/{cfg.redis_db}", run,
                  lambda exc: describe_redis_error(exc, cfg))


def probe_all(cfg: Config) -> list[Probe]:
    """Each server in turn, SQL Server first: the order the sync's data flows."""
    return [probe_mssql(cfg), probe_pg(cfg), probe_redis(cfg)]

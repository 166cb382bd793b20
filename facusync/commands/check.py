"""`facusync check`: can we reach SQL Server, PostgreSQL and Redis, and how fast?

Prints OK/FAIL per target with the server version, round-trip
time and how the connection is protected (encrypted? TLS version? certificate verified?), or
the likely cause, naming the setting to change. Exit 0 only when all three answer.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from facusync.config import Config
from facusync.errors import EX_OK, EX_UNAVAILABLE, FacusyncError
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
    def run() -> Reached:
        conn = connect_pg(cfg, application="facusync-check")
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
    def run() -> Reached:
        client = connect_redis(cfg)
        try:
            info = client.info("server")
            return f"Redis {info.get('redis_version', '?')}", redis_tls_state(client)
        finally:
            client.close()

    return _timed("Redis", f"{cfg.redis_host}:{cfg.redis_port}/{cfg.redis_db}", run,
                  lambda exc: describe_redis_error(exc, cfg))


def run(cfg: Config, args: argparse.Namespace) -> int:
    probes = [probe_mssql(cfg), probe_pg(cfg), probe_redis(cfg)]
    if args.json:
        print(json.dumps([asdict(p) for p in probes], ensure_ascii=False, indent=2))
    else:
        for p in probes:
            state = "OK  " if p.ok else "FAIL"
            rtt = f"{p.rtt_ms:7.1f} ms" if p.rtt_ms is not None else "        -"
            tls = f"; {p.tls.describe()}" if p.tls else ""
            print(f"{state} {p.target:<11} {p.address:<32} {rtt}  {p.detail}{tls}")
    return EX_OK if all(p.ok for p in probes) else EX_UNAVAILABLE


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("check", help="test the connections to SQL Server, PostgreSQL, Redis")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)

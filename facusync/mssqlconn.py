"""SQL Server: connecting through pymssql with login and query timeouts, and naming failures."""

from __future__ import annotations

import struct
from typing import Any

import pymssql

from facusync.config import Config
from facusync.errors import SourceError
from facusync.freetdsconf import server_name, use_freetds_conf
from facusync.mssqltls import probe_tls


def describe_mssql_error(exc: Exception) -> str:
    """Map FreeTDS/pymssql's verbose messages to a likely cause; never includes the password."""
    text = " ".join(str(a) for a in getattr(exc, "args", ())) or str(exc)
    low = text.lower()
    if "4060" in low or "cannot open database" in low:
        return "cannot open the database: check MSSQL_DATABASE and the login's permissions"
    if "18456" in low or "login failed" in low:
        return "login failed: check MSSQL_USER, MSSQL_PASSWORD and MSSQL_DATABASE"
    if "207" in low and "invalid column name" in low:
        return (text.strip().splitlines()[0][:200] + ": a column of the view was renamed or "
                "dropped; facusync looks at the view's columns again")
    if "4413" in low or "binding errors" in low:
        return ("the view cannot be read: a column it uses was renamed or dropped in its tables; "
                "ask the view's owner to fix it (ALTER VIEW, or sp_refreshview)")
    if "208" in low and "invalid object name" in low:
        return "the view does not exist or is not visible: check MSSQL_VIEW and grants"
    if "timed out" in low or "timeout" in low:
        return "timed out: is MSSQL_HOST/MSSQL_PORT right and the server answering?"
    if "connection refused" in low or "unable to connect" in low or "adaptive server is unavailable" in low:
        return "cannot connect: is SQL Server listening on MSSQL_HOST:MSSQL_PORT?"
    if ("unexpected eof" in low or "write to the server failed" in low
            or "read from the server failed" in low or "20047" in low or "dbprocess is dead" in low):
        return "the connection was dropped by the server or the network"
    if "20002" in low or "connection failed" in low:
        return ("the server hung up during the login: is MSSQL_HOST:MSSQL_PORT a SQL Server with "
                "connections to spare, and do MSSQL_ENCRYPT and MSSQL_TDS_VERSION suit it?")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:300]


def connect_mssql(cfg: Config) -> Any:
    """A pymssql connection; returns rows as tuples (the fastest form) and native types.

    MSSQL_TDS_VERSION=auto lets FreeTDS negotiate (7.4 with SQL Server 2016). Debian 12's
    pymssql 2.2.2 rejects an explicit "7.4" before connecting, with an exception outside
    pymssql.Error (newer releases accept it); then 7.3 (SQL Server 2008 and later), which
    carries every type the view uses, is used instead.
    """
    version = None if cfg.mssql_tds_version == "auto" else cfg.mssql_tds_version
    use_freetds_conf(cfg)  # MSSQL_ENCRYPT, MSSQL_CA_FILE: see facusync.freetdsconf
    try:
        return _connect(cfg, version)
    except (pymssql.Error, OSError) as exc:
        raise SourceError(_explain(cfg, exc)) from None
    except Exception as exc:
        if not (version == "7.4" and "unrecognized tds version" in str(exc).lower()):
            raise SourceError(_explain(cfg, exc)) from None
    try:
        return _connect(cfg, "7.3")
    except (pymssql.Error, OSError) as exc:
        raise SourceError(_explain(cfg, exc)) from None


# FreeTDS's words for a login that failed before the server answered it; TLS failures look so.
_GENERIC_FAILURES = ("20002", "connection failed", "20017", "unexpected eof", "20003", "timed out")


def _explain(cfg: Config, exc: Exception) -> str:
    """The likely cause; for FreeTDS's generic "connection failed", ask the TLS probe why."""
    cause = describe_mssql_error(exc)
    text = " ".join(str(a) for a in getattr(exc, "args", ())).lower() or str(exc).lower()
    if not any(word in text for word in _GENERIC_FAILURES):
        return cause
    try:
        state = probe_tls(cfg)
    except (OSError, ValueError, struct.error):
        return cause  # unreachable or not speaking TDS: the driver's cause stands
    if state.problem:
        return state.problem
    if state.tls_version == "TLSv1.3" and "2.2." in getattr(pymssql, "__version__", ""):
        return ("SQL Server negotiates TLS 1.3, which FreeTDS 1.3 (Debian 12) cannot finish inside"
                " TDS 7.x: limit the server to TLS 1.2, or set MSSQL_ENCRYPT=off")
    return cause


def _connect(cfg: Config, tds_version: str | None) -> Any:
    return pymssql.connect(
        server=server_name(cfg),  # MSSQL_HOST, or an alias for an IPv6 literal (freetdsconf)
        port=str(cfg.mssql_port),
        user=cfg.mssql_user,
        password=cfg.mssql_password.reveal(),
        database=cfg.mssql_database,
        login_timeout=cfg.mssql_login_timeout,
        timeout=cfg.mssql_query_timeout,
        appname="facusync",
        charset="UTF-8",
        tds_version=tds_version,  # None: FreeTDS negotiates
    )

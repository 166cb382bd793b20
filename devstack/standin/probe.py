"""A pymssql client probe, run as a script by any interpreter (venv or Debian's /usr/bin/python3).

It imports nothing from this repository so that ``/usr/bin/python3 -I probe.py`` exercises
Debian's python3-pymssql 2.2.2 alone. It prints one JSON object; values are tagged with
their Python type so the test can check exactly what pymssql returned.

    python probe.py --port P --user U --password-env VAR query "SELECT 1"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def tag(value: Any) -> Any:
    """JSON-safe value that keeps the Python type pymssql produced."""
    import datetime
    import decimal

    if value is None:
        return None
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, int):
        return {"t": "int", "v": value}
    if isinstance(value, float):
        return {"t": "float", "v": value}
    if isinstance(value, decimal.Decimal):
        return {"t": "Decimal", "v": str(value)}
    if isinstance(value, datetime.datetime):
        return {"t": "datetime", "v": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"t": "date", "v": value.isoformat()}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    if isinstance(value, (bytes, bytearray)):
        return {"t": "bytes", "v": bytes(value).hex()}
    return {"t": type(value).__name__, "v": repr(value)}


def error_info(exc: BaseException) -> dict[str, Any]:
    return {"error": type(exc).__name__, "module": type(exc).__module__,
            "message": str(exc)[:500], "args0": repr(exc.args[0])[:200] if exc.args else None}


def first_value(cursor: Any) -> Any:
    row = cursor.fetchone()
    return None if row is None else row[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-env", default="STANDIN_PASSWORD")
    parser.add_argument("--password", help="overrides --password-env (for wrong-password tests)")
    parser.add_argument("--database", default="g_FACU")
    parser.add_argument("--tds-version", default=None)
    parser.add_argument("--login-timeout", type=int, default=10)
    parser.add_argument("--timeout", type=int, default=30)
    parser.add_argument("check", choices=["info", "query", "stream", "cancel"])
    parser.add_argument("sql", nargs="?", default="")
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--max-rows", type=int, default=0, help="stream: stop after N rows")
    args = parser.parse_args()

    import pymssql  # the interpreter's own: PyPI's in the venv, Debian's under /usr/bin/python3

    result: dict[str, Any] = {"pymssql": getattr(pymssql, "__version__", "?"), "module": pymssql.__file__,
              "python": sys.version.split()[0]}
    password = args.password if args.password is not None else os.environ.get(args.password_env, "")
    kwargs: dict[str, Any] = {"server": args.host, "port": args.port, "user": args.user, "password": password,
              "database": args.database, "login_timeout": args.login_timeout,
              "timeout": args.timeout}
    if args.tds_version:
        kwargs["tds_version"] = args.tds_version
    started = time.monotonic()
    try:
        conn = pymssql.connect(**kwargs)
    except Exception as exc:  # the test looks at which exception it was
        result.update(error_info(exc), phase="connect", elapsed=time.monotonic() - started)
        print(json.dumps(result))
        return
    result["connected"] = True
    cursor = conn.cursor()
    rows_seen = 0
    try:
        if args.check == "info":
            cursor.execute("SELECT @@VERSION")
            result["version"] = first_value(cursor)
        elif args.check == "query":
            cursor.execute(args.sql)
            result["description"] = [[d[0], d[1]] for d in cursor.description or ()]
            result["rows"] = [[tag(v) for v in row] for row in cursor.fetchall()]
        elif args.check == "stream":
            t0 = time.monotonic()
            cursor.execute(args.sql)
            first = last = None
            ordered = True
            while True:
                rows = cursor.fetchmany(args.batch)
                if not rows:
                    break
                if first is None:
                    first = rows[0][0]
                for row in rows:
                    if last is not None and row[0] < last:
                        ordered = False
                    last = row[0]
                rows_seen += len(rows)
                result["sample"] = [tag(v) for v in rows[-1]]
                if args.max_rows and rows_seen >= args.max_rows:
                    break
            elapsed = time.monotonic() - t0
            result.update(rows=rows_seen, first=first, last=last, ordered=ordered,
                          seconds=elapsed, rows_per_s=rows_seen / elapsed if elapsed else None)
        elif args.check == "cancel":
            # Leave rows unread, then run other statements: pymssql cancels (ATTENTION).
            cursor.execute(args.sql)
            result["partial"] = len(cursor.fetchmany(10))
            cursor.execute("SELECT 42")
            result["after_cancel"] = first_value(cursor)
            cursor.execute(args.sql)
            cursor.fetchone()
            cursor2 = conn.cursor()
            cursor2.execute("SELECT COUNT(*) FROM VW_VENTAS_SYNC")
            result["count"] = first_value(cursor2)
    except Exception as exc:
        result.update(error_info(exc), phase="query", rows_before_error=rows_seen)
    result["elapsed"] = time.monotonic() - started
    try:
        conn.close()
    except Exception as exc:
        result["close_error"] = type(exc).__name__
    print(json.dumps(result))


if __name__ == "__main__":
    main()

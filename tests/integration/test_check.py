"""`facusync check` against real servers: OK, or a fast, clear failure without secrets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)


def check(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "facusync.cli", "check"], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60)
    return out, time.monotonic() - t0


def line(out: subprocess.CompletedProcess[str], target: str) -> str:
    return next(row for row in out.stdout.splitlines() if target in row)


def test_all_three_ok(pipeline_env: dict[str, str], standin: Any) -> None:
    out, _ = check(pipeline_env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert line(out, "SQL Server").startswith("OK") and "Microsoft SQL Server" in line(out, "SQL Server")
    assert line(out, "PostgreSQL").startswith("OK") and "PostgreSQL 15" in line(out, "PostgreSQL")
    assert line(out, "Redis").startswith("OK") and "Redis 7" in line(out, "Redis")
    assert " ms " in line(out, "Redis")


def test_unreachable_sql_server_fails_fast_and_clearly(env: dict[str, str]) -> None:
    out, took = check({**env, "MSSQL_PORT": "1", "MSSQL_LOGIN_TIMEOUT": "3"})
    assert out.returncode == 69
    assert line(out, "SQL Server").startswith("FAIL")
    assert "cannot connect" in line(out, "SQL Server")
    assert line(out, "PostgreSQL").startswith("OK") and line(out, "Redis").startswith("OK")
    assert took < 15


def test_wrong_passwords_are_named_not_printed(pipeline_env: dict[str, str], standin: Any) -> None:
    bad = {**pipeline_env, "MSSQL_PASSWORD": "Wrong-ms-pass-1", "PG_PASSWORD": "Wrong-pg-pass-2",
           "REDIS_PASSWORD": "Wrong-redis-pass-3"}
    out, _ = check(bad)
    assert out.returncode == 69
    assert "login failed: check MSSQL_USER, MSSQL_PASSWORD" in line(out, "SQL Server")
    assert "authentication failed: check PG_USER and PG_PASSWORD" in line(out, "PostgreSQL")
    assert "authentication failed: check REDIS_PASSWORD" in line(out, "Redis")
    text = out.stdout + out.stderr
    for secret in ("Wrong-ms-pass-1", "Wrong-pg-pass-2", "Wrong-redis-pass-3",
                   pipeline_env["PG_PASSWORD"], pipeline_env["REDIS_PASSWORD"]):
        assert secret not in text


def test_unknown_database_is_named(pipeline_env: dict[str, str], standin: Any) -> None:
    out, _ = check({**pipeline_env, "PG_DATABASE": "no_such_db", "MSSQL_DATABASE": "no_such_db"})
    assert "unknown database: check PG_DATABASE" in line(out, "PostgreSQL")
    # SQL Server answers an unknown database with 4060 and/or 18456 (login failed).
    mssql = line(out, "SQL Server")
    assert "cannot open the database" in mssql or "MSSQL_DATABASE" in mssql

"""The servers and daemons of one chaos run, private to it: nothing is shared with the pytest
session's fixtures, because this run stops and wipes them on purpose.

- PostgreSQL 15, durable (fsync and synchronous_commit on): it is stopped, sometimes in
  "immediate" mode (a crash), and a consumer acknowledges only what PostgreSQL committed.
- Redis 7 with AOF (appendfsync everysec), so it can be restarted keeping its data, or killed
  with its files deleted to lose everything.
- The SQL Server stand-in, its view table recreated with a nullable key so that a NULL key
  can be written (the wider CLIENTE is declared when the first too-long row is).
- The schema, and the two roles made by `facusync migrate --create-roles`: the daemons and the
  admin commands run as the sync role, the planners as the NocoDB role, like in production.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from devstack.servers import PostgresServer, RedisServer
from devstack.standin.harness import StandIn
from facusync.config import Config, config_from_mapping
from tests.chaos.actors import allow_null_keys
from tests.chaos.daemons import REPO_ROOT, Supervised

DATABASE = "facusync_chaos"
SYNC_ROLE = "facusync_sync"
NOCODB_ROLE = "facusync_nocodb"


@dataclass
class Settings:
    """The knobs of the pipeline under test (production defaults where the run allows)."""

    sync_interval: float = 1.0
    sync_overlap: float = 60.0
    query_timeout: int = 10  # below WatchdogSec=30, so a stalled query cannot trip the watchdog
    backoff_max: float = 5.0
    claim_idle: float = 10.0
    restart_sec: float = 5.0


@dataclass
class Stack:
    workdir: Path
    settings: Settings
    pg: PostgresServer = field(init=False)
    redis: RedisServer = field(init=False)
    standin: StandIn = field(init=False)
    producer: Supervised = field(init=False)
    consumer: Supervised = field(init=False)
    env: dict[str, str] = field(init=False)  # the daemons' EnvironmentFile (sync role)
    nocodb_dsn: str = field(init=False)

    def start_servers(self, seed_rows: int, seed: int) -> None:
        self.pg = PostgresServer(durable=True).start()
        self.redis = RedisServer().start(appendonly=True)
        self.standin = StandIn(self.workdir / "standin")
        allow_null_keys(self.standin)
        self.standin.seed(seed_rows, seed=seed)
        self.standin.start()
        admin = psycopg2.connect(self.pg.dsn())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{DATABASE}"')
        admin.close()

    def base_env(self) -> dict[str, str]:
        s = self.settings
        return {
            **self.standin.env(),
            "PG_HOST": self.pg.host, "PG_PORT": str(self.pg.port), "PG_DATABASE": DATABASE,
            "REDIS_HOST": self.redis.host, "REDIS_PORT": str(self.redis.port),
            "REDIS_PASSWORD": self.redis.password, "REDIS_PREFIX": "facusync:",
            "SYNC_INTERVAL": str(s.sync_interval), "SYNC_OVERLAP": str(s.sync_overlap),
            "MSSQL_LOGIN_TIMEOUT": "5", "MSSQL_QUERY_TIMEOUT": str(s.query_timeout),
            "BACKOFF_MAX": str(s.backoff_max), "CLAIM_IDLE": str(s.claim_idle),
            "SOURCE_TIMEZONE": local_zone(),
            "LOG_FORMAT": "text", "LOG_LEVEL": "INFO",
        }

    def migrate(self) -> None:
        """`facusync migrate --create-roles` as the superuser, passwords from the environment."""
        sync_pw, nocodb_pw = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        env = {**self.base_env(), "PG_USER": self.pg.user, "PG_PASSWORD": self.pg.password,
               "PG_SYNC_ROLE": SYNC_ROLE, "PG_SYNC_ROLE_PASSWORD": sync_pw,
               "PG_NOCODB_ROLE": NOCODB_ROLE, "PG_NOCODB_ROLE_PASSWORD": nocodb_pw}
        out = cli(env, "migrate", "--create-roles")
        if out.returncode != 0:
            raise RuntimeError(f"facusync migrate --create-roles failed ({out.returncode}):\n"
                               f"{out.stdout}{out.stderr}")
        self.env = {**self.base_env(), "PG_USER": SYNC_ROLE, "PG_PASSWORD": sync_pw}
        self.nocodb_dsn = self.pg.dsn(DATABASE, user=NOCODB_ROLE, password=nocodb_pw)

    def config(self) -> Config:
        return config_from_mapping(self.env)

    def start_daemons(self) -> None:
        s = self.settings
        self.producer = Supervised("producer", self.env, self.workdir, restart_sec=s.restart_sec)
        self.consumer = Supervised("consumer", self.env, self.workdir, restart_sec=s.restart_sec)
        self.producer.start()
        self.consumer.start()

    def admin_query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A query as the superuser (the checks read everything, including people's columns)."""
        conn = psycopg2.connect(self.pg.dsn(DATABASE), connect_timeout=5)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop everything that was started; safe after a partial start."""
        for name in ("producer", "consumer"):
            daemon = getattr(self, name, None)
            if daemon is not None:
                daemon.stop()
        for name in ("standin", "redis", "pg"):
            server = getattr(self, name, None)
            if server is None:
                continue
            try:
                server.stop() if name == "standin" else server.destroy()
            except Exception as exc:  # cleanup must go on
                print(f"chaos: stopping {name} failed: {exc}", file=sys.stderr)

    def log_tails(self, lines: int = 30) -> str:
        parts = []
        for name in ("producer", "consumer"):
            daemon = getattr(self, name, None)
            if daemon is not None:
                parts.append(f"---- last {lines} lines of facusync-{name} ({daemon.log_path})\n"
                             f"{daemon.tail(lines)}")
        nowhere = Path("/nonexistent")
        logs = (("stand-in", self.workdir / "standin" / "standin.log"),
                ("redis", getattr(getattr(self, "redis", None), "base", nowhere) / "redis.log"),
                ("postgresql", getattr(getattr(self, "pg", None), "logfile", nowhere)))
        for label, path in logs:
            try:
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines // 2:]
            except OSError:
                continue
            parts.append(f"---- last lines of the {label} log ({path})\n" + "\n".join(text))
        return "\n".join(parts)


def local_zone() -> str:
    """The zone of this process's local time, which the stand-in and the workload write:
    SOURCE_TIMEZONE must name it (the chaos run sets TZ; otherwise the host's zone)."""
    if os.environ.get("TZ"):
        return os.environ["TZ"].lstrip(":")
    try:
        return Path("/etc/timezone").read_text().strip() or "UTC"
    except OSError:
        link = os.path.realpath("/etc/localtime")
        return link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "UTC"


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The admin command as an operator runs it (a real process, the daemons' environment)."""
    return subprocess.run([sys.executable, "-m", "facusync.cli", *args],
                          env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def wait_for(predicate: Any, timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:
            pass
        time.sleep(every)
    return False

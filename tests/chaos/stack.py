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
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.stack import NOCODB_ROLE
from devstack.stack import Stack as DevStack
from devstack.standin.harness import StandIn
from facusync.config import Config, config_from_mapping
from tests.chaos.actors import allow_null_keys
from tests.chaos.daemons import REPO_ROOT, Supervised

DATABASE = "facusync_chaos"


@dataclass
class Settings:
    """The knobs of the pipeline under test (production defaults where the run allows)."""

    sync_interval: float = 1.0
    sync_overlap: float = 60.0
    # Below WatchdogSec=30, so a stalled query cannot trip the watchdog; above the source
    # lock's TTL (15 s), so a slow read that answers in time must complete (issue 16).
    query_timeout: int = 20
    backoff_max: float = 5.0
    claim_idle: float = 10.0
    restart_sec: float = 5.0


class Stack(DevStack):
    """The development stack, durable, with the daemons supervised like their units."""

    def __init__(self, workdir: Path, settings: Settings) -> None:
        s = settings
        super().__init__(workdir, durable=True, redis_aof=True, database=DATABASE, overrides={
            "SYNC_INTERVAL": str(s.sync_interval), "SYNC_OVERLAP": str(s.sync_overlap),
            "MSSQL_LOGIN_TIMEOUT": "5", "MSSQL_QUERY_TIMEOUT": str(s.query_timeout),
            "BACKOFF_MAX": str(s.backoff_max), "CLAIM_IDLE": str(s.claim_idle)})
        self.settings = settings

    def start_servers(self, seed_rows: int, seed: int) -> None:  # type: ignore[override]
        def prepare(standin: StandIn) -> None:
            allow_null_keys(standin)
            standin.seed(seed_rows, seed=seed)

        super().start_servers(prepare)

    def migrate(self) -> None:
        super().migrate()
        self.env = self.sync_env()  # the daemons' EnvironmentFile (sync role)
        self.nocodb_dsn = self.pg.dsn(DATABASE, user=NOCODB_ROLE, password=self.nocodb_password)

    def config(self) -> Config:
        return config_from_mapping(self.env)

    def start_daemons(self) -> None:
        """The daemons under an emulated systemd unit each (they replace the plain ones)."""
        restart_sec = self.settings.restart_sec
        self.producer = Supervised("producer", self.env, self.workdir, restart_sec=restart_sec)
        self.consumer = Supervised("consumer", self.env, self.workdir, restart_sec=restart_sec)
        self.producer.start()
        self.consumer.start()

    def admin_query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A query as the superuser (the checks read everything, including people's columns)."""
        with self.admin_cursor(DATABASE) as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        """Stop everything that was started; safe after a partial start."""
        for problem in self.close():
            print(f"chaos: stopping: {problem}", file=sys.stderr)


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The admin command as an operator runs it (a real process, the daemons' environment)."""
    return subprocess.run([sys.executable, "-m", "facusync.cli", *args],
                          env={**os.environ, **env}, cwd=REPO_ROOT,
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

"""One throwaway stack, started the same way by the demo, the chaos run and the NocoDB tests:
PostgreSQL 15, Redis 7 and the SQL Server stand-in on free loopback ports with passwords
(optionally every hop over TLS from a throwaway CA), a database migrated by
`facusync migrate --create-roles`, an env file like production's, and the two daemons.

Everything is assigned before it is started, so close() also undoes a start that failed half
way; it keeps the logs in `workdir` and deletes the data, the env file and the CA's key.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg2

from .processes import BIN, Daemon, child_env, exit_text, tail
from .servers import PostgresServer, RedisServer
from .standin.harness import StandIn, local_timezone
from .tlsca import TestCA

DATABASE = "syncdb"
SYNC_ROLE, NOCODB_ROLE = "facusync_sync", "facusync_nocodb"


class StackError(Exception):
    """A step of the stack's set-up failed; the message says which and quotes its output."""


class Stack:
    """The servers, the env file and the daemons of one run; close() undoes everything."""

    def __init__(self, workdir: Path, *, tls: bool = False, durable: bool = False,
                 redis_aof: bool = False, database: str = DATABASE, prefix: str = "facusync:",
                 overrides: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.tls, self.durable, self.redis_aof = tls, durable, redis_aof
        self.database, self.prefix = database, prefix
        self.overrides = dict(overrides or {})  # SYNC_INTERVAL and the like, for every process
        self.env_file = workdir / "facusync.env"
        self.ca: TestCA | None = None
        self.pg: PostgresServer | None = None
        self.redis: RedisServer | None = None
        self.standin: StandIn | None = None
        self.producer = Daemon("producer", workdir / "facusync-producer.log", env_file=self.env_file)
        self.consumer = Daemon("consumer", workdir / "facusync-consumer.log", env_file=self.env_file)
        self.sync_password = secrets.token_urlsafe(18)
        self.nocodb_password = secrets.token_urlsafe(18)

    # -- set-up ------------------------------------------------------------------------------------

    def start_servers(self, prepare: Callable[[StandIn], object] | None = None) -> None:
        """Start the three servers and create the database; `prepare` gets the stand-in
        before it starts (to seed it, or change its view)."""
        if self.tls:
            self.ca = TestCA(self.workdir / "tls", name="facusync devstack CA")
            self.pg = PostgresServer(durable=self.durable, tls=self.ca.issue("postgresql"),
                                     tls_only=True)
            self.redis = RedisServer(tls=self.ca.issue("redis"), tls_only=True)
        else:
            self.pg = PostgresServer(durable=self.durable)
            self.redis = RedisServer()
        self.pg.start()
        self.redis.start(appendonly=self.redis_aof or None)
        tls: dict[str, Any] = {}
        if self.ca is not None:  # like SQL Server with "Force Encryption": TLS or nothing
            pair = self.ca.issue("sqlserver")
            tls = {"encryption": "on", "certificate": (pair.cert, pair.key)}
        self.standin = StandIn(self.workdir / "standin", password=secrets.token_urlsafe(12), **tls)
        if prepare is not None:
            prepare(self.standin)
        self.standin.start()
        with self.admin_cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.database}"')

    def migrate(self) -> None:
        """`facusync migrate --create-roles` as the cluster's owner: the schema, the sync role
        (the daemons') and the NocoDB role (the planners')."""
        done = self.facusync("migrate", "--create-roles", env=self.superuser_env())
        if done.returncode != 0:
            raise StackError(f"facusync migrate --create-roles exited with {done.returncode}:\n"
                             f"{done.stdout}{done.stderr}")

    def write_env_file(self) -> Path:
        """The daemons' env file (the sync role), like /etc/facusync/facusync.env: mode 0600."""
        self.env_file.unlink(missing_ok=True)
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# throwaway local servers; deleted when the stack is closed\n")
            f.write("".join(f"{k}={v}\n" for k, v in self.sync_env().items()))
        return self.env_file

    def start_daemons(self) -> None:
        self.producer.start()
        self.consumer.start()

    # -- what the processes are given --------------------------------------------------------------

    def server_env(self) -> dict[str, str]:
        """facusync's variables for these servers, without a PostgreSQL login."""
        pg, redis, standin = self._servers()
        return {
            **standin.env(),
            "PG_HOST": pg.host, "PG_PORT": str(pg.port), "PG_DATABASE": self.database,
            "REDIS_HOST": redis.host, "REDIS_PORT": str(redis.tls_port or redis.port),
            "REDIS_PASSWORD": redis.password, "REDIS_PREFIX": self.prefix,
            "SOURCE_TIMEZONE": local_timezone(), "LOG_LEVEL": "INFO", "LOG_FORMAT": "text",
            **self.tls_env(), **self.overrides,
        }

    def sync_env(self) -> dict[str, str]:
        """As the daemons run: the sync role, whose password migrate set."""
        return {**self.server_env(), "PG_USER": SYNC_ROLE, "PG_PASSWORD": self.sync_password,
                **self._roles()}

    def superuser_env(self) -> dict[str, str]:
        pg = self._servers()[0]
        return {**self.server_env(), "PG_USER": pg.user, "PG_PASSWORD": pg.password,
                **self._roles()}

    def tls_env(self) -> dict[str, str]:
        """With tls: every hop verified against the stack's CA, as production would be."""
        if self.ca is None:
            return {}
        ca = str(self.ca.ca.cert)
        return {"MSSQL_ENCRYPT": "require", "MSSQL_CA_FILE": ca, "PG_SSLMODE": "verify-full",
                "PG_SSLROOTCERT": ca, "REDIS_TLS": "on", "REDIS_CA_FILE": ca}

    def _roles(self) -> dict[str, str]:
        return {"PG_SYNC_ROLE": SYNC_ROLE, "PG_SYNC_ROLE_PASSWORD": self.sync_password,
                "PG_NOCODB_ROLE": NOCODB_ROLE, "PG_NOCODB_ROLE_PASSWORD": self.nocodb_password}

    def _servers(self) -> tuple[PostgresServer, RedisServer, StandIn]:
        if self.pg is None or self.redis is None or self.standin is None:
            raise StackError("the servers are not started: call start_servers() first")
        return self.pg, self.redis, self.standin

    # -- using it ------------------------------------------------------------------------------------

    def facusync(self, *args: str, env: Mapping[str, str] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The admin command as an operator runs it: the env file, or `env` if given."""
        command = [str(BIN / "facusync"), *args]
        if env is None:
            command[1:1] = ["--env-file", str(self.env_file)]
        return subprocess.run(command, env=child_env(**(env or {})), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    @contextlib.contextmanager
    def admin_cursor(self, database: str = "postgres") -> Iterator[Any]:
        """A cursor as the superuser (autocommit), for set-up and for reading everything."""
        pg = self.pg
        if pg is None:
            raise StackError("PostgreSQL is not started")
        conn = psycopg2.connect(pg.dsn(database), connect_timeout=10)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def ports(self) -> dict[str, int]:
        pg, redis, standin = self._servers()
        return {"postgresql": pg.port, "redis": redis.tls_port or redis.port,
                "sqlserver": standin.port}

    def log_tails(self, lines: int = 30) -> str:
        """The end of every log, for a failure's message."""
        parts = [f"---- facusync-{d.name} ({d.log_path})\n{tail(d.log_path, lines, indent='')}"
                 for d in (self.producer, self.consumer) if d.log_path.exists()]
        for label, path in self._server_logs():
            parts.append(f"---- {label} ({path})\n{tail(path, lines // 2, indent='')}")
        return "\n".join(parts)

    def _server_logs(self) -> list[tuple[str, Path]]:
        logs = [("stand-in", self.workdir / "standin" / "standin.log")]
        if self.redis is not None:
            logs.append(("redis", self.redis.base / "redis.log"))
        if self.pg is not None:
            logs.append(("postgresql", self.pg.logfile))
        return logs

    # -- tear-down -----------------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Stop everything, in the order production would; returns what went wrong."""
        problems: list[str] = []

        def attempt(what: str, step: Callable[[], object]) -> None:
            try:
                step()
            except Exception as exc:  # tear the rest down all the same
                problems.append(f"{what}: {type(exc).__name__}: {exc}")

        for daemon in (self.producer, self.consumer):
            code: int | None = None
            try:
                code = daemon.stop()
            except Exception as exc:
                problems.append(f"facusync-{daemon.name}: {exc}")
            if code not in (None, 0):
                problems.append(f"facusync-{daemon.name} {exit_text(code)}; see {daemon.log_path}")
        if self.standin is not None:
            attempt("SQL Server stand-in", self.standin.stop)
        for label, path in self._server_logs()[1:]:
            with contextlib.suppress(OSError):
                shutil.copyfile(path, self.workdir / f"{label}.log")  # kept for a post-mortem
        for server in (self.redis, self.pg):
            if server is not None:
                attempt(type(server).__name__, server.destroy)
        # Keep the logs; drop the data and the files with (throwaway) secrets.
        self.env_file.unlink(missing_ok=True)
        for data in (self.workdir / "standin").glob("standin.sqlite3*"):
            data.unlink(missing_ok=True)
        shutil.rmtree(self.workdir / "tls", ignore_errors=True)  # the throwaway CA's private key
        return problems

"""What the benchmark sections share: env files, fresh databases, the daemons as processes,
and the /proc readings (CPU time, peak RSS) every number is taken from.

Everything runs on private servers started by bench/run.py; nothing here talks to a server
it did not start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import psycopg2

from devstack.processes import DaemonExited
from devstack.servers import PostgresServer, RedisServer
from devstack.standin.harness import local_timezone
from devstack.tlsca import TestCA
from facusync.config import Config, config_from_mapping
from facusync.migrate import apply_migrations
from facusync.pgconn import connect_pg

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A benchmark step failed; the message says which and where its logs are."""


class PrivateServers:
    """The run's PostgreSQL 15 (durable) and Redis 7, with tls from a throwaway CA, and its work
    folder: deleted after a run that succeeded, kept (and said where) after one that failed."""

    def __init__(self, prefix: str, *, tls: bool = False) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self.workdir.chmod(0o755)
        self.ca = TestCA(self.workdir / "ca") if tls else None
        self.pg = PostgresServer(durable=True, tls=self.ca.issue("postgresql") if self.ca else None)
        self.rds = RedisServer(tls=self.ca.issue("redis") if self.ca else None)

    def run(self, measure: Callable[[], None]) -> int:
        """Start the servers, measure, tear down; the exit status (1: a step failed)."""
        code = 0
        try:
            self.pg.start()
            self.rds.start()
            measure()
        except (BenchError, DaemonExited) as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            code = 1
        finally:
            self.pg.destroy()
            self.rds.destroy()
            if code == 0:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                print(f"logs kept in {self.workdir}", file=sys.stderr)
        return code


def write_results(results: dict[str, Any], out: str | None) -> None:
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {out}")


# -- statistics -------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    data = list(values)
    return float(statistics.median(data)) if data else float("nan")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported value was observed)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def default_settings() -> dict[str, int]:
    """The shipped defaults (config.py), so the benchmark follows them when they change."""
    cfg = config_from_mapping({"MSSQL_HOST": "x", "MSSQL_USER": "x", "MSSQL_PASSWORD": "x",
                               "PG_HOST": "x", "PG_USER": "x", "PG_PASSWORD": "x"})
    return {"BATCH_SIZE": cfg.batch_size, "CHUNK_SIZE": cfg.chunk_size,
            "FETCH_SIZE": cfg.fetch_size, "QUEUE_MAX_PENDING": cfg.queue_max_pending,
            "SYNC_OVERLAP": int(cfg.sync_overlap), "SYNC_INTERVAL": int(cfg.sync_interval)}


# -- configuration and databases ----------------------------------------------------------------




def env_values(pg: PostgresServer, rds: RedisServer, database: str, prefix: str,
               mssql: Mapping[str, str] | None = None, **overrides: str) -> dict[str, str]:
    """Variables for facusync against the benchmark's servers (superuser, like the tests)."""
    values = {
        "MSSQL_HOST": "127.0.0.1", "MSSQL_USER": "unused", "MSSQL_PASSWORD": "unused",
        **(mssql or {}),
        "PG_HOST": pg.host, "PG_PORT": str(pg.port), "PG_DATABASE": database,
        "PG_USER": pg.user, "PG_PASSWORD": pg.password,
        "REDIS_HOST": rds.host, "REDIS_PORT": str(rds.port), "REDIS_PASSWORD": rds.password,
        "REDIS_PREFIX": prefix, "SOURCE_TIMEZONE": local_timezone(),
        "LOG_LEVEL": "WARNING", "LOG_FORMAT": "text",
    }
    values.update(overrides)
    return values


def write_env_file(path: Path, values: Mapping[str, str]) -> Path:
    """An env file like /etc/facusync/facusync.env (mode 0600: it holds passwords)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def create_database(pg: PostgresServer, name: str, values: Mapping[str, str]) -> Config:
    """A fresh, migrated database; returns the Config for it."""
    admin = psycopg2.connect(pg.dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    cfg = config_from_mapping(values)
    conn = connect_pg(cfg)
    list(apply_migrations(conn, cfg))
    conn.close()
    return cfg


def reset_tables(cfg: Config) -> None:
    """Empty datos_vista, datos_seguimiento and the durable watermark (a first run again)."""
    conn = connect_pg(cfg)
    with conn.cursor() as cur:
        cur.execute(f'TRUNCATE "{cfg.pg_table_seguimiento}", "{cfg.pg_table_vista}"')
        cur.execute("UPDATE sync_control SET watermark = NULL, newest_version = NULL")
    conn.commit()
    conn.close()


def checkpoint(pg: PostgresServer) -> None:
    """Flush dirty buffers between measurements, so one run does not pay for the previous."""
    conn = psycopg2.connect(pg.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CHECKPOINT")
    conn.close()


# -- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (stat fields 14, 15)


def memory_kb(pid: int, name: str = "VmHWM") -> int:
    """VmHWM (peak RSS) or VmRSS of a process, in kB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def system_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = parts[3] + parts[4]  # idle + iowait
    return (sum(parts) - idle) / CLK_TCK, sum(parts) / CLK_TCK


def children_of(ppid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == ppid:
            found.append(int(entry.name))
    return found


def postgres_pids(pg: PostgresServer) -> list[int]:
    """The postmaster and all its children (backends, WAL writer, checkpointer)."""
    try:
        master = int((pg.datadir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return []
    return [master, *children_of(master)]


class CpuMeter:
    """CPU% of named process groups and of the machine between start() and stop().

    Processes that appear later (a new backend) count from zero; CPU% is of one core, so
    two busy cores read 200%.
    """

    def __init__(self, groups: Mapping[str, Any]) -> None:
        self.groups = groups  # name -> callable returning the group's current pids
        self.before: dict[str, dict[int, float]] = {}
        self.t0 = 0.0
        self.sys0 = (0.0, 0.0)

    def start(self) -> CpuMeter:
        self.before = {name: {pid: cpu_seconds(pid) for pid in pids()}
                       for name, pids in self.groups.items()}
        self.t0 = time.monotonic()
        self.sys0 = system_busy()
        return self

    def stop(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        out: dict[str, float] = {}
        for name, pids in self.groups.items():
            used = 0.0
            for pid in pids():
                used += cpu_seconds(pid) - self.before[name].get(pid, 0.0)
            out[name] = round(100 * used / elapsed, 2)
        busy, total = system_busy()
        out["machine_busy_pct_of_2_cores" if os.cpu_count() == 2 else "machine_busy_pct"] = round(
            100 * (busy - self.sys0[0]) / max(total - self.sys0[1], 1e-6), 1)
        return out


def consumer_key(prefix: str, pid: int) -> str:
    """The stats hash a consumer daemon with this pid writes (its name is host-pid)."""
    return f"{prefix}stats:consumer:{socket.gethostname()}-{pid}"

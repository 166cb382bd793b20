"""Sections 2-4: the real daemons end to end against the SQL Server stand-in.

2. Backfill: the view seeded with N rows, an empty PostgreSQL and Redis, then
   facusync-producer and facusync-consumer started as processes (as systemd would, with an
   env file). Timed from starting them to the consumer's last commit of row N (its stats
   hash in Redis says when). Peak RSS is VmHWM from /proc/<pid>/status. Each repetition is
   preceded by the raw read: the producer's own query read with pymssql fetchmany alone.
3. Idle: once the backfill is applied and a later cycle found nothing new, the CPU time of
   each daemon (utime + stime from /proc/<pid>/stat) over a window, at the default
   SYNC_INTERVAL and at SYNC_INTERVAL=1.
4. Latency: with SYNC_INTERVAL=1, the stand-in's workload commits changes at a fixed rate,
   recording each commit time; a poller reads PostgreSQL every POLL_S for the keys still
   awaited and takes the first time the row shows that version or a newer one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from devstack.processes import Daemon
from devstack.servers import PostgresServer, RedisServer
from devstack.standin.harness import StandIn
from facusync.config import Config, load_config
from facusync.pgconn import connect_pg
from facusync.redisconn import Keys, connect_redis
from facusync.source import ViewSource, map_columns

from .common import (
    BenchError,
    CpuMeter,
    checkpoint,
    consumer_key,
    cpu_seconds,
    create_database,
    env_values,
    median,
    memory_kb,
    percentile,
    postgres_pids,
    reset_tables,
    write_env_file,
)

DATABASE = "bench_pipe"
PREFIX = "bp:"
STALL_S = 60.0
POLL_S = 0.025  # latency resolution: how often the poller asks PostgreSQL
VERSION_SLACK = timedelta(milliseconds=2)  # datetime ticks are 3.33 ms apart
TABLE_COLUMNS = ("conduce", "fecha_emision", "facturado", "numero_factura", "codigo_cliente",
                 "cliente", "ultima_modificacion")


def raw_read(cfg: Config) -> dict[str, float]:
    """The producer's backfill query (ViewSource.read_since), fetchmany only: rows/s."""
    source = ViewSource(cfg)
    try:
        cols = map_columns(source.view_columns(), TABLE_COLUMNS, cfg.mssql_key_column,
                           cfg.mssql_version_column)
        cpu0, started = time.process_time(), time.perf_counter()
        count = sum(len(rows) for rows in source.read_since(cols, None))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    finally:
        source.close()
    return {"rows": count, "rows_per_s": round(count / elapsed), "seconds": round(elapsed, 2),
            "client_cpu_pct": round(100 * cpu / elapsed, 1)}


class Pipeline:
    """The stand-in, a database, the two daemons and their env file."""

    def __init__(self, pg: PostgresServer, rds: RedisServer, workdir: Path,
                 overrides: Mapping[str, str], log: Callable[[str], None]) -> None:
        self.pg, self.rds, self.workdir, self.log = pg, rds, workdir, log
        self.standin = StandIn(workdir / "standin", log_level="WARNING")
        self.overrides = dict(overrides)
        self.env_file = workdir / "pipe.env"
        self.cfg: Config | None = None
        self.client: redis.Redis | None = None
        self.keys = Keys(PREFIX)
        self.producer = Daemon("producer", workdir / "producer.log", env_file=self.env_file)
        self.consumer = Daemon("consumer", workdir / "consumer.log", env_file=self.env_file)

    def setup(self, rows: int) -> float:
        """Seed the view and create the database; returns the seed time."""
        started = time.perf_counter()
        self.standin.seed(rows, seed=20261128)
        seeded = time.perf_counter() - started
        self.standin.start()
        values = env_values(self.pg, self.rds, DATABASE, PREFIX, mssql=self.standin.env(),
                            LOG_LEVEL="INFO", LOG_FORMAT="json", **self.overrides)
        self.cfg = create_database(self.pg, DATABASE, values)
        self.configure()
        self.client = connect_redis(self.cfg)
        return seeded

    def configure(self, **extra: str) -> None:
        values = env_values(self.pg, self.rds, DATABASE, PREFIX, mssql=self.standin.env(),
                            LOG_LEVEL="INFO", LOG_FORMAT="json", **{**self.overrides, **extra})
        self.cfg = load_config(write_env_file(self.env_file, values), environ={})

    def close(self) -> None:
        for daemon in (self.producer, self.consumer):
            daemon.stop()
        if self.client is not None:
            self.client.close()
        self.standin.stop()
        self.env_file.unlink(missing_ok=True)

    def check(self) -> None:
        self.producer.check()
        self.consumer.check()

    def meter(self) -> CpuMeter:
        def one(d: Daemon) -> Callable[[], list[int]]:
            return lambda: [d.pid] if d.running else []
        standin = self.standin.process
        return CpuMeter({
            "producer": one(self.producer), "consumer": one(self.consumer),
            "standin": lambda: [standin.pid] if standin is not None else [],
            "redis": lambda: [self.rds.proc.pid] if self.rds.proc is not None else [],
            "postgres": lambda: postgres_pids(self.pg),
        })

    def consumer_stats(self) -> dict[str, str]:
        assert self.client is not None
        raw = self.client.hgetall(consumer_key(PREFIX, self.consumer.pid))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def producer_stats(self) -> dict[str, str]:
        assert self.client is not None
        raw = self.client.hgetall(self.keys.producer_stats)
        return {k.decode(): v.decode() for k, v in raw.items()}

    # -- 2. backfill ----------------------------------------------------------------------------

    def backfill(self, rows: int, *, keep_running: bool) -> dict[str, Any]:
        assert self.cfg is not None and self.client is not None
        raw = raw_read(self.cfg)
        if raw["rows"] != rows:
            raise BenchError(f"raw read returned {raw['rows']} rows, expected {rows}")
        reset_tables(self.cfg)
        self.client.flushdb()
        checkpoint(self.pg)
        meter = self.meter()
        started = time.time()
        self.consumer.start()
        self.producer.start()
        meter.start()
        best, best_at = -1, time.monotonic()
        rss_peak = {"producer": 0, "consumer": 0}
        while True:
            self.check()
            stats = self.consumer_stats()
            done = int(stats.get("total_inserted", 0))
            for name, d in (("producer", self.producer), ("consumer", self.consumer)):
                rss_peak[name] = max(rss_peak[name], memory_kb(d.pid, "VmRSS"))
            if done >= rows:
                finished = float(stats["last_batch_at"])
                break
            if done > best:
                best, best_at = done, time.monotonic()
            if time.monotonic() - best_at > STALL_S:
                raise BenchError(f"backfill stalled at {done}/{rows} rows; logs in {self.workdir}")
            time.sleep(0.2)
        cpu = meter.stop()
        hwm = {"producer_kb": memory_kb(self.producer.pid), "consumer_kb": memory_kb(self.consumer.pid)}
        conn = connect_pg(self.cfg)
        with conn.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM "{self.cfg.pg_table_vista}"')
            in_pg = int(cur.fetchone()[0])  # type: ignore[index]
        conn.close()
        if in_pg != rows:
            raise BenchError(f"backfill left {in_pg} rows in PostgreSQL, expected {rows}")
        if not keep_running:
            self.producer.stop()
            self.consumer.stop()
        elapsed = finished - started
        return {"raw_read": raw, "seconds": round(elapsed, 2), "rows_per_s": round(rows / elapsed),
                "pct_of_raw_read": round(100 * rows / elapsed / raw["rows_per_s"], 1),
                "peak_rss_kb": hwm, "sampled_rss_kb": rss_peak, "cpu_pct": cpu}

    # -- 3. idle --------------------------------------------------------------------------------

    def wait_quiet(self, since: float, timeout: float = 120.0) -> None:
        """Until the stream is empty and a producer cycle that started after `since` ended."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            cycle = float(self.producer_stats().get("last_cycle_at") or 0)
            if cycle > since and int(self.client.xlen(self.keys.stream)) == 0:
                return
            time.sleep(0.2)
        raise BenchError(f"the pipeline did not go quiet in {timeout:.0f} s; logs in {self.workdir}")

    def idle(self, seconds: float) -> dict[str, Any]:
        self.wait_quiet(time.time())
        time.sleep(1.0)
        window = self.producer_stats()
        meter = self.meter().start()
        time.sleep(seconds)
        cpu = meter.stop()
        cpu["seconds"] = seconds
        cpu["rows_reread_per_cycle"] = int(window.get("last_read") or 0)
        return cpu

    def restart(self, **extra: str) -> float:
        self.producer.stop()
        self.consumer.stop()
        self.configure(**extra)
        started = time.time()
        self.consumer.start()
        self.producer.start()
        return started

    # -- 4. latency -----------------------------------------------------------------------------

    def latency(self, seconds: float, rate: float) -> dict[str, Any]:
        assert self.cfg is not None and self.client is not None
        self.wait_quiet(time.time())
        workload = self.standin.workload(rate=rate, seed=5)
        poller = Poller(self.cfg, workload, self)
        workload.start(seconds)
        poller.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check()
            time.sleep(0.5)
        counts = workload.stop()
        poller.finish(timeout=30.0)
        lat = poller.latencies
        batches = [line.decode().split(",") for line in self.client.lrange(self.keys.batch_latencies, 0, -1)]
        window = [(float(ms), int(size)) for at, ms, size in batches if float(at) >= poller.started]
        cycles = list(poller.cycles.values())
        return {
            "rate": rate, "seconds": seconds, "changes": counts.get("total", 0),
            "measured": len(lat), "not_measurable": poller.skipped,
            "never_seen": sum(len(v) for v in poller.outstanding.values()),
            "p50_s": round(percentile(lat, 50), 3), "p95_s": round(percentile(lat, 95), 3),
            "p99_s": round(percentile(lat, 99), 3), "max_s": round(max(lat, default=float("nan")), 3),
            "poll_interval_s": POLL_S,
            "producer_cycle_ms_p50": round(median(c[0] for c in cycles), 1),
            "producer_cycle_ms_max": round(max((c[0] for c in cycles), default=float("nan")), 1),
            "producer_rows_read_per_cycle_p50": median(c[1] for c in cycles),
            "consumer_batch_ms_p50": round(median(ms for ms, _ in window), 1),
            "consumer_batch_ms_max": round(max((ms for ms, _ in window), default=float("nan")), 1),
            "consumer_batch_rows_p50": median(size for _, size in window),
        }


class Poller(threading.Thread):
    """Asks PostgreSQL, every POLL_S, for the keys whose committed change is not visible yet.

    A change is visible once the row holds its version or a newer one (a newer one means it
    was superseded, which also ends its wait). The time taken is when that query returned:
    latencies are rounded up by at most one poll. Deletes and updates that do not bump
    ULTIMA_MODIFICACION are invisible to polling by design (reconcile finds them): skipped.
    """

    def __init__(self, cfg: Config, workload: Any, pipeline: Pipeline) -> None:
        super().__init__(name="bench-latency-poller", daemon=True)
        self.cfg, self.workload, self.pipeline = cfg, workload, pipeline
        self.outstanding: dict[str, list[tuple[datetime, float]]] = {}
        self.latencies: list[float] = []
        self.cycles: dict[str, tuple[float, float]] = {}  # producer last_cycle_at -> (ms, read)
        self.skipped = 0
        self.seen = 0
        self.halt = threading.Event()
        self.started = time.time()
        self.error: BaseException | None = None

    def finish(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.is_alive():
            if self.seen == len(self.workload.events) and not self.outstanding:
                break
            time.sleep(0.1)
        self.halt.set()
        self.join(timeout=5)
        if self.error is not None:
            raise BenchError(f"latency poller failed: {self.error}")

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def _loop(self) -> None:
        conn = connect_pg(self.cfg)
        conn.autocommit = True
        cur = conn.cursor()
        table = self.cfg.pg_table_vista
        next_stats = 0.0
        while not self.halt.is_set():
            events = self.workload.events
            for event in events[self.seen:]:
                if event.version is None:
                    self.skipped += 1
                else:
                    self.outstanding.setdefault(event.conduce, []).append(
                        (datetime.fromisoformat(event.version), event.committed_at))
            self.seen = len(events)
            if self.outstanding:
                cur.execute(f'SELECT conduce, ultima_modificacion AT TIME ZONE %s FROM "{table}"'
                            " WHERE conduce = ANY(%s)",
                            (self.cfg.source_timezone, list(self.outstanding)))
                now = time.time()
                for key, version in cur.fetchall():
                    waiting = self.outstanding[key]
                    still = [(v, at) for v, at in waiting if version < v - VERSION_SLACK]
                    self.latencies.extend(now - at for v, at in waiting
                                          if version >= v - VERSION_SLACK)
                    if still:
                        self.outstanding[key] = still
                    else:
                        del self.outstanding[key]
            if time.monotonic() >= next_stats:
                stats = self.pipeline.producer_stats()
                if stats.get("last_cycle_at") and stats.get("last_duration_ms"):
                    self.cycles[stats["last_cycle_at"]] = (float(stats["last_duration_ms"]),
                                                          float(stats.get("last_read") or 0))
                next_stats = time.monotonic() + 0.2
            self.halt.wait(POLL_S)
        conn.close()


def run(pg: PostgresServer, rds: RedisServer, workdir: Path, *, rows: int, reps: int,
        idle_seconds: float, latency_seconds: float, latency_rate: float,
        overrides: Mapping[str, str], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Backfill `reps` times, then idle (default interval, then 1 s) and latency."""
    pipe = Pipeline(pg, rds, workdir, overrides, log)
    out: dict[str, Any] = {"rows": rows, "reps": reps, "settings": dict(overrides)}
    try:
        out["seed_seconds"] = round(pipe.setup(rows), 1)
        out["backfill"] = []
        for rep in range(reps):
            out["backfill"].append(pipe.backfill(rows, keep_running=rep == reps - 1))
            b = out["backfill"][-1]
            log(f"    backfill {rep + 1}/{reps}: {b['rows_per_s']:,} rows/s in {b['seconds']} s "
                f"(raw read {b['raw_read']['rows_per_s']:,} rows/s)")
        interval = pipe.cfg.sync_interval if pipe.cfg else 10.0
        out["idle"] = {f"sync_interval_{interval:g}": pipe.idle(idle_seconds)}
        log(f"    idle at SYNC_INTERVAL={interval:g} measured")
        pipe.restart(SYNC_INTERVAL="1")
        out["idle"]["sync_interval_1"] = pipe.idle(idle_seconds)
        log("    idle at SYNC_INTERVAL=1 measured")
        out["latency"] = pipe.latency(latency_seconds, latency_rate)
        log("    latency measured")
        # Issue 16: a PC a day ahead and a 9999-12-31 sentinel must not slow real changes.
        pipe.standin.insert_late({"CONDUCE": "BENCH-FUTURE-DAY"}, datetime.now() + timedelta(days=1))
        pipe.standin.insert_late({"CONDUCE": "BENCH-FUTURE-MAX"}, datetime(9999, 12, 31, 23, 59, 59))
        out["latency_future_rows"] = pipe.latency(latency_seconds, latency_rate)
        log("    latency with two rows dated in the future measured")
        out["daemon_cpu_seconds_total"] = {
            "producer": cpu_seconds(pipe.producer.pid), "consumer": cpu_seconds(pipe.consumer.pid)}
    finally:
        pipe.close()
    return out

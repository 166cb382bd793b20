"""Prometheus metrics of the two daemons, served on an HTTP port that is off unless configured.

Why a port per daemon and not node_exporter's textfile collector: Prometheus then sees each
daemon itself, so a dead or hung daemon is its `up == 0` the moment a scrape fails, instead of a
file that silently stops changing; the numbers are read at scrape time, not whenever a file was
last written; and nothing but Debian's python3-prometheus-client is needed (no node_exporter,
no directory writable by the sandboxed service user). The port listens on METRICS_ADDRESS
(127.0.0.1 by default): the metrics hold no secret, but they are nobody else's business.

The daemons call the module-level functions below (a few lines each); they do nothing until
`start` found a port for the daemon, so an installation without METRICS_* pays nothing.
Counters and histograms describe this process since it started (Prometheus' rate() copes with
restarts). The queue and the last reconcile run belong to no daemon: the producer reads them
from Redis at scrape time (`StreamCollector`), so they are as fresh as the scrape.

Label values come from fixed sets (server, kind, outcome, result, daemon), never from data.
"""

from __future__ import annotations

import logging
import platform
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    MetricsHandler,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from facusync import __version__
from facusync.config import Config
from facusync.errors import EX_UNAVAILABLE, FacusyncError
from facusync.redisconn import GROUP, Keys, connect_redis

if TYPE_CHECKING:
    from facusync.producer import CycleStats
    from facusync.sink import WriteResult

log = logging.getLogger("facusync.metrics")

SERVERS = {"SQL Server": "sqlserver", "PostgreSQL": "postgresql", "Redis": "redis"}
DAEMON_SERVERS = {"producer": ("sqlserver", "redis", "postgresql"),
                  "consumer": ("redis", "postgresql")}
# The first words of the causes facusync's describe_*_error functions write, by kind.
ERROR_KINDS = (
    ("authentication", ("authentication failed", "login failed")),
    ("connect", ("connection refused", "cannot connect", "unknown host", "unknown database",
                 "cannot open the database", "starting up or shutting down")),
    ("timeout", ("timed out",)),
    ("dropped", ("connection was dropped", "connection reset", "closed")),
    ("out_of_memory", ("out of memory",)),
    ("schema", ("does not exist", "not visible", "permission denied")),
)
KINDS = (*(kind for kind, _ in ERROR_KINDS), "other")
CYCLE_OUTCOMES = ("complete", "partial", "paused", "skipped")
ROW_RESULTS = ("inserted", "updated", "unchanged", "deleted", "dead_lettered", "ignored")
RECONCILE_COUNTS = ("source_rows", "pg_active_rows", "upserts", "undeletes", "tombstones",
                    "delete_candidates", "fingerprints_restored", "left_in_dead_letters")
CYCLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
# A scrape reads Redis within this (each of a connect and two replies, and the wait for an
# overlapping scrape): a hung Redis then costs a scrape about 8 s, inside Prometheus' default
# 10 s scrape timeout, so the producer stays `up` and only the queue series go missing.
SCRAPE_REDIS_TIMEOUT = 2.0
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class MetricsError(FacusyncError):
    """The metrics port cannot be opened (taken, or not an address of this host)."""

    exit_code = EX_UNAVAILABLE


def error_kind(cause: str) -> str:
    """A bounded label for an operator-facing cause ("connection refused: ..." -> connect)."""
    low = cause.lower()
    for kind, words in ERROR_KINDS:
        if any(w in low for w in words):
            return kind
    return "other"


def source_timestamp(value: datetime | None, cfg: Config) -> float | None:
    """Unix seconds of a source version (naive local wall time in SOURCE_TIMEZONE)."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=cfg.tz)).timestamp()


class Metrics:
    """The instruments of one daemon, in a registry of its own."""

    def __init__(self, cfg: Config, daemon: str) -> None:
        self.cfg = cfg
        self.daemon = daemon
        self.registry = CollectorRegistry()
        reg = self.registry
        ProcessCollector(registry=reg)
        Gauge("facusync_build_info", "Always 1; the labels say which facusync runs.",
              ["daemon", "version", "python"], registry=reg).labels(
            daemon, __version__, platform.python_version()).set(1)
        self.ready = Gauge("facusync_ready", "1 once the daemon is connected and working "
                           "(systemd READY=1), 0 while starting and once stopping.",
                           ["daemon"], registry=reg).labels(daemon)
        self.backing_off = Gauge("facusync_backing_off", "1 while a server fails and the "
                                 "daemon retries it with backoff.", ["daemon"],
                                 registry=reg).labels(daemon)
        self.errors = Counter("facusync_server_errors", "Failed attempts to use a server, "
                              "by server and kind of failure.", ["server", "kind"], registry=reg)
        for server in DAEMON_SERVERS[daemon]:
            for kind in KINDS:
                self.errors.labels(server, kind)
        if daemon == "producer":
            self._producer(reg)
        else:
            self._consumer(reg)

    def _producer(self, reg: CollectorRegistry) -> None:
        Gauge("facusync_sync_interval_seconds", "SYNC_INTERVAL: seconds between two polls.",
              registry=reg).set(self.cfg.sync_interval)
        Gauge("facusync_lag_warn_seconds", "LAG_WARN: the queue age above which the sync is late.",
              registry=reg).set(self.cfg.lag_warn)
        Gauge("facusync_reconcile_interval_seconds", "RECONCILE_INTERVAL: how often the "
              "reconcile timer is expected to run.", registry=reg).set(self.cfg.reconcile_interval)
        self.read = Counter("facusync_producer_rows_read", "Rows read from the view.", registry=reg)
        self.queued = Counter("facusync_producer_rows_queued", "Changed rows appended to the "
                              "stream.", registry=reg)
        self.unchanged = Counter("facusync_producer_rows_unchanged", "Rows read again and "
                                 "dropped because their fingerprint had not changed.", registry=reg)
        self.cycles = _counter(reg, "facusync_producer_cycles", "Polling cycles by outcome: "
                               "complete, partial (stopped), paused (backpressure), skipped "
                               "(reconcile held the source lock).", "outcome", CYCLE_OUTCOMES)
        self.cycle_seconds = Histogram("facusync_producer_cycle_duration_seconds", "Duration "
                                       "of a polling cycle (read, encode, append).",
                                       buckets=CYCLE_BUCKETS, registry=reg)
        self.last_cycle = Gauge("facusync_producer_last_success_timestamp_seconds", "When the "
                                "last complete cycle started (Unix time).", registry=reg)
        self.watermark = Gauge("facusync_producer_watermark_timestamp_seconds", "The last "
                               "enqueued version ULTIMA_MODIFICACION (Unix time).", registry=reg)
        reg.register(StreamCollector(self.cfg))

    def _consumer(self, reg: CollectorRegistry) -> None:
        self.batches = Counter("facusync_consumer_batches", "Batches committed to PostgreSQL.",
                               registry=reg)
        self.rows = _counter(reg, "facusync_consumer_rows", "Stream entries applied, by result.",
                             "result", ROW_RESULTS)
        self.batch_seconds = Histogram("facusync_consumer_batch_duration_seconds", "Duration "
                                       "of a batch: write, commit and acknowledgement.",
                                       buckets=BATCH_BUCKETS, registry=reg)
        self.last_batch = Gauge("facusync_consumer_last_success_timestamp_seconds", "When the "
                                "last batch was committed (Unix time).", registry=reg)
        self.committed = Gauge("facusync_consumer_committed_watermark_timestamp_seconds", "The "
                               "durable low-water mark this consumer stored in sync_control: "
                               "every version at or below it is committed (Unix time).",
                               registry=reg)
        self.committed_max = 0.0
        self.newest = Gauge("facusync_consumer_newest_version_timestamp_seconds", "The newest "
                            "committed version ULTIMA_MODIFICACION (Unix time).", registry=reg)

    # -- what the daemons report ------------------------------------------------------------

    def failure(self, server: str, cause: str) -> None:
        self.errors.labels(SERVERS.get(server, "other"), error_kind(cause)).inc()
        self.backing_off.set(1)

    def producer_cycle(self, stats: CycleStats, state: str) -> None:
        if state == "backing_off":
            return  # a failed attempt, counted by failure()
        outcome = ("skipped" if stats.skipped else "paused" if stats.paused
                   else "complete" if stats.complete else "partial")
        self.cycles.labels(outcome).inc()
        self.read.inc(stats.read)
        self.queued.inc(stats.queued)
        self.unchanged.inc(stats.unchanged)
        if not stats.skipped:
            self.cycle_seconds.observe(stats.duration_ms / 1000.0)
        if outcome == "complete":
            self.last_cycle.set(stats.started)
        mark = source_timestamp(stats.watermark, self.cfg)
        if mark is not None:
            self.watermark.set(mark)

    def consumer_batch(self, result: WriteResult, dead: int, seconds: float,
                       low_water: datetime | None, newest: float | None) -> None:
        self.batches.inc()
        for name in ROW_RESULTS[:4]:
            self.rows.labels(name).inc(getattr(result, name))
        self.rows.labels("dead_lettered").inc(dead)
        self.rows.labels("ignored").inc(result.ignored)
        self.batch_seconds.observe(seconds)
        self.last_batch.set(time.time())
        self.consumer_progress(low_water, newest)

    def consumer_progress(self, low_water: datetime | None, newest: float | None) -> None:
        mark = source_timestamp(low_water, self.cfg)
        if mark is not None and mark > self.committed_max:  # sync_control keeps the GREATEST
            self.committed_max = mark
            self.committed.set(mark)
        if newest is not None:
            self.newest.set(newest)


def _counter(reg: CollectorRegistry, name: str, text: str, label: str,
             values: Iterable[str]) -> Counter:
    """A counter with one label, every value of which is exported from the start (as 0)."""
    counter = Counter(name, text, [label], registry=reg)
    for value in values:
        counter.labels(value)
    return counter


class StreamCollector(Collector):
    """The queue and the last reconcile run, read from Redis when Prometheus scrapes.

    Its own Redis client, so the producer's loop is never touched; a failing Redis leaves
    these series out of that scrape (the producer's facusync_server_errors_total says why).
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.keys = Keys(cfg.redis_prefix)
        self.client: redis.Redis | None = None
        self.lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        return list(self._families({}, {}))

    def collect(self) -> Iterable[Metric]:
        if not self.lock.acquire(timeout=SCRAPE_REDIS_TIMEOUT):
            return []  # another scrape still waits for Redis: this one answers without it
        try:
            try:
                queue, reconcile = self._read()
            except (redis.RedisError, OSError, FacusyncError) as exc:
                log.debug("queue metrics not read", extra={"error": str(exc)})
                if self.client is not None:
                    self.client.close()
                self.client = None
                return []
        finally:
            self.lock.release()
        return list(self._families(queue, reconcile))

    def _read(self) -> tuple[dict[str, float], dict[str, str]]:
        if self.client is None:
            self.client = connect_redis(self.cfg, check=False, timeout=SCRAPE_REDIS_TIMEOUT)
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.keys.stream)
        pipe.xrange(self.keys.stream, "-", "+", count=1)
        pipe.xlen(self.keys.dead)
        pipe.hgetall(self.keys.reconcile_stats)
        length, oldest, dead, stats = pipe.execute()
        try:
            pending = int(self.client.xpending(self.keys.stream, GROUP)["pending"])
        except redis.ResponseError:
            pending = 0  # no group yet: no consumer has started
        age = 0.0
        if oldest:
            entry_id = oldest[0][0]
            millis = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])
            age = max(0.0, time.time() - millis / 1000.0)
        queue = {"length": float(length), "pending": float(pending), "age": age, "dead": float(dead)}
        return queue, {_text(k): _text(v) for k, v in stats.items()}

    def _families(self, queue: dict[str, float], reconcile: dict[str, str]) -> Iterator[Metric]:
        gauges = (
            ("facusync_queue_length", "Changes in the stream not yet committed and acknowledged.",
             "length"),
            ("facusync_queue_pending", "Changes delivered to a consumer and not yet "
             "acknowledged.", "pending"),
            ("facusync_queue_oldest_age_seconds", "Age of the oldest change still waiting "
             "(0 when the stream is empty): the lag.", "age"),
            ("facusync_dead_letters", "Entries in the dead-letter stream, waiting for an "
             "operator (`facusync dead-letter list`).", "dead"),
        )
        for name, text, field in gauges:
            family = GaugeMetricFamily(name, text)
            if field in queue:
                family.add_metric([], queue[field])
            yield family
        last = GaugeMetricFamily("facusync_reconcile_last_run_timestamp_seconds", "When the "
                                 "last reconcile run finished (Unix time; 0: no run recorded).")
        duration = GaugeMetricFamily("facusync_reconcile_last_duration_seconds",
                                     "How long the last reconcile run took.")
        refused = GaugeMetricFamily("facusync_reconcile_last_refused", "1 if the last "
                                    "reconcile run refused to tombstone (mass-delete guard).")
        rows = GaugeMetricFamily("facusync_reconcile_last_rows", "What the last reconcile run "
                                 "counted: rows on each side, and what it queued or repaired.",
                                 labels=["kind"])
        if queue:
            last.add_metric([], _number(reconcile.get("finished_at")))
            if reconcile:
                duration.add_metric([], _number(reconcile.get("duration_s")))
                refused.add_metric([], 1.0 if reconcile.get("refused") == "True" else 0.0)
                for kind in RECONCILE_COUNTS:
                    rows.add_metric([kind], _number(reconcile.get(kind)))
        yield from (last, duration, refused, rows)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _number(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


# A connection silent this long is closed: each one holds a thread of the daemon.
REQUEST_TIMEOUT = 10.0


class MetricsServer(ThreadingHTTPServer):
    """The HTTP endpoint, in daemon threads: any path answers with the metrics."""

    daemon_threads = True

    def __init__(self, address: str, port: int, registry: CollectorRegistry) -> None:
        if ":" in address:
            self.address_family = socket.AF_INET6
        handler = type("MetricsHandler", (MetricsHandler.factory(registry),),
                       {"timeout": REQUEST_TIMEOUT})
        super().__init__((address, port), handler)


def serve(metrics: Metrics, address: str, port: int) -> MetricsServer:
    """Open the port (or raise MetricsError naming the setting) and answer in a thread."""
    try:
        server = MetricsServer(address, port, metrics.registry)
    except OSError as exc:
        setting = f"METRICS_{metrics.daemon.upper()}_PORT"
        raise MetricsError(f"cannot serve metrics on {address}:{port} ({exc.strerror}): "
                           f"choose a free port in {setting}, or METRICS_ADDRESS") from None
    thread = threading.Thread(target=server.serve_forever, name="facusync-metrics", daemon=True)
    thread.start()
    return server


# -- the daemons' hooks: no-ops unless `start` opened a port --------------------------------

_active: Metrics | None = None


def start(cfg: Config, prog: str) -> MetricsServer | None:
    """Serve this daemon's metrics if its METRICS_*_PORT is set; else every hook is a no-op."""
    global _active
    daemon = prog.rsplit("-", 1)[-1]
    port = cfg.metrics_producer_port if daemon == "producer" else cfg.metrics_consumer_port
    if port is None:
        return None
    metrics = Metrics(cfg, daemon)
    server = serve(metrics, cfg.metrics_address, port)
    _active = metrics
    log.info("metrics on http://%s/metrics", _url_host(cfg.metrics_address, port),
             extra={"address": cfg.metrics_address, "port": port})
    return server


def _url_host(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def ready(stopping: threading.Event) -> None:
    """Ready from now on until a stop is requested (read at scrape time: a signal handler
    must not take the metrics' locks)."""
    if _active is not None:
        _active.ready.set_function(lambda: 0.0 if stopping.is_set() else 1.0)


def failing(server: str, cause: str) -> None:
    if _active is not None:
        _active.failure(server, cause)


def recovered() -> None:
    if _active is not None:
        _active.backing_off.set(0)


def producer_cycle(stats: CycleStats, state: str) -> None:
    if _active is not None:
        _active.producer_cycle(stats, state)


def consumer_batch(result: WriteResult, dead: int, seconds: float, low_water: datetime | None,
                   newest: float | None) -> None:
    if _active is not None:
        _active.consumer_batch(result, dead, seconds, low_water, newest)


def consumer_progress(low_water: datetime | None, newest: float | None) -> None:
    if _active is not None:
        _active.consumer_progress(low_water, newest)

"""The Prometheus endpoints of the real daemons (as processes), scraped during a sync and
checked against what PostgreSQL and Redis hold."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

import facusync
from devstack.processes import Daemon, start_daemon
from devstack.servers import RedisServer, free_port
from facusync import metrics
from facusync.config import config_from_mapping
from facusync.redisconn import Keys, connect_redis
from facusync.stream import read_watermark
from tests.integration.test_operator_commands import cli, pg_rows, wait_for
from tests.poison import insert_too_long

pytestmark = pytest.mark.timeout(300)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of one endpoint, keyed by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def rows(samples: Samples, result: str) -> int:
    return int(value(samples, "facusync_consumer_rows_total", result=result))


def epoch(naive: datetime, tz: str) -> float:
    """A source version (naive local time) as Unix seconds, as the gauges export it."""
    return naive.replace(tzinfo=ZoneInfo(tz)).timestamp()


@pytest.fixture()
def metrics_env(pipeline_env: dict[str, str]) -> dict[str, str]:
    return {**pipeline_env, "METRICS_PRODUCER_PORT": str(free_port()),
            "METRICS_CONSUMER_PORT": str(free_port()), "BATCH_SIZE": "100", "CHUNK_SIZE": "500"}


@pytest.fixture()
def daemons(metrics_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Daemon]]:
    started = {name: start_daemon(name, metrics_env, tmp_path) for name in ("producer", "consumer")}
    try:
        yield started
    finally:
        for daemon in started.values():
            daemon.stop()


def test_scrape_during_a_sync_matches_postgresql_and_redis(
        metrics_env: dict[str, str], daemons: dict[str, Daemon], standin: Any) -> None:
    env = metrics_env
    cfg = config_from_mapping(env)
    keys = Keys(cfg.redis_prefix)
    producer_port, consumer_port = int(env["METRICS_PRODUCER_PORT"]), int(env["METRICS_CONSUMER_PORT"])
    standin.seed(3000, seed=8)
    workload = standin.workload(rate=40, seed=9, insert_ratio=0.5, nobump_ratio=0.0).start()
    scrapes = 0
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:  # scrape while rows flow: counters never run ahead
            try:
                consumer = scrape(consumer_port)
                producer = scrape(producer_port)
            except OSError:
                time.sleep(0.2)  # not listening yet
                continue
            scrapes += 1
            committed = pg_rows(env, "SELECT count(*), extract(epoch FROM newest_version)"
                                     " FROM datos_vista, sync_control GROUP BY newest_version")
            count = committed[0][0] if committed else 0
            assert rows(consumer, "inserted") <= count
            assert value(producer, "facusync_producer_rows_queued_total") <= \
                value(producer, "facusync_producer_rows_read_total")
            time.sleep(0.3)
    finally:
        workload.stop()
    assert scrapes >= 5
    client = connect_redis(cfg)
    try:
        # Drained: every row of the view in PostgreSQL and nothing left in the stream.
        wait_for(lambda: pg_rows(env, "SELECT count(*) FROM datos_vista")[0][0] == standin.count()
                 and client.xlen(keys.stream) == 0, 90, "the drain")
        wait_for(lambda: value(scrape(producer_port), "facusync_producer_rows_queued_total")
                 == int(client.hget(keys.producer_stats, "total_queued") or 0), 30, "the last cycle")
        time.sleep(2 * float(env["SYNC_INTERVAL"]) + 1.5)  # an idle tick of each daemon
        consumer, producer = scrape(consumer_port), scrape(producer_port)
        (count, watermark, newest), = pg_rows(
            env, "SELECT (SELECT count(*) FROM datos_vista), watermark, extract(epoch FROM newest_version)"
                 " FROM sync_control")
        applied = sum(rows(consumer, r) for r in ("inserted", "updated", "unchanged", "deleted",
                                                    "dead_lettered", "ignored"))
        queued = value(producer, "facusync_producer_rows_queued_total")
        assert rows(consumer, "inserted") == count == standin.count()
        assert rows(consumer, "updated") > 0 and rows(consumer, "dead_lettered") == 0
        assert applied == queued == int(client.hget(keys.producer_stats, "total_queued") or 0)
        assert value(producer, "facusync_producer_rows_read_total") == \
            queued + value(producer, "facusync_producer_rows_unchanged_total")
        assert value(consumer, "facusync_consumer_batches_total") == \
            value(consumer, "facusync_consumer_batch_duration_seconds_count") > count / 100
        assert value(producer, "facusync_producer_cycles_total", outcome="complete") == \
            value(producer, "facusync_producer_cycle_duration_seconds_count") >= 2
        assert value(consumer, "facusync_consumer_committed_watermark_timestamp_seconds") == \
            pytest.approx(epoch(watermark, cfg.source_timezone), abs=1e-3)
        assert value(consumer, "facusync_consumer_newest_version_timestamp_seconds") == \
            pytest.approx(float(newest), abs=1e-3)
        redis_mark = read_watermark(client, keys)
        assert redis_mark is not None and value(producer, "facusync_producer_watermark_timestamp_seconds") \
            == pytest.approx(epoch(redis_mark, cfg.source_timezone), abs=1e-3)
        assert time.time() - value(producer, "facusync_producer_last_success_timestamp_seconds") < 5
        assert value(producer, "facusync_queue_length") == client.xlen(keys.stream) == 0
        assert value(producer, "facusync_queue_pending") == 0
        assert value(producer, "facusync_queue_oldest_age_seconds") == 0
        assert value(producer, "facusync_dead_letters") == client.xlen(keys.dead) == 0
        assert value(producer, "facusync_reconcile_last_run_timestamp_seconds") == 0  # never ran
        for daemon, samples in (("producer", producer), ("consumer", consumer)):
            assert value(samples, "facusync_ready", daemon=daemon) == 1
            assert value(samples, "facusync_backing_off", daemon=daemon) == 0
            assert value(samples, "facusync_build_info", daemon=daemon, version=facusync.__version__,
                         python=next(dict(k)["python"] for n, k in samples
                                     if n == "facusync_build_info")) == 1
        assert value(producer, "facusync_lag_warn_seconds") == cfg.lag_warn

        # A row PostgreSQL refuses: a dead letter on both sides, and in Redis.
        insert_too_long(standin, "METRICS-POISON", 400)
        wait_for(lambda: client.xlen(keys.dead) == 1, 60, "the dead letter")
        wait_for(lambda: rows(scrape(consumer_port), "dead_lettered") == 1, 10, "the dead-letter count")
        assert value(scrape(producer_port), "facusync_dead_letters") == 1

        # Reconcile (the timer's command) finds a delete: its results, as Redis holds them.
        gone = standin.rows()[10]["CONDUCE"]
        standin.delete(gone)
        assert cli(env, "reconcile").returncode == 0
        recorded = {k.decode(): v.decode() for k, v in client.hgetall(keys.reconcile_stats).items()}
        producer = scrape(producer_port)
        assert value(producer, "facusync_reconcile_last_rows", kind="tombstones") == \
            int(recorded["tombstones"]) == 1
        assert value(producer, "facusync_reconcile_last_rows", kind="source_rows") == \
            int(recorded["source_rows"]) == standin.count()
        assert value(producer, "facusync_reconcile_last_run_timestamp_seconds") == \
            pytest.approx(float(recorded["finished_at"]))
        assert value(producer, "facusync_reconcile_last_refused") == 0
        wait_for(lambda: rows(scrape(consumer_port), "deleted") == 1, 30, "the tombstone applied")
        assert pg_rows(env, "SELECT count(*) FROM datos_vista WHERE eliminado_en_origen")[0][0] == 1
    finally:
        client.close()

    # A clean stop closes the port: Prometheus then reports up == 0 for the target.
    assert daemons["producer"].stop() == 0
    assert not _listening(producer_port)


def test_failures_are_counted_by_server_and_kind(metrics_env: dict[str, str], tmp_path: Path) -> None:
    env = {**metrics_env, "MSSQL_PORT": str(free_port())}  # nothing listens there
    port = int(env["METRICS_PRODUCER_PORT"])
    producer = start_daemon("producer", env, tmp_path)
    try:
        def failed() -> bool:
            try:
                return value(scrape(port), "facusync_server_errors_total", server="sqlserver",
                             kind="connect") >= 2
            except OSError:
                return False

        wait_for(failed, 60, "two failed attempts counted")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        samples = scrape(port)
        assert value(samples, "facusync_backing_off", daemon="producer") == 1
        assert value(samples, "facusync_server_errors_total", server="redis", kind="connect") == 0
        for secret in (env["MSSQL_PASSWORD"], env["PG_PASSWORD"], env["REDIS_PASSWORD"]):
            assert secret not in text
    finally:
        producer.stop()


def test_a_taken_port_is_a_clear_error(metrics_env: dict[str, str], tmp_path: Path) -> None:
    port = int(metrics_env["METRICS_CONSUMER_PORT"])
    first = start_daemon("consumer", metrics_env, tmp_path)
    try:
        wait_for(lambda: _listening(port), 30, "the first consumer's endpoint")
        second = start_daemon("consumer", metrics_env, tmp_path)
        assert second.proc.wait(30) == 69  # EX_UNAVAILABLE: systemd retries, then gives up
        assert f"cannot serve metrics on 127.0.0.1:{port}" in second.log()
        assert "METRICS_CONSUMER_PORT" in second.log() and "Traceback" not in second.log()
    finally:
        first.stop()


def _listening(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def test_a_hung_redis_does_not_make_the_producer_look_down(env: dict[str, str]) -> None:
    """Redis stopped dead (SIGSTOP: it accepts connections and never answers) must not turn
    the producer's endpoint into a timeout, which Prometheus reads as up == 0 (daemon down):
    each scrape answers within Prometheus' default 10 s scrape timeout, with the queue series
    left out; successive scrapes do not queue up behind each other."""
    hung = RedisServer().start()
    assert hung.proc is not None
    cfg = config_from_mapping({**env, "REDIS_PORT": str(hung.port), "REDIS_PASSWORD": hung.password,
                               "METRICS_PRODUCER_PORT": str(free_port())})
    assert cfg.metrics_producer_port is not None
    server = metrics.serve(metrics.Metrics(cfg, "producer"), "127.0.0.1", cfg.metrics_producer_port)
    try:
        assert ("facusync_queue_length", frozenset()) in scrape(cfg.metrics_producer_port)
        os.kill(hung.proc.pid, signal.SIGSTOP)
        took: list[float] = []
        errors: list[BaseException] = []

        def one() -> None:
            began = time.monotonic()
            try:
                samples = scrape(cfg.metrics_producer_port)
                assert ("facusync_queue_length", frozenset()) not in samples
                assert value(samples, "facusync_ready", daemon="producer") == 0
            except BaseException as exc:
                errors.append(exc)
            took.append(time.monotonic() - began)

        scrapers = [threading.Thread(target=one) for _ in range(3)]  # overlapping scrapes
        for scraper in scrapers:
            scraper.start()
            time.sleep(1)
        for scraper in scrapers:
            scraper.join(60)
        assert not errors, (errors, took)
        assert max(took) < 10, took
    finally:
        os.kill(hung.proc.pid, signal.SIGCONT)
        server.shutdown()
        server.server_close()
        hung.destroy()


def test_an_idle_connection_does_not_hold_a_thread_forever(env: dict[str, str]) -> None:
    """A scraper that connects and never sends its request (its network died, a port scan
    that stops half-way) is dropped after a while: each connection holds a thread of the
    daemon, and without a timeout they would pile up for as long as the daemon runs."""
    port = free_port()
    cfg = config_from_mapping({**env, "METRICS_CONSUMER_PORT": str(port)})
    server = metrics.serve(metrics.Metrics(cfg, "consumer"), "127.0.0.1", port)
    try:
        idle = socket.create_connection(("127.0.0.1", port), timeout=60)
        began = time.monotonic()
        try:
            assert idle.recv(1) == b""  # closed by the server
        finally:
            idle.close()
        assert time.monotonic() - began < 30
        assert ("facusync_ready", frozenset({("daemon", "consumer")})) in scrape(port)
    finally:
        server.shutdown()
        server.server_close()

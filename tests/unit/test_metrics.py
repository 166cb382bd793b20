"""facusync.metrics without servers: bounded labels, and nothing at all when not configured."""

from __future__ import annotations

import threading
from datetime import datetime

import psycopg2
import pytest
from prometheus_client import generate_latest

from facusync import metrics, pgconn
from facusync.config import config_from_mapping
from facusync.producer import CycleStats
from facusync.sink import WriteResult
from tests.unit.test_config import GOOD


@pytest.mark.parametrize(("cause", "kind"), [
    ("connection refused: is PostgreSQL running on PG_HOST:PG_PORT?", "connect"),
    ("cannot connect: is SQL Server listening on MSSQL_HOST:MSSQL_PORT?", "connect"),
    ("authentication failed: check REDIS_PASSWORD", "authentication"),
    ("login failed: check MSSQL_USER, MSSQL_PASSWORD and MSSQL_DATABASE", "authentication"),
    ("timed out: is MSSQL_HOST/MSSQL_PORT right and the server answering?", "timeout"),
    (pgconn.describe_pg_error(psycopg2.OperationalError("timeout expired")), "timeout"),
    ("out of memory (maxmemory reached): the queue is full; check the consumer", "out_of_memory"),
    ("the connection was dropped by the server or the network", "dropped"),
    ("the view does not exist or is not visible: check MSSQL_VIEW and grants", "schema"),
    ("ERROR 1234 with a conduce value CD-000123 in it", "other"),
])
def test_error_kinds_are_a_closed_set(cause: str, kind: str) -> None:
    assert metrics.error_kind(cause) == kind and kind in metrics.KINDS


def test_without_a_port_nothing_is_served_and_the_hooks_do_nothing() -> None:
    cfg = config_from_mapping(GOOD)
    assert cfg.metrics_producer_port is None and cfg.metrics_consumer_port is None
    assert metrics.start(cfg, "facusync-producer") is None
    assert metrics.start(cfg, "facusync-consumer") is None
    metrics.failing("Redis", "connection refused")
    metrics.producer_cycle(CycleStats(read=1), "running")
    metrics.consumer_batch(WriteResult(inserted=1), 0, 0.1, None, None)
    assert metrics._active is None


def test_labels_come_from_data_never() -> None:
    """Causes with keys, hosts or numbers in them never become label values."""
    cfg = config_from_mapping(GOOD)
    m = metrics.Metrics(cfg, "consumer")
    for i in range(50):
        m.failure("PostgreSQL", f"duplicate key value CD{i:06d} on host db{i}.example.invalid")
        m.failure("Some new server", "connection refused")
    m.consumer_batch(WriteResult(inserted=3, updated=2), 1, 0.004, datetime(2026, 1, 2, 3, 4, 5), None)
    text = generate_latest(m.registry).decode()
    assert "CD0000" not in text and "example.invalid" not in text
    assert 'facusync_server_errors_total{kind="other",server="postgresql"} 50.0' in text
    assert 'facusync_server_errors_total{kind="connect",server="other"} 50.0' in text
    assert 'facusync_consumer_rows_total{result="dead_lettered"} 1.0' in text
    series = [line for line in text.splitlines()
              if line.startswith("facusync_") and "_bucket" not in line and "_created" not in line]
    assert len(series) < 40


def test_ready_until_a_stop_is_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read at scrape time, so the signal handler only sets the stop event (no lock taken)."""
    m = metrics.Metrics(config_from_mapping(GOOD), "consumer")  # no Redis read at scrape
    monkeypatch.setattr(metrics, "_active", m)
    stopping = threading.Event()

    def ready() -> str:
        return next(line for line in generate_latest(m.registry).decode().splitlines()
                    if line.startswith("facusync_ready"))

    assert ready() == 'facusync_ready{daemon="consumer"} 0.0'  # starting
    metrics.ready(stopping)
    assert ready() == 'facusync_ready{daemon="consumer"} 1.0'
    stopping.set()
    assert ready() == 'facusync_ready{daemon="consumer"} 0.0'
